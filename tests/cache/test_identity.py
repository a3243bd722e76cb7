"""mTLS between the cache and agents: an agent cannot report for another node (refused, logged, counted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gedge_model.tls import load_tls
from scheduler_extender.cache import AgentTarget, CacheOptions, ClusterCache
from tests.grpc.agents import AgentHost, spawn_agent
from tests.grpc.certs import TestCa

SNAPSHOT = "8em64t-2s2ca2c-buggynuma"


def tls_settings(issued) -> dict[str, str]:
    return {"tls_cert": str(issued.cert), "tls_key": str(issued.key), "tls_ca": str(issued.ca)}


def test_only_the_nodes_own_certificate_is_accepted(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], ca: TestCa, tmp_path: Path
) -> None:
    root = snapshot_roots[SNAPSHOT]
    good = ca.issue("edge-good")
    good_agent = spawn_agent(
        root,
        "edge-good",
        "--tls-cert",
        str(good.cert),
        "--tls-key",
        str(good.key),
        "--tls-ca",
        str(good.ca),
        "--tls-allowed-clients",
        "gedge-extender",
        metrics_listen="",
    )
    # edge-other's agent, with its own valid certificate, at the address the cache holds for edge-spoof.
    spoof = agent_host.start_agent(root, "edge-other", **tls_settings(ca.issue("edge-other")))
    # A certificate for the right name from a CA the cache does not trust.
    foreign = TestCa(tmp_path / "foreign", "foreign-ca").issue("edge-foreign")
    untrusted = agent_host.start_agent(
        root, "edge-foreign", **{**tls_settings(foreign), "tls_ca": str(ca.ca_path)}
    )
    client = ca.issue("gedge-extender")
    cache = ClusterCache(
        [
            AgentTarget("edge-good", f"127.0.0.1:{good_agent.port}"),
            AgentTarget("edge-spoof", f"127.0.0.1:{spoof.port}"),
            AgentTarget("edge-foreign", f"127.0.0.1:{untrusted.port}"),
        ],
        CacheOptions(
            ttl_s=30,
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
            tls=load_tls(client.cert, client.key, client.ca),
        ),
    )
    try:
        cache.start()
        assert cache.wait_for(
            lambda n: (
                n["edge-good"].fresh
                and "refused" in (n["edge-spoof"].reason or "")
                and "refused" in (n["edge-foreign"].reason or "")
            ),
            timeout=30,
        ), {n: v.reason for n, v in cache.nodes().items()}
        nodes = cache.nodes()
        assert nodes["edge-good"].state.topology.node_name == "edge-good"
        assert not nodes["edge-spoof"].fresh
        assert "(identity)" in nodes["edge-spoof"].reason and "edge-other" in nodes["edge-spoof"].reason
        assert nodes["edge-spoof"].state.generation == 0
        assert not nodes["edge-foreign"].fresh and "(untrusted)" in nodes["edge-foreign"].reason
        metric = cache.metrics.registry.get_sample_value
        assert metric("gedge_cache_agent_rejections_total", {"node": "edge-spoof", "reason": "identity"}) >= 1
        assert (
            metric("gedge_cache_agent_rejections_total", {"node": "edge-foreign", "reason": "untrusted"}) >= 1
        )
        assert (
            metric("gedge_cache_agent_rejections_total", {"node": "edge-good", "reason": "identity"}) is None
        )
    finally:
        cache.stop()
        good_agent.terminate()
        agent_host.stop_agent(spoof)
        agent_host.stop_agent(untrusted)


def test_agent_reporting_another_node_name_is_refused(
    agent_host: AgentHost, snapshot_roots: dict[str, Path]
) -> None:
    liar = agent_host.start_agent(snapshot_roots[SNAPSHOT], "edge-liar")
    cache = ClusterCache(
        [AgentTarget("edge-honest", f"127.0.0.1:{liar.port}")],
        CacheOptions(backoff_initial_s=0.1, backoff_max_s=0.5),
    )
    try:
        cache.start()
        assert cache.wait_for(lambda n: "refused" in (n["edge-honest"].reason or ""), timeout=20)
        view = cache.node("edge-honest")
        assert not view.fresh
        assert "reports node 'edge-liar', expected 'edge-honest'" in view.reason
        assert view.state.topology.node_name == "edge-honest" and view.state.generation == 0
        assert (
            cache.metrics.registry.get_sample_value(
                "gedge_cache_agent_rejections_total", {"node": "edge-honest", "reason": "node_name"}
            )
            >= 1
        )
    finally:
        cache.stop()
        agent_host.stop_agent(liar)


def test_renewed_extender_certificate_is_used_for_new_connections(
    agent_host: AgentHost, snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    """cert-manager renews the extender's files in place: the next channel to an agent uses the new ones."""
    from gedge_model.certs import issue_files
    from gedge_model.tls import TlsFiles
    from scheduler_extender.cache import AgentApplyError, GrpcAgentApplier

    pki = tmp_path / "pki"
    for name in ("edge-renew", "gedge-extender"):
        issue_files(pki, name)
    agent = agent_host.start_agent(
        snapshot_roots[SNAPSHOT],
        "edge-renew",
        tls_cert=str(pki / "edge-renew.pem"),
        tls_key=str(pki / "edge-renew.key"),
        tls_ca=str(pki / "ca.pem"),
    )
    files = TlsFiles(pki / "gedge-extender.pem", pki / "gedge-extender.key", pki / "ca.pem")
    options = CacheOptions(ttl_s=30, backoff_initial_s=0.1, tls=files.current(), tls_files=files)
    cache = ClusterCache([AgentTarget("edge-renew", f"127.0.0.1:{agent.port}")], options)
    applier = GrpcAgentApplier(cache)
    try:
        cache.start()
        assert cache.wait_for(lambda n: n["edge-renew"].fresh, timeout=30)
        # The agent has no applier: reaching that answer proves the call got past mTLS and the allowed list.
        with pytest.raises(AgentApplyError, match="runs without an applier"):
            applier.release("edge-renew", "no-such-pod")
        first = options.material()

        issue_files(pki, "gedge-extender")
        renewed = options.material()
        assert renewed is not first and renewed is not None
        assert renewed.cert_pem == (pki / "gedge-extender.pem").read_bytes()
        with pytest.raises(AgentApplyError, match="runs without an applier"):
            applier.release("edge-renew", "no-such-pod")
        (address, used, _) = applier._channels["edge-renew"]
        assert used is renewed and address == f"127.0.0.1:{agent.port}"
        assert options.material() is renewed, "unchanged files are not read again"
    finally:
        applier.close()
        cache.stop()
        agent_host.stop_agent(agent)
