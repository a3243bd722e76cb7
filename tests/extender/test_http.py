"""The extender's verbs over real HTTP on loopback, with kube-scheduler's JSON."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gedge_model import NodeState
from gedge_model.certs import issue_files
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.http.app import ReloadingSslContext, build_app, server_ssl_context
from scheduler_extender.node_source import NodeView, StaticNodeSource
from scheduler_extender.placement import PlacementConfig
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import BindingArgs
from tests.extender.conftest import RecordingBinder, node_list, pod
from tests.extender.servers import ServerThread, post

GPU_POD = {"gedge.io/gpu": "1"}


class Cluster:
    def __init__(self, states: dict[str, NodeState], warnings: list[tuple[str, str]]) -> None:
        self.source = StaticNodeSource(states)
        self.binder = RecordingBinder()
        self.cache = AssumeCache()
        self.warnings = warnings
        self.extender = Extender(
            self.source,
            self.binder,
            cache=self.cache,
            warn=lambda p, reason, message: warnings.append((reason, message)),
        )
        self.server: ServerThread | None = None

    def metrics(self) -> str:
        """The extender's /metrics page."""
        assert self.server is not None
        with urllib.request.urlopen(f"{self.server.url}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def post(self, verb: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        assert self.server is not None
        return post(f"{self.server.url}/{verb}", body, raw=raw)

    def args(self, pod_json: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
        names = names if names is not None else sorted(self.source.nodes())
        return {"Pod": pod_json, "Nodes": None, "NodeNames": names}

    def bind(self, pod_json: dict[str, Any], node: str) -> tuple[int, Any]:
        meta = pod_json["metadata"]
        return self.post(
            "bind",
            {"PodName": meta["name"], "PodNamespace": meta["namespace"], "PodUID": meta["uid"], "Node": node},
        )


@pytest.fixture
def cluster(gpu_states: dict[str, NodeState], snapshot_states: dict[str, NodeState]) -> Iterator[Cluster]:
    warnings: list[tuple[str, str]] = []
    c = Cluster({**gpu_states, **snapshot_states}, warnings)
    with ServerThread(build_app(c.extender, max_body=1024 * 1024)) as server:
        c.server = server
        yield c


def test_healthz(cluster: Cluster) -> None:
    assert cluster.server is not None
    with urllib.request.urlopen(f"{cluster.server.url}/healthz", timeout=10) as response:
        assert response.read() == b"ok"


def test_metrics_count_requests_by_verb_and_outcome(cluster: Cluster) -> None:

    cluster.post("filter", cluster.args(pod(limits=GPU_POD), ["edge-1"]))
    cluster.post("filter", raw=b"{")
    text = cluster.metrics()
    assert 'gedge_extender_requests_total{outcome="ok",verb="filter"} 1.0' in text
    assert 'gedge_extender_requests_total{outcome="bad_request",verb="filter"} 1.0' in text
    assert 'gedge_extender_request_seconds_count{verb="filter"} 2.0' in text


def test_bind_over_http_counts_its_placement_and_a_retry(cluster: Cluster) -> None:

    spec = pod(limits=GPU_POD)
    status, result = cluster.post("filter", cluster.args(spec, ["edge-1"]))
    assert status == 200 and result["NodeNames"] == ["edge-1"]
    assert cluster.bind(spec, "edge-1") == (200, {"Error": ""})
    # kube-scheduler asking again for a pod that holds its devices: answered alike, counted as a retry.
    assert cluster.bind(spec, "edge-1") == (200, {"Error": ""})
    text = cluster.metrics()
    assert "gedge_extender_bind_retries_total 1.0" in text
    assert "gedge_extender_placement_cost_count 2.0" in text
    assert 'gedge_extender_requests_total{outcome="ok",verb="bind"} 2.0' in text


def test_filter_by_node_names_keeps_gpu_nodes_and_says_why_others_fail(cluster: Cluster) -> None:
    names = [*sorted(cluster.source.nodes()), "ghost"]
    status, result = cluster.post("filter", cluster.args(pod(limits=GPU_POD), names))
    assert status == 200
    assert result["Error"] == ""
    assert result["Nodes"] is None
    assert set(result["NodeNames"]) == {"dgx-1", "dgx-shared", "edge-1"}
    snapshots = [n for n in names if n.startswith("snap-")]
    assert snapshots
    for name in snapshots:
        assert "gpu" in result["FailedNodes"][name].lower()
    assert "no gedge agent reports this node" in result["FailedAndUnresolvableNodes"]["ghost"]
    assert set(result["NodeNames"]) | set(result["FailedNodes"]) | set(
        result["FailedAndUnresolvableNodes"]
    ) == set(names)


def test_filter_with_full_node_list_returns_the_node_objects(cluster: Cluster) -> None:
    nodes = node_list("edge-1", "snap-16amd64-8n2c", "dgx-1")
    status, result = cluster.post("filter", {"Pod": pod(limits=GPU_POD), "Nodes": nodes, "NodeNames": None})
    assert status == 200
    assert result["NodeNames"] is None
    kept = result["Nodes"]["items"]
    assert [n["metadata"]["name"] for n in kept] == ["edge-1", "dgx-1"]
    assert kept[0] == nodes["items"][0]
    assert "snap-16amd64-8n2c" in result["FailedNodes"]


def test_field_names_are_matched_ignoring_case(cluster: Cluster) -> None:
    status, result = cluster.post("filter", {"pod": pod(limits=GPU_POD), "nodenames": ["edge-1"]})
    assert (status, result["NodeNames"]) == (200, ["edge-1"])


def test_pod_wanting_nothing_from_us_passes_every_node(cluster: Cluster) -> None:
    names = ["edge-1", "snap-16amd64-8n2c", "ghost"]
    status, result = cluster.post("filter", cluster.args(pod(limits={"cpu": "500m"}), names))
    assert status == 200
    assert result["NodeNames"] == names
    assert result["FailedNodes"] == {} and result["FailedAndUnresolvableNodes"] == {}


def test_pod_wanting_nothing_from_us_is_bound_with_an_empty_allocation(cluster: Cluster) -> None:
    plain = pod("plain", limits={"cpu": "500m"})
    cluster.post("filter", cluster.args(plain, ["edge-1"]))
    assert cluster.bind(plain, "edge-1") == (200, {"Error": ""})
    (allocation,) = cluster.binder.bound
    assert (allocation.node, allocation.devices, allocation.cpus) == ("edge-1", (), ())


def test_stale_node_is_filtered_out_with_the_caches_reason(cluster: Cluster) -> None:
    state = cluster.source.node("edge-1").state
    cluster.source.put(
        NodeView(state, fresh=False, reason="watch stream gone since 12:00:00 (45s > TTL 30s)")
    )
    _, result = cluster.post("filter", cluster.args(pod(limits=GPU_POD), ["edge-1", "dgx-1"]))
    assert result["NodeNames"] == ["dgx-1"]
    assert "watch stream gone since 12:00:00" in result["FailedAndUnresolvableNodes"]["edge-1"]


@pytest.mark.parametrize("verb", ["filter", "prioritize", "bind", "preempt"])
def test_malformed_json_is_a_400_with_a_typed_error(cluster: Cluster, verb: str) -> None:
    status, result = cluster.post(verb, raw=b'{"Pod": {"metadata": ')
    assert status == 400
    assert "not JSON" in result["Error"]
    if verb == "filter":
        assert set(result) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}


def test_wrong_shape_is_a_400_naming_the_field(cluster: Cluster) -> None:
    status, result = cluster.post("filter", {"Pod": pod(limits=GPU_POD), "NodeNames": "dgx-1"})
    assert status == 400
    assert "ExtenderArgs.NodeNames: expected a list" in result["Error"]
    status, result = cluster.post("bind", {"PodName": "x", "PodNamespace": "ml", "Node": "dgx-1"})
    assert status == 400
    assert "ExtenderBindingArgs.PodUID" in result["Error"]


def test_oversized_body_is_refused_before_parsing(cluster: Cluster) -> None:
    names = [f"node-{i:07d}" for i in range(80_000)]
    status, result = cluster.post("filter", cluster.args(pod(limits=GPU_POD), names))
    assert status == 413
    assert "larger than 1048576 bytes" in result["Error"]


@pytest.mark.parametrize(
    ("annotations", "field"),
    [
        ({"gedge.io/topology-policy": "closest"}, "gedge.io/topology-policy"),
        ({"gedge.io/communication": '["SRIOV"'}, "gedge.io/communication"),
        ({"gedge.io/topology-aware": "yes"}, "gedge.io/topology-aware"),
        ({"gedge.io/compute": '["TPU"]'}, "gedge.io/compute"),
    ],
)
def test_malformed_annotation_is_a_filter_error_naming_pod_and_annotation(
    cluster: Cluster, annotations: dict[str, str], field: str
) -> None:
    bad = pod("badpod", limits=GPU_POD, annotations=annotations)
    status, result = cluster.post("filter", cluster.args(bad))
    assert status == 200
    assert "ml/badpod" in result["Error"] and field in result["Error"]
    assert result["NodeNames"] is None
    assert cluster.warnings and field in cluster.warnings[-1][1]


def test_a_request_nobody_can_meet_gives_a_reason_per_node(cluster: Cluster) -> None:
    greedy = pod("greedy", limits={"gedge.io/gpu": "16"})
    status, result = cluster.post("filter", cluster.args(greedy))
    assert status == 200 and result["Error"] == ""
    assert result["NodeNames"] == []
    assert set(result["FailedNodes"]) | set(result["FailedAndUnresolvableNodes"]) == set(
        cluster.source.nodes()
    )
    assert all(reason for reason in result["FailedNodes"].values())


def test_prioritize_scores_every_node_in_extender_range(cluster: Cluster) -> None:
    names = ["dgx-1", "edge-1", "snap-16amd64-8n2c"]
    status, scores = cluster.post("prioritize", cluster.args(pod(limits=GPU_POD), names))
    assert status == 200
    assert isinstance(scores, list)
    assert [s["Host"] for s in scores] == names
    assert all(set(s) == {"Host", "Score"} and 0 <= s["Score"] <= 10 for s in scores)
    by_host = {s["Host"]: s["Score"] for s in scores}
    assert by_host["snap-16amd64-8n2c"] == 0


def test_prioritize_with_full_node_list(cluster: Cluster) -> None:
    nodes = node_list("dgx-1", "snap-16amd64-8n2c")
    status, scores = cluster.post(
        "prioritize", {"Pod": pod(limits=GPU_POD), "Nodes": nodes, "NodeNames": None}
    )
    assert status == 200
    assert [s["Host"] for s in scores] == ["dgx-1", "snap-16amd64-8n2c"]
    assert scores[0]["Score"] > scores[1]["Score"] == 0


def test_prioritize_prefers_the_node_where_gpu_and_vf_share_a_switch(cluster: Cluster) -> None:
    """dgx-1 has GPU and VF under one PCIe switch (PIX); on edge-1 they meet at the host bridge (PHB).

    By distance alone (packing 0): with packing, the one-GPU edge box the pod would fill at its best
    level leads, and dgx-1 keeps its GPUs for larger pods (tests/placement covers that)."""
    cluster.extender.config = PlacementConfig(packing=0.0)
    wants = pod(
        "net",
        limits={"gedge.io/gpu": "1", "gedge.io/sriov-vf": "1"},
        annotations={"gedge.io/topology-aware": "true", "gedge.io/communication": '["SRIOV"]'},
    )
    _, scores = cluster.post("prioritize", cluster.args(wants, ["dgx-1", "edge-1"]))
    by_host = {s["Host"]: s["Score"] for s in scores}
    assert by_host["dgx-1"] > by_host["edge-1"]
    cluster.post("filter", cluster.args(wants, ["dgx-1"]))
    assert cluster.bind(wants, "dgx-1") == (200, {"Error": ""})
    (chosen,) = cluster.binder.bound
    topology = cluster.source.node("dgx-1").state.topology
    gpu = topology.pci(next(d.pci_address for d in chosen.devices if d.resource == "gedge.io/gpu"))
    vf = topology.pci(chosen.device_ids("gedge.io/sriov-vf")[0])
    assert gpu.bridges[0] == vf.bridges[0], "GPU and VF under the same switch"
    assert chosen.network is not None and chosen.network.mode == "sriov"
    assert chosen.network.vf_pci_address == vf.address


def test_bind_reserves_devices_and_hands_them_to_the_binder(cluster: Cluster) -> None:
    first, second = pod("a", limits=GPU_POD), pod("b", limits=GPU_POD)
    for p in (first, second):
        cluster.post("filter", cluster.args(p, ["dgx-1"]))
        status, result = cluster.bind(p, "dgx-1")
        assert (status, result) == (200, {"Error": ""})
    a, b = cluster.binder.bound
    assert (a.name, a.node, b.name) == ("a", "dgx-1", "b")
    assert a.device_ids("gedge.io/gpu") and b.device_ids("gedge.io/gpu")
    assert not set(a.device_ids("gedge.io/gpu")) & set(b.device_ids("gedge.io/gpu"))
    assert {x.pod_uid for x in cluster.cache.held("dgx-1")} == {"uid-a", "uid-b"}


def test_bind_of_a_pod_never_filtered_and_no_api_server_is_an_error(cluster: Cluster) -> None:
    status, result = cluster.bind(pod("stranger", limits=GPU_POD), "dgx-1")
    assert status == 200
    assert "ml/stranger" in result["Error"] and "never seen in filter" in result["Error"]


def test_failed_bind_releases_the_reservation(cluster: Cluster) -> None:
    p = pod("a", limits=GPU_POD)
    cluster.post("filter", cluster.args(p, ["edge-1"]))
    cluster.binder.fail_with = "pod ml/a: binding to node edge-1 failed: 409 Conflict"
    status, result = cluster.bind(p, "edge-1")
    assert status == 200 and "409 Conflict" in result["Error"]
    assert cluster.cache.held("edge-1") == ()
    cluster.binder.fail_with = None
    assert cluster.bind(p, "edge-1") == (200, {"Error": ""})


def test_a_pod_holding_a_reservation_is_not_refused_by_it(cluster: Cluster) -> None:
    """kube-scheduler gave up on a slow bind and asks again: the pod's own devices still count as its own."""
    p = pod("slow", limits=GPU_POD)
    cluster.post("filter", cluster.args(p, ["edge-1"]))
    chosen = cluster.extender.choose(BindingArgs("slow", "ml", "uid-slow", "edge-1"))
    assert not isinstance(chosen, str)
    other = pod("other", limits=GPU_POD)
    _, result = cluster.post("filter", cluster.args(other, ["edge-1"]))
    assert result["NodeNames"] == [], "the reservation holds edge-1's only GPU"
    _, result = cluster.post("filter", cluster.args(p, ["edge-1"]))
    assert result["NodeNames"] == ["edge-1"]
    assert cluster.bind(p, "edge-1") == (200, {"Error": ""})
    assert cluster.binder.bound == [chosen]


def test_bind_refuses_when_the_node_is_full(cluster: Cluster) -> None:
    for i in range(2):
        p = pod(f"p{i}", limits=GPU_POD)
        cluster.post("filter", cluster.args(p, ["edge-1"]))
        _, result = cluster.bind(p, "edge-1")
        if i == 0:
            assert result == {"Error": ""}
        else:
            assert "ml/p1" in result["Error"]
    _, result = cluster.post("filter", cluster.args(pod("p2", limits=GPU_POD), ["edge-1"]))
    assert result["NodeNames"] == [] and result["FailedNodes"]["edge-1"]


def test_preempt_keeps_nodes_where_the_victims_free_what_the_pod_needs(cluster: Cluster) -> None:
    holder = pod("holder", limits=GPU_POD)
    cluster.post("filter", cluster.args(holder, ["edge-1"]))
    assert cluster.bind(holder, "edge-1") == (200, {"Error": ""})
    wants = pod("urgent", limits=GPU_POD)
    status, result = cluster.post(
        "preempt",
        {
            "Pod": wants,
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {
                "edge-1": {"Pods": [{"UID": "uid-holder"}], "NumPDBViolations": 0},
                "snap-16amd64-8n2c": {"Pods": [{"UID": "uid-other"}], "NumPDBViolations": 0},
            },
        },
    )
    assert status == 200
    assert result == {
        "NodeNameToMetaVictims": {"edge-1": {"Pods": [{"UID": "uid-holder"}], "NumPDBViolations": 0}}
    }
    status, result = cluster.post(
        "preempt",
        {"Pod": wants, "NodeNameToMetaVictims": {"edge-1": {"Pods": [{"UID": "uid-unrelated"}]}}},
    )
    assert result == {"NodeNameToMetaVictims": {}}


def _self_signed(tmp: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gedge-extender")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "tls.crt", tmp / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_https(tmp_path: Path, gpu_states: dict[str, NodeState]) -> None:
    cert, key = _self_signed(tmp_path)
    extender = Extender(StaticNodeSource(gpu_states), RecordingBinder())
    with ServerThread(build_app(extender), ssl_context=server_ssl_context(cert, key)) as server:
        client = ssl.create_default_context(cafile=cert)
        status, result = post(
            f"{server.url}/filter", {"Pod": pod(limits=GPU_POD), "NodeNames": ["edge-1"]}, context=client
        )
        assert (status, result["NodeNames"]) == (200, ["edge-1"])
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            post(f"{server.url}/filter", {}, context=ssl.create_default_context())


def _served_serial(port: int, pki: Path) -> int:
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client.load_cert_chain(pki / "kube-scheduler.pem", pki / "kube-scheduler.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_https_certificate_renewed_in_place_is_served_without_a_restart(
    tmp_path: Path, gpu_states: dict[str, NodeState]
) -> None:
    pki = tmp_path / "pki"
    for name in ("gedge-extender", "kube-scheduler"):
        issue_files(pki, name, ips=["127.0.0.1"])
    reloading = ReloadingSslContext(
        str(pki / "gedge-extender.pem"), str(pki / "gedge-extender.key"), str(pki / "ca.pem")
    )
    extender = Extender(StaticNodeSource(gpu_states), RecordingBinder())
    with ServerThread(build_app(extender), ssl_context=reloading.context) as server:
        first = _served_serial(server.port, pki)
        assert reloading.refresh() is False, "nothing changed"

        issue_files(pki, "gedge-extender", ips=["127.0.0.1"])
        assert reloading.refresh() is True
        renewed = _served_serial(server.port, pki)
        assert renewed != first
        assert (
            renewed == x509.load_pem_x509_certificate((pki / "gedge-extender.pem").read_bytes()).serial_number
        )

        # A broken replacement is not loaded: the renewed certificate stays in use.
        (pki / "gedge-extender.pem").write_text("not a certificate")
        assert reloading.refresh() is False
        assert _served_serial(server.port, pki) == renewed
