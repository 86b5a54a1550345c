"""
What the tests need from the machine, and how they react when it is missing: skip on a laptop,
fail in CI (CI=true), so a green build means every test ran. Imported by the conftest.py files
and the test modules (`from needs import ...`; pytest puts `tests/` on the path, as for
strategies.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any, NoReturn

import pytest

HOW_TO_RUN = (
    "start the services with `bash deploy/local/stack.sh up` and export the variables "
    'it prints (or: eval "$(bash deploy/local/stack.sh up)"), then run '
    "`.venv/bin/pytest tests/integration`"
)


def unavailable(reason: str, how_to_run: str = HOW_TO_RUN) -> NoReturn:
    """
    Skips the test on a laptop, fails it in CI, saying how to make it run.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true, so this fails instead of skipping): {how_to_run}")
    pytest.skip(f"{reason}: {how_to_run}")


def require_binaries(*names: str) -> None:
    """
    Skips (laptop) or fails (CI) unless every named program is on PATH.
    """
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not found on PATH (install: `bash .ci/install.sh`)")


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def end(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """
    Stops a server a test started, by its PID: SIGTERM, then SIGKILL if it has not exited
    within `timeout` seconds.
    """
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
