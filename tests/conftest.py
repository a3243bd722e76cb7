"""Fixtures shared by every test folder: the real sysfs snapshots from ../shared/fixtures, a private
cgroup v1 cpuset subtree, in-process agents and a throwaway CA.

Markers (declared in pyproject.toml): `root` is put on every test that uses a fixture needing root
(`cgroup_root`, `named_netns`) and such tests are skipped, saying so, when not run as root; `e2e` is
put on everything under tests/e2e (tests/e2e/conftest.py) and on tests elsewhere that start the
control plane."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


ROOT_FIXTURES = frozenset({"cgroup_root", "named_netns"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    as_root = os.geteuid() == 0
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)
        if not as_root and item.get_closest_marker("root") is not None:
            item.add_marker(pytest.mark.skip(reason="needs root (cgroups, network namespaces)"))


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    """A private subtree of the real cgroup v1 cpuset hierarchy, standing for a node's cgroup root."""
    from tests.apply.helpers import v1_sandbox

    with v1_sandbox("gtest-") as top:
        yield top


@pytest.fixture(scope="module")
def agent_host() -> Iterator[Any]:
    """tests.grpc.agents.AgentHost: in-process agents sharing one event loop per test module."""
    from tests.grpc.agents import AgentHost

    host = AgentHost()
    yield host
    host.close()


@pytest.fixture
def ca(tmp_path: Path) -> Any:
    """tests.grpc.certs.TestCa: a CA made per test with gedge_model.certs."""
    from tests.grpc.certs import TestCa

    return TestCa(tmp_path / "pki")
