"""
Settings for the CLI's commands: built from the environment and the command's options, with
invalid ones turned into a click error that names each field (never its value: a value may be
a secret).
"""

from __future__ import annotations

from typing import Any, TypeVar

import click
from pydantic import ValidationError

S = TypeVar("S")


def settings_from_env(cls: type[S], overrides: dict[str, Any], *, env: str) -> S:
    """
    `cls` from the environment, with the options that were given (None: not given) on top.

    Raises:
        click.ClickException: "invalid settings (<env>): field: message; ...".
    """
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        msg = f"invalid settings ({env}): {problems}"
        raise click.ClickException(msg) from exc
