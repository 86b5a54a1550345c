"""
The JSON Schemas of the contracts, generated from the pydantic models.

`churnwatch schemas export` writes them under `schemas/`; a test fails when the files drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from churnwatch.core.alerts import AlertRecord
from churnwatch.core.events import MODELS

SCHEMA_BASE = "https://churnwatch.dev/schemas/"


def _schema(name: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE}{name}.json",
        **schema,
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name (without `.json`) -> JSON Schema, for every event type and the alert."""
    out = {f"event.{kind}": _schema(f"event.{kind}", model) for kind, model in MODELS.items()}
    out["alert"] = _schema("alert", AlertRecord)
    return out


def render(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export(directory: Path) -> list[Path]:
    """Write every schema into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        path = directory / f"{name}.json"
        path.write_bytes(render(schema))
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """The schema files in `directory` that are missing or differ from the models."""
    problems = []
    expected = {f"{name}.json": render(schema) for name, schema in all_schemas().items()}
    for filename, content in expected.items():
        path = directory / filename
        if not path.exists():
            problems.append(f"{path}: missing")
        elif path.read_bytes() != content:
            problems.append(f"{path}: differs from the models")
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            problems.append(f"{path}: no model has this schema")
    return problems
