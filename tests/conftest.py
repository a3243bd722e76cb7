"""Fixtures shared by every test folder: the real sysfs snapshots from ../shared/fixtures."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
SYSFS_FIXTURES = SHARED_FIXTURES / "sysfs"
NVIDIA_SMI_FIXTURES = SHARED_FIXTURES / "nvidia-smi"


def snapshot_names() -> list[str]:
    """Every snapshot that has a tarball and an lstopo XML beside it (drop in more, they are picked up)."""
    return sorted(
        p.name.removesuffix(".tar.bz2")
        for p in SYSFS_FIXTURES.glob("*.tar.bz2")
        if (SYSFS_FIXTURES / (p.name.removesuffix(".tar.bz2") + ".lstopo.xml")).exists()
    )


def unpack_snapshot(name: str, into: Path) -> Path:
    """Unpack one snapshot tarball under `into` and return its root (the tarball's single top folder)."""
    target = into / name
    marker = target / ".unpacked"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SYSFS_FIXTURES / f"{name}.tar.bz2") as tar:
            tar.extractall(target, filter="tar")
        marker.touch()
    tops = [p for p in target.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise RuntimeError(f"snapshot {name} should unpack to one folder, got {[p.name for p in tops]}")
    return tops[0]


@pytest.fixture(scope="session")
def snapshot_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> unpacked root of every sysfs snapshot in ../shared/fixtures/sysfs."""
    base = tmp_path_factory.mktemp("sysfs-snapshots")
    return {name: unpack_snapshot(name, base) for name in snapshot_names()}
