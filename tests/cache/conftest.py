"""In-process agents share one loop per test module; certificates are made per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grpc.agents import AgentHost
from tests.grpc.certs import TestCa


@pytest.fixture(scope="module")
def agent_host() -> Iterator[AgentHost]:
    host = AgentHost()
    yield host
    host.close()


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")
