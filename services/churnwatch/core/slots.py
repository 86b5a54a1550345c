"""
A faster `__init__` for the frozen, slotted dataclasses built on every event.

A frozen dataclass's generated `__init__` sets each field through `object.__setattr__(self,
name, value)`, which looks the name up on the class every time: for the states, features and
scorings the core builds per event that was about a tenth of the replay's time. `fast_init`
gives such a class an `__init__` with the same signature (the same parameters, defaults,
default factories and keyword-only fields) that calls each slot's own descriptor instead. The
class stays what it was: a frozen dataclass, equal, hashed, printed and pickled as before;
only its construction is quicker.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, TypeVar

__all__ = ["fast_init"]

_T = TypeVar("_T")

_FACTORY: Final = object()
"""The default of a parameter whose field has a default factory (dataclasses does the same)."""


def fast_init(cls: type[_T]) -> type[_T]:
    """
    Replace the generated `__init__` of a frozen, slotted dataclass (applied above
    `@dataclass(frozen=True, slots=True)`). Classes with `__post_init__`, `InitVar`s or fields
    left out of `__init__` are not supported and raise TypeError.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        msg = f"expected a frozen dataclass with slots, got {cls.__name__}"
        raise TypeError(msg)
    if hasattr(cls, "__post_init__"):
        msg = f"expected a dataclass without __post_init__, got {cls.__name__}"
        raise TypeError(msg)
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            msg = f"expected every field of {cls.__name__} in __init__, got {f.name} left out"
            raise TypeError(msg)
        name = f.name
        slot = next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__)
        namespace[f"_set_{name}"] = slot.__set__
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = f.default
            param = f"{name}=_default_{name}"
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{name}"] = f.default_factory
            param = f"{name}=_FACTORY"
            body.append(f"    if {name} is _FACTORY:\n        {name} = _factory_{name}()")
        else:
            param = name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _set_{name}(self, {name})")
    params_text = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params_text}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, namespace)  # noqa: S102 (our own source, built from the fields' names)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
