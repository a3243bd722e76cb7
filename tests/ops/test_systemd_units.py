"""The systemd units pass `systemd-analyze verify` and keep their sandboxing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "systemd").glob("*.service"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")


def _script(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def _installed_copy(unit: Path, into: Path) -> Path:
    """The unit as installed here: ExecStart points at where pip put the console script."""
    text = unit.read_text()
    for script in ("gedge-agent", "gedge-extender"):
        text = text.replace(f"/usr/local/bin/{script}", _script(script))
    copy = into / unit.name
    copy.write_text(text)
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_both_units_are_shipped() -> None:
    assert [u.name for u in UNITS] == ["gedge-agent.service", "gedge-extender.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    result = _verify(_installed_copy(unit, tmp_path))
    assert result.returncode == 0, result.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = _installed_copy(REPO / "systemd" / "gedge-agent.service", tmp_path)
    missing = tmp_path / "no-such-gedge-agent"
    broken.write_text(broken.read_text().replace(_script("gedge-agent"), str(missing)))
    result = _verify(broken)
    assert result.returncode != 0
    assert str(missing) in result.stderr


@pytest.mark.parametrize(("name", "ceiling"), [("gedge-extender.service", 2.5), ("gedge-agent.service", 6.5)])
def test_exposure_stays_low(name: str, ceiling: float, tmp_path: Path) -> None:
    """The extender needs nothing of the host; the agent only cgroups, sysfs and netlink."""
    unit = _installed_copy(REPO / "systemd" / name, tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Overall exposure level" in result.stdout, result.stderr
    level = float(result.stdout.split("Overall exposure level for", 1)[1].split(":", 1)[1].split()[0])
    assert level <= ceiling, result.stdout[-400:]
