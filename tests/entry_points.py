"""The installed console scripts (gedge-agent, gedge-extender, gedge-flow) of the Python running the tests."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def entry_point(name: str) -> str:
    """The path of console script `name`: beside this interpreter (its venv), else on PATH.

    Raises FileNotFoundError when the project is not installed (`pip install -e .`)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed beside {sys.executable} nor on PATH")
    return found
