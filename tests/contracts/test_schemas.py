"""
The JSON Schemas under schemas/ are generated from the models and must not drift.
"""

from __future__ import annotations

from pathlib import Path

from churnwatch.schemas import all_schemas, drift, export

ROOT = Path(__file__).resolve().parents[2]


def test_schema_files_match_the_models() -> None:
    """
    The committed schema files equal what `churnwatch schemas export` writes now.
    """
    assert [] == drift(ROOT / "schemas")


def test_drift_is_detected(tmp_path: Path) -> None:
    """
    A changed or missing schema file is reported.
    """
    export(tmp_path)
    assert [] == drift(tmp_path)
    (tmp_path / "alert.json").write_text("{}")
    (tmp_path / "event.login.json").unlink()
    problems = drift(tmp_path)
    assert 2 == len(problems)
    assert any("alert.json: differs" in p for p in problems)
    assert any("event.login.json: missing" in p for p in problems)


def test_alert_schema_lists_the_contract_fields() -> None:
    """
    The alert schema requires the fields DESIGN.md's contract names.
    """
    schema = all_schemas()["alert"]
    expected = {
        "alert_id",
        "customer_id",
        "rule",
        "severity",
        "action",
        "score",
        "previous_score",
        "threshold",
        "churn_probability",
        "reasons",
        "summary",
        "segment",
        "event_ts",
        "emitted_at",
        "model_version",
        "rules_version",
    }
    assert expected <= set(schema["required"])
    assert "schema_version" in schema["properties"]
