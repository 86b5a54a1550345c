"""
fast_init: the same construction as a frozen dataclass's own __init__, only quicker.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from churnwatch.core.slots import fast_init


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: float | None = field(default=None, kw_only=True)


@fast_init
@dataclass(frozen=True, slots=True)
class Fast:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: float | None = field(default=None, kw_only=True)


def test_the_signature_is_the_generated_one() -> None:
    """
    Parameters, kinds and defaults match the generated __init__ (factories are a sentinel).
    """
    expected = [(p.name, p.kind) for p in inspect.signature(Plain.__init__).parameters.values()]
    actual = [(p.name, p.kind) for p in inspect.signature(Fast.__init__).parameters.values()]
    assert expected == actual


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1,), {}), ((1, "x"), {}), ((1, "x", [2]), {"d": 0.5}), ((), {"a": 3, "c": [4]})],
)
def test_construction_gives_the_same_fields(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """
    Positional, keyword and default arguments give the fields the generated __init__ gives.
    """
    expected = dataclasses.astuple(Plain(*args, **kwargs))  # type: ignore[arg-type]
    actual = dataclasses.astuple(Fast(*args, **kwargs))  # type: ignore[arg-type]
    assert expected == actual


def test_the_class_stays_frozen_and_factories_are_called_per_instance() -> None:
    """
    Fields cannot be assigned, replace works, and each instance gets its own default list.
    """
    one, two = Fast(1), Fast(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.a = 2  # type: ignore[misc]
    assert one.c is not two.c
    assert Fast(5, "b", [], d=1.0) == dataclasses.replace(one, a=5, d=1.0)


def test_a_class_it_cannot_handle_is_refused() -> None:
    """
    A dataclass that is not frozen, or has __post_init__, raises TypeError.
    """

    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    with pytest.raises(TypeError, match="frozen dataclass with slots"):
        fast_init(Mutable)
    with pytest.raises(TypeError, match="without __post_init__"):
        fast_init(Checked)
