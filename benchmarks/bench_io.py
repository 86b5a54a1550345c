"""
What the one-table benchmarks share: the machine's figures beside theirs, and writing the
result as results/<name>.json and results/<name>.md (the command, then one measure a row).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine(load_before: float) -> dict[str, Any]:
    """The load average before and now, the Python and the machine, for the result."""
    return {
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_result(name: str, title: str, command: str, result: dict[str, Any]) -> None:
    """Write results/<name>.json and results/<name>.md, and print the JSON."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in result.items()]
    (RESULTS / f"{name}.md").write_text(f"# {title}\n\n`{command}`\n\n" + "\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))
