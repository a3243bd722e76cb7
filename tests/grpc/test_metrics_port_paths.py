"""The agent's metrics port answers /metrics, /readyz and /healthz only; any other path is 404."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from agent.metrics import AgentMetrics
from agent.readyz import ReadyState, start_http


@pytest.fixture
def port() -> Iterator[int]:
    registry = CollectorRegistry()
    Gauge("gedge_agent_probe", "a gauge to find", registry=registry).set(1)
    server = start_http("127.0.0.1", 0, registry, ReadyState())
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_are_served_at_metrics(port: int) -> None:
    code, body = get(port, "/metrics")
    assert code == 200 and "gedge_agent_probe 1.0" in body
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ok\n")


@pytest.mark.parametrize("path", ["/", "/nope", "/metrics/x", "/metricsx", "/healthz/"])
def test_other_paths_are_not_found(port: int, path: str) -> None:
    code, body = get(port, path)
    assert code == 404
    assert "gedge_agent_probe" not in body
    assert body == "not found; this port serves /metrics, /readyz and /healthz\n"


def test_certificate_expiry_is_exported_only_once_a_certificate_is_in_place() -> None:
    metrics = AgentMetrics()
    server = start_http("127.0.0.1", 0, metrics.registry, ReadyState())
    try:
        code, body = get(server.server_port, "/metrics")
        assert code == 200 and "gedge_agent_state_generation" in body
        assert "gedge_agent_certificate_expiry_timestamp_seconds" not in body
        metrics.set_certificate_expiry(1_900_000_000.0)
        metrics.set_certificate_expiry(1_900_000_100.0)
        _, body = get(server.server_port, "/metrics")
        assert "gedge_agent_certificate_expiry_timestamp_seconds 1.9000001e+09" in body
    finally:
        server.shutdown()
        server.server_close()
