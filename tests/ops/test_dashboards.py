"""Every Grafana panel's PromQL returns data from a real Prometheus scraping a real agent, extender and
workflow controller under load.

Prometheus (the Debian package) scrapes every second: two `gedge-agent serve`
processes (the synthetic H100 server with a MIG GPU, NVML answered by a
stand-in, and a fixture sysfs snapshot), `gedge-extender serve` over a
loopback API server listing those agents plus one that never answers, and the
workflow controller driving a pipeline with a retried step in-process (its
metrics on prometheus_client's HTTP server). Pods that place, pods refused for
several reasons, a retried bind and an unknown pod go through the extender's
real HTTP verbs. Then each panel target goes through /api/v1/query; a panel
whose query returns nothing fails the test.

    .venv/bin/python -m tests.ops.test_dashboards   # rewrites the dashboards ConfigMap from the JSON files
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.apply.helpers import v1_sandbox
from tests.conftest import unpack_snapshot
from tests.extender.conftest import pod
from tests.extender.servers import post
from tests.support.kubeconfig import token_kubeconfig

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
CONFIGMAP = GRAFANA / "dashboards-configmap.yaml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
BIN = Path(sys.executable).parent
SNAPSHOT = "16amd64-8n2c"
GRAFANA_WINDOWS = {"__rate_interval": "30s", "__interval": "5s", "__range": "10m", "__range_s": "600"}
"""Grafana's built-in variables as a concrete window; query variables ($node) match everything."""

PIPELINE = """
apiVersion: gedge.io/v1alpha1
kind: Workflow
metadata: {name: ops-pipe}
spec:
  tasks:
  - name: train
    container: {image: trainer, command: [python, train.py]}
    resources: {limits: {gedge.io/gpu: 1}}
  - name: validate
    container: {image: v}
    dependencies: [train]
    retryStrategy: {limit: 2, backoff: {duration: 0.1}}
  - {name: serve, container: {image: s}, dependencies: [validate]}
"""


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(GRAFANA.glob("*.json"))}


def panel_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every target of every panel."""
    found = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((name, panel["title"], target["expr"]))
    return found


def concrete(expr: str, variables: set[str]) -> str:
    """The expression as Grafana would send it: built-in windows filled in, query variables as `.*`."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_WINDOWS:
            return GRAFANA_WINDOWS[name]
        if name in variables:
            return ".*"
        raise AssertionError(f"{expr!r} uses ${name}, which is neither a built-in nor a dashboard variable")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def configmap_text() -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "gedge-grafana-dashboards",
            "namespace": "gedge-system",
            "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "gedge-accel"},
            "annotations": {"grafana_folder": "gedge-accel"},
        },
        "data": {path.name: path.read_text() for path in sorted(GRAFANA.glob("*.json"))},
    }
    header = (
        "# Grafana dashboards for the sidecar that loads ConfigMaps labelled grafana_dashboard.\n"
        "# Generated from deploy/grafana/*.json by `python -m tests.ops.test_dashboards`.\n"
    )
    return header + yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, width=1000)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the dashboards) as literal blocks, readable in the file."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


# -- the dashboards as files -------------------------------------------------------------------------


def test_dashboards_are_grafana_models_over_a_datasource_variable() -> None:
    boards = dashboards()
    assert {"gedge-placement-quality.json", "gedge-node-topology.json", "gedge-extender.json"} <= set(boards)
    assert "gedge-workflows.json" in boards
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource", name
        ids = [panel["id"] for panel in board["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for panel in board["panels"]:
            where = f"{name}: panel {panel['title']!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", where
                concrete(target["expr"], set(variables))


def test_configmap_ships_exactly_the_dashboard_files() -> None:
    import kubernetes_validate

    doc = yaml.safe_load(CONFIGMAP.read_text())
    kubernetes_validate.validate(doc, "1.31.0", strict=True)
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(doc["data"]) == set(dashboards())
    assert CONFIGMAP.read_text() == configmap_text(), (
        "deploy/grafana/dashboards-configmap.yaml is out of date: run python -m tests.ops.test_dashboards"
    )
    listed = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())["resources"]
    assert "grafana/dashboards-configmap.yaml" in listed


# -- the dashboards against live metrics -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, deadline: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not answer {url} in time")


def prometheus_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode()}") from None
    assert body["status"] == "success", body
    return body["data"]["result"]


class Stack:
    """Processes and servers, stopped in reverse order however the test ends."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.exit = contextlib.ExitStack()
        self.logs: dict[str, Path] = {}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        handle = self.exit.enter_context(log.open("wb"))
        process = subprocess.Popen(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
        self.exit.callback(_stop, process)
        return process

    def tails(self) -> str:
        return "\n".join(f"--- {n}\n{p.read_text(errors='replace')[-1500:]}" for n, p in self.logs.items())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _agent_node(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": {"gedge.io/agent-port": str(port)}},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus' base URL, after load went through agent, extender and workflow controller."""
    from prometheus_client import CollectorRegistry, start_http_server

    from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController
    from scheduler_extender.workflow.metrics import WorkflowMetrics
    from tests.extender.fake_apiserver import FakeApiServer
    from tests.extender.servers import ServerThread
    from tests.workflow.memory_api import InMemoryApi, MemoryKubelet

    tmp = tmp_path_factory.mktemp("dashboards")
    stack = Stack(tmp)
    with stack.exit:
        agents = {"ops-gpu": (free_port(), free_port()), "ops-snap": (free_port(), free_port())}
        cgroups = stack.exit.enter_context(v1_sandbox("gedge-ops-"))
        common = ["--cgroup-root", str(cgroups), "--cgroup-driver", "cgroupfs"]
        common += ["--device-plugin-dir", str(tmp / "dp"), "--insecure"]
        gpu_grpc, gpu_metrics = agents["ops-gpu"]
        gpu = stack.spawn(
            "agent-gpu",
            [
                sys.executable,
                "-m",
                "tests.ops.gpu_agent",
                "--root",
                str(tmp / "box"),
                "--",
                "--node-name",
                "ops-gpu",
                "--listen",
                f"127.0.0.1:{gpu_grpc}",
                "--metrics-listen",
                f"127.0.0.1:{gpu_metrics}",
                "--timeslice-replicas",
                "4",
                "--checkpoint",
                str(tmp / "gpu-checkpoint.json"),
                *common,
            ],
        )
        snap_grpc, snap_metrics = agents["ops-snap"]
        snap = stack.spawn(
            "agent-snapshot",
            [
                str(BIN / "gedge-agent"),
                "serve",
                "--root",
                str(unpack_snapshot(SNAPSHOT, tmp / "snap")),
                "--node-name",
                "ops-snap",
                "--listen",
                f"127.0.0.1:{snap_grpc}",
                "--metrics-listen",
                f"127.0.0.1:{snap_metrics}",
                "--checkpoint",
                str(tmp / "snap-checkpoint.json"),
                *common,
            ],
        )

        fake = FakeApiServer()
        fake.nodes.extend(_agent_node(name, ports[0]) for name, ports in agents.items())
        fake.nodes.append(_agent_node("ops-gone", free_port()))
        api = stack.exit.enter_context(ServerThread(fake.app()))
        extender_port = free_port()
        extender = stack.spawn(
            "extender",
            [
                str(BIN / "gedge-extender"),
                "serve",
                "--kubeconfig",
                str(token_kubeconfig(tmp / "kube", api.url)),
                "--listen",
                f"127.0.0.1:{extender_port}",
                "--stale-after-s",
                "2",
                "--insecure",
                "--metrics-listen=",
            ],
        )

        registry = CollectorRegistry()
        flow_metrics = WorkflowMetrics(registry)
        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        stack.exit.callback(server.server_close)
        stack.exit.callback(server.shutdown)

        prom_port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {
                    "job_name": "gedge-agent",
                    "static_configs": [{"targets": [f"127.0.0.1:{m}" for _, m in agents.values()]}],
                },
                {
                    "job_name": "gedge-extender",
                    "static_configs": [{"targets": [f"127.0.0.1:{extender_port}"]}],
                },
                {
                    "job_name": "gedge-workflow",
                    "static_configs": [{"targets": [f"127.0.0.1:{server.server_port}"]}],
                },
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = stack.spawn(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
        )
        base = f"http://127.0.0.1:{prom_port}"
        deadline = time.monotonic() + 40
        try:
            wait_http(f"{base}/-/ready", deadline, "prometheus", prom)
            wait_http(f"http://127.0.0.1:{gpu_metrics}/metrics", deadline, "GPU agent", gpu)
            wait_http(f"http://127.0.0.1:{snap_metrics}/metrics", deadline, "snapshot agent", snap)
            wait_http(f"http://127.0.0.1:{extender_port}/healthz", deadline, "extender", extender)
            url = f"http://127.0.0.1:{extender_port}"

            workflow_api = InMemoryApi()
            workflow_api.create_workflow("ml", yaml.safe_load(PIPELINE))
            codes = {"ops-pipe-validate-0": 3}
            kubelet = stack.exit.enter_context(
                MemoryKubelet(workflow_api, outcome=lambda p: codes.get(p["metadata"]["name"], 0))
            )
            assert kubelet is not None
            controller = WorkflowController(
                workflow_api,
                catalog=None,
                config=ControllerConfig(watch_timeout_seconds=1, max_wait_seconds=0.5),
            )
            done = threading.Event()
            flow = threading.Thread(
                target=lambda: (controller.run("ml", "ops-pipe", on_update=flow_metrics.observe), done.set()),
                daemon=True,
            )
            flow.start()

            drive_extender(url, fake, deadline)
            apply_through_the_agent(gpu_grpc, cgroups)
            assert done.wait(max(1.0, deadline - time.monotonic())), "the workflow did not finish"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.tails()}") from None
        yield base


def drive_extender(url: str, fake: Any, deadline: float) -> None:
    """Pods that place (and bind), pods refused for several reasons, a retried bind, an unknown pod."""
    candidates = ["ops-gpu", "ops-snap", "ops-gone", "ghost"]
    probe = pod("probe", limits={"gedge.io/gpu": "1"})
    while True:
        _, result = post(f"{url}/filter", {"Pod": probe, "Nodes": None, "NodeNames": candidates})
        if "ops-gpu" in (result.get("NodeNames") or []):
            break
        assert time.monotonic() < deadline, f"the extender never saw the GPU agent: {result}"
        time.sleep(0.3)

    aware = {"gedge.io/topology-aware": "true"}
    refused = [
        pod("too-many", limits={"gedge.io/gpu": "9"}),
        pod(
            "one-socket",
            limits={"gedge.io/gpu": "6"},
            annotations={**aware, "gedge.io/topology-policy": "single-numa"},
        ),
        pod(
            "bad-policy",
            limits={"gedge.io/gpu": "1"},
            annotations={**aware, "gedge.io/topology-policy": "nearby"},
        ),
    ]
    for refused_pod in refused:
        status, result = post(f"{url}/filter", {"Pod": refused_pod, "Nodes": None, "NodeNames": candidates})
        assert status in (200, 400) and not result.get("NodeNames"), result

    placed = [
        pod("pair-rdma", limits={"gedge.io/gpu": "2", "gedge.io/rdma": "1"}, annotations=aware),
        # (the synthetic box's PFs are not in this network namespace: its VFs are never offered)
        pod("gpu-rdma", limits={"gedge.io/gpu": "1", "gedge.io/rdma": "1"}, annotations=aware),
        pod("mig", limits={"gedge.io/mig-1g.10gb": "1"}),
        pod("shared", limits={"gedge.io/gpu-shared": "1"}),
        pod(
            "pinned",
            limits={"gedge.io/gpu": "1", "cpu": "4", "memory": "1Gi"},
            annotations={**aware, "gedge.io/cpu-pinning": "true"},
        ),
    ]
    for placed_pod in placed:
        meta = placed_pod["metadata"]
        stored = json.loads(json.dumps(placed_pod))
        stored["metadata"].setdefault("annotations", {})
        fake.pods[("ml", meta["name"])] = {**stored, "status": {"phase": "Pending"}}
        _, result = post(f"{url}/filter", {"Pod": placed_pod, "Nodes": None, "NodeNames": candidates})
        assert result["NodeNames"] == ["ops-gpu"], result
        post(f"{url}/prioritize", {"Pod": placed_pod, "Nodes": None, "NodeNames": candidates})
        binding = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"], "Node": "ops-gpu"}
        status, bound = post(f"{url}/bind", binding)
        assert (status, bound) == (200, {"Error": ""}), bound
    first = placed[0]["metadata"]
    post(
        f"{url}/bind",
        {"PodName": first["name"], "PodNamespace": "ml", "PodUID": first["uid"], "Node": "ops-gpu"},
    )
    _, unknown = post(
        f"{url}/bind", {"PodName": "nobody", "PodNamespace": "ml", "PodUID": "u-0", "Node": "ops-gpu"}
    )
    assert unknown["Error"], unknown


def apply_through_the_agent(port: int, cgroup_root: Path) -> None:
    """A pinned pod with a GPU applied for real (cgroup v1 cpusets), and one the agent refuses."""
    from agent.apply.cgroups import CgroupDriver, QosClass
    from gedge_model import Allocation, DeviceGrant
    from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
    from tests.apply.helpers import build_pod_cgroups, new_container_id, new_pod_uid

    uid, container = new_pod_uid(), new_container_id()
    build_pod_cgroups(cgroup_root, CgroupDriver.CGROUPFS, QosClass.GUARANTEED, uid, [container])
    gpu = DeviceGrant("gedge.io/gpu", "GPU-h100-0000-0000-0000-000000000007")
    held = Allocation(uid, "ml", "held", "ops-gpu", devices=(gpu,), cpus=(1,))
    runtime = agent_pb2.PodRuntime(qos_class=QosClass.GUARANTEED.value, container_ids=[container])
    absent = Allocation(new_pod_uid(), "ml", "absent", "ops-gpu", cpus=(0,))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        stub.Apply(agent_pb2.ApplyRequest(allocation_json=held.to_annotation(), runtime=runtime), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Apply(agent_pb2.ApplyRequest(allocation_json=absent.to_annotation()), timeout=10)
    assert refused.value.code() == grpc.StatusCode.ABORTED, refused.value.details()


def test_every_panel_query_returns_data(prometheus: str) -> None:
    targets = [
        (name, title, concrete(expr, {v["name"] for v in dashboards()[name]["templating"]["list"]}))
        for name, title, expr in panel_targets()
    ]
    empty = targets
    deadline = time.monotonic() + 30
    while empty and time.monotonic() < deadline:
        empty = [t for t in empty if not prometheus_query(prometheus, t[2])]
        if empty:
            time.sleep(1)
    assert not empty, "panels whose query returns nothing:\n" + "\n".join(
        f"  {name}: {title}: {expr}" for name, title, expr in empty
    )


@pytest.mark.parametrize(
    ("expr", "at_least"),
    [
        ('sum(gedge_extender_placements_total{level=~"NV|PIX|PXB|PHB|NODE|SYS|X"})', 5),
        ('sum(gedge_extender_placement_pairs_total{pair="gpu-nic"})', 2),
        ('sum(gedge_extender_placement_pairs_total{pair="gpu-cpu"})', 1),
        ('gedge_extender_filter_refusals_total{reason="insufficient-gpu"}', 1),
        ('gedge_extender_filter_refusals_total{reason="policy"}', 1),
        ('gedge_extender_filter_refusals_total{reason="stale-node"}', 1),
        ('gedge_extender_filter_refusals_total{reason="unknown-node"}', 1),
        ('gedge_extender_unschedulable_pods_total{reason="bad-request"}', 1),
        ("gedge_extender_bind_retries_total", 1),
        ('gedge_extender_bind_failures_total{reason="unknown-pod"}', 1),
        ("sum(gedge_extender_assumed_allocations)", 5),
        ('sum(gedge_cache_nodes{state="stale"})', 1),
        ('sum(gedge_agent_device_allocatable{node="ops-gpu",kind="mig"})', 1),
        ('sum(gedge_agent_mig_profile_remaining{node="ops-gpu"})', 1),
        ('sum(gedge_agent_gpu_timeslice_replicas{node="ops-gpu"})', 4),
        ('count(gedge_agent_numa_cpus{node="ops-snap"})', 2),
        ('sum(gedge_agent_apply_failures_total{op="apply"})', 1),
        ('gedge_agent_applies_total{op="apply",kind="cpuset"}', 1),
        ('sum(gedge_agent_device_allocated{node="ops-gpu",kind="gpu"})', 1),
        ('sum(gedge_agent_numa_exclusive_cpus{node="ops-gpu"})', 1),
        ("gedge_workflow_task_retries_total", 1),
        ('gedge_workflow_step_attempts_total{phase="Failed"}', 1),
        ('gedge_workflow_workflows_finished_total{phase="Succeeded"}', 1),
    ],
)
def test_the_load_shows_in_the_metrics(prometheus: str, expr: str, at_least: float) -> None:
    deadline = time.monotonic() + 10
    while True:
        result = prometheus_query(prometheus, expr)
        value = sum(float(sample["value"][1]) for sample in result)
        if value >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert value >= at_least, f"{expr} = {value}, expected at least {at_least}"


if __name__ == "__main__":
    CONFIGMAP.write_text(configmap_text())
    print(f"wrote {CONFIGMAP.relative_to(REPO)}")
