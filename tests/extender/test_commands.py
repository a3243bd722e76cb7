"""The gedge-extender commands as a user runs them: demo, place, serve (with a real agent over gRPC)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gedge_model import Allocation, NodeState, to_json
from scheduler_extender.cli import main
from tests.extender.servers import post
from tests.support.kubeconfig import token_kubeconfig
from tests.support.synthetic import dgx_like, edge_box

CLI = [sys.executable, "-m", "scheduler_extender.cli"]
GPU_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "trainer", "namespace": "ml", "annotations": {"gedge.io/topology-aware": "true"}},
    "spec": {"containers": [{"name": "main", "image": "x", "resources": {"limits": {"gedge.io/gpu": "2"}}}]},
}


def test_demo_places_a_pod_through_the_real_agent_and_cleans_up() -> None:
    result = subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "POST /filter     -> passes" in out
    assert "POST /bind       -> bound; the agent applied it over gRPC" in out
    pinned = re.search(r"exclusive cpus\s+(\S+)", out)
    applied = re.search(r"container cpuset.cpus = (\S+), process Cpus_allowed_list = (\S+)", out)
    assert pinned and applied, out
    assert applied.group(1) == applied.group(2) == pinned.group(1)
    assert "released on" in out
    cgroup = re.search(r"(/sys/fs/cgroup/\S+/gedge-demo-\d+)", out)
    assert cgroup and not Path(cgroup.group(1)).exists(), "the demo removes its cgroups"


def test_demo_on_a_snapshot_places_and_applies_nothing(
    snapshot_roots: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A snapshot's CPUs are not this machine's: the agent reports it without applying, and the pod
    is bound in the extender only (before, the bind failed on CPUs this machine lacks)."""
    root = snapshot_roots["40intel64-2g2n4c+pcilocality"]
    assert main(["demo", "--root", str(root), "--node-name", "lab-1"]) == 0
    out = capsys.readouterr().out
    assert "--no-apply" in out
    assert "POST /bind       -> bound (not applied: a snapshot)" in out
    assert re.search(r"^pod default/demo-inference -> node lab-1 ", out, re.MULTILINE), out
    assert re.search(r"^  exclusive cpus +\S+", out, re.MULTILINE), out
    assert "  applied: container" not in out and "gedge-demo-" not in out


def test_demo_names_a_root_it_cannot_read_and_an_agent_that_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--root", str(tmp_path / "nowhere")]) == 2
    assert (
        capsys.readouterr().err == f"gedge-extender demo: --root {tmp_path / 'nowhere'}: no such directory\n"
    )
    assert main(["demo", "--root", str(tmp_path)]) == 2
    assert "no sys/devices/system/cpu under it" in capsys.readouterr().err

    from scheduler_extender.commands import demo

    def exits_at_once(*args: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(demo, "start_agent", exits_at_once)
    started = time.monotonic()
    assert main(["demo"]) == 1
    assert time.monotonic() - started < demo.AGENT_START_TIMEOUT_S / 2, "did not wait out the timeout"
    assert "gedge-extender demo: the agent exited (3) before it reported" in capsys.readouterr().err


def test_demo_without_the_right_to_make_cgroups_says_to_run_it_as_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scheduler_extender.commands import demo

    def refused(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    sandbox = demo.PodSandbox("u1")
    with pytest.raises(
        demo.DemoError, match=r"Permission denied \(run it as root: the demo pins a real process"
    ):
        sandbox.create()


@pytest.fixture
def topology_files(tmp_path: Path) -> list[str]:
    paths = []
    for state in (NodeState(dgx_like("dgx-a")), NodeState(edge_box("edge-a", timeslice_replicas=1))):
        path = tmp_path / f"{state.node_name}.json"
        path.write_text(to_json(state))
        paths.append(str(path))
    return paths


def test_place_prints_the_allocation(
    tmp_path: Path, topology_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(GPU_POD))
    args = ["place", "--pod", str(pod_file)]
    for path in topology_files:
        args += ["--topology", path]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pod ml/trainer -> node dgx-a" in out
    assert len(re.findall(r"^  gedge.io/gpu +GPU-dgx-a-", out, re.MULTILINE)) == 2
    assert "refused  edge-a:" in out
    assert main([*args, "--json"]) == 0
    allocation = Allocation.from_annotation(capsys.readouterr().out)
    assert allocation.node == "dgx-a" and len(allocation.device_ids("gedge.io/gpu")) == 2


def test_place_explains_bad_input(
    tmp_path: Path, topology_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_pod = tmp_path / "deploy.yaml"
    not_a_pod.write_text("kind: Deployment\nmetadata: {name: x}\n")
    assert main(["place", "--pod", str(not_a_pod), "--topology", topology_files[0]]) == 2
    assert f"--pod {not_a_pod}: not a Pod manifest (kind is 'Deployment')" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({**GPU_POD, "metadata": {"name": "p", "annotations": {"gedge.io/compute": "GPU"}}})
    )
    assert main(["place", "--pod", str(bad), "--topology", topology_files[0]]) == 1
    assert "gedge.io/compute" in capsys.readouterr().err
    greedy = tmp_path / "greedy.yaml"
    spec = {"containers": [{"name": "m", "image": "x", "resources": {"limits": {"gedge.io/gpu": "9"}}}]}
    greedy.write_text(yaml.safe_dump({**GPU_POD, "spec": spec}))
    topologies = [arg for path in topology_files for arg in ("--topology", path)]
    assert main(["place", "--pod", str(greedy), *topologies]) == 1
    err = capsys.readouterr().err
    assert "no node fits pod ml/trainer" in err and "dgx-a:" in err and "edge-a:" in err


def test_place_names_the_flag_and_file_it_cannot_use(
    tmp_path: Path, topology_files: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A file the command cannot use is exit 2 and one line naming the flag and the file; exit 1 is
    left to a pod that is not placed."""
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(yaml.safe_dump(GPU_POD))
    missing = tmp_path / "missing.json"
    text_report = tmp_path / "node.txt"
    text_report.write_text("      GPU0  NIC0  CPU Affinity  NUMA Affinity\n")
    other = tmp_path / "other.json"
    other.write_text(Path(topology_files[0]).read_text())
    cases = [
        (
            ["--pod", str(tmp_path / "nope.yaml"), "--topology", topology_files[0]],
            f"--pod {tmp_path}/nope.yaml: ",
        ),
        (["--pod", str(pod_file), "--topology", str(missing)], f"--topology {missing}: "),
        (["--pod", str(pod_file), "--topology", str(text_report)], f"--topology {text_report}: not JSON"),
        (["--pod", topology_files[0], "--topology", topology_files[0]], "not a Pod manifest (no kind)"),
        (
            ["--pod", str(pod_file), "--topology", topology_files[0], "--topology", str(other)],
            f"--topology {other}: node 'dgx-a' again (also in {topology_files[0]})",
        ),
        (
            ["--pod", str(pod_file), "--agents", str(tmp_path / "agents.yaml")],
            "--agents needs --agent-tls-cert, --agent-tls-key and --agent-tls-ca, or --insecure alone",
        ),
    ]
    for args, expected in cases:
        assert main(["place", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("gedge-extender place: ") and expected in err, err
        assert err.count("\n") == 1, err


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real gedge-agent serving this machine over gRPC, report-only; yielded once it serves."""
    from tests.grpc.agents import spawn_agent

    process = spawn_agent(
        "/",
        "extender-test-node",
        "--no-apply",
        "--checkpoint",
        str(tmp_path / "checkpoint.json"),
        "--device-plugin-dir",
        str(tmp_path / "dp"),
        metrics_listen="",
    )
    try:
        yield "extender-test-node", process.port
    finally:
        process.terminate(timeout=20)


def _serving_port(process: subprocess.Popen[str], deadline: float) -> int:
    assert process.stderr is not None
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        record = json.loads(line)
        if record.get("event") == "serving":
            return int(record["listen"].rsplit(":", 1)[1])
    raise AssertionError(f"serve never logged that it is serving: {''.join(seen)}")


def test_serve_over_an_agents_file_answers_kube_scheduler_and_stops_on_sigterm(
    tmp_path: Path, agent: tuple[str, int]
) -> None:
    node, port = agent
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump([{"node": node, "address": f"127.0.0.1:{port}"}]))
    serve = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--agents",
            str(agents),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-listen=",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{_serving_port(serve, time.monotonic() + 30)}"
        pinned = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "p",
                "namespace": "ml",
                "uid": "u1",
                "annotations": {"gedge.io/cpu-pinning": "true"},
            },
            "spec": {
                "containers": [
                    {"name": "m", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
                ]
            },
        }
        deadline = time.monotonic() + 30
        while True:
            status, result = post(
                f"{url}/filter", {"Pod": pinned, "Nodes": None, "NodeNames": [node, "ghost"]}
            )
            if result["NodeNames"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
        assert result["NodeNames"] == [node], result
        assert "ghost" in result["FailedAndUnresolvableNodes"]
        status, bound = post(
            f"{url}/bind", {"PodName": "p", "PodNamespace": "ml", "PodUID": "u1", "Node": node}
        )
        assert status == 200
        assert "pod ml/p" in bound["Error"] and "without an applier" in bound["Error"], bound
        every_cpu = json.loads(json.dumps(pinned))
        every_cpu["metadata"]["uid"] = "u2"
        # every CPU the shared pool can spare (it keeps one)
        every_cpu["spec"]["containers"][0]["resources"]["limits"]["cpu"] = str((os.cpu_count() or 2) - 1)
        _, again = post(f"{url}/filter", {"Pod": every_cpu, "Nodes": None, "NodeNames": [node]})
        assert again["NodeNames"] == [node], "the failed bind released its CPU"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
        assert serve.stderr is not None
        for line in serve.stderr.read().splitlines():
            assert "event" in json.loads(line), "structured JSON logs only"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_place_asks_live_agents(
    tmp_path: Path, agent: tuple[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    node, port = agent
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump([{"node": node, "address": f"127.0.0.1:{port}"}]))
    pod_file = tmp_path / "pod.yaml"
    pinned = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"gedge.io/cpu-pinning": "true"}},
        "spec": {
            "containers": [
                {"name": "m", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
            ]
        },
    }
    pod_file.write_text(yaml.safe_dump(pinned))
    assert (
        main(
            [
                "place",
                "--agents",
                str(agents),
                "--pod",
                str(pod_file),
                "--json",
                "--insecure",
                "--wait-s",
                "60",
            ]
        )
        == 0
    )
    allocation = Allocation.from_annotation(capsys.readouterr().out)
    assert allocation.node == node and len(allocation.cpus) == 1


def test_serve_refuses_a_bad_agents_file(tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text("- node: Bad_Name\n  address: 127.0.0.1:1\n")
    result = subprocess.run(
        [
            *CLI,
            "serve",
            "--agents",
            str(agents),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-listen=",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Bad_Name" in result.stderr and str(agents) in result.stderr


def _kube_serve(kubeconfig: Path) -> tuple[subprocess.Popen[str], str]:
    serve = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-listen=",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        return serve, f"http://127.0.0.1:{_serving_port(serve, time.monotonic() + 120)}"
    except BaseException:
        serve.kill()
        serve.wait()
        raise


def _stop(serve: subprocess.Popen[str]) -> int:
    serve.send_signal(signal.SIGTERM)
    try:
        return serve.wait(timeout=20)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def _filter_until_fresh(url: str, pod: dict, node: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        status, result = post(f"{url}/filter", {"Pod": pod, "Nodes": None, "NodeNames": [node]})
        assert status == 200
        stale = node in result["FailedAndUnresolvableNodes"]
        if not stale or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_serve_under_kubernetes_binds_and_rebuilds_after_restart(
    tmp_path: Path, agent: tuple[str, int]
) -> None:
    """Agents found from Node objects, bind annotates and binds the pod, a restarted extender still
    counts that pod's CPUs: against a loopback API server and a real agent."""
    from tests.extender.fake_apiserver import FakeApiServer
    from tests.extender.servers import ServerThread

    node, port = agent
    fake = FakeApiServer()
    fake.nodes.append(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "annotations": {"gedge.io/agent-port": str(port)}},
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
        }
    )
    spec = {
        "containers": [{"name": "m", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]
    }
    first = fake.add_pod("ml", "first", "uid-first", spec=spec)
    first["metadata"]["annotations"]["gedge.io/cpu-pinning"] = "true"
    spare = (os.cpu_count() or 2) - 1  # every CPU the shared pool can spare (it keeps one)
    greedy_spec = {
        "containers": [
            {"name": "m", "image": "x", "resources": {"limits": {"cpu": str(spare), "memory": "1Gi"}}}
        ]
    }
    greedy = fake.add_pod("ml", "greedy", "uid-greedy", spec=greedy_spec)
    greedy["metadata"]["annotations"]["gedge.io/cpu-pinning"] = "true"
    with ServerThread(fake.app()) as api:
        kubeconfig = token_kubeconfig(tmp_path / "kubeconfig", api.url)
        serve, url = _kube_serve(kubeconfig)
        try:
            assert _filter_until_fresh(url, greedy, node)["NodeNames"] == [node], "every spare CPU is free"
            assert _filter_until_fresh(url, first, node)["NodeNames"] == [node]
            status, result = post(
                f"{url}/bind", {"PodName": "first", "PodNamespace": "ml", "PodUID": "uid-first", "Node": node}
            )
            assert (status, result) == (200, {"Error": ""})
        finally:
            assert _stop(serve) == 0
        bound = fake.pods[("ml", "first")]
        assert bound["spec"]["nodeName"] == node
        held = Allocation.from_annotation(bound["metadata"]["annotations"]["gedge.io/allocation"])
        assert len(held.cpus) == 1

        serve, url = _kube_serve(kubeconfig)
        try:
            result = _filter_until_fresh(url, greedy, node)
        finally:
            assert _stop(serve) == 0
        assert result["NodeNames"] == []
        assert "pinned CPUs" in result["FailedNodes"][node], result


def test_serve_without_tls_files_or_insecure_names_what_is_missing(tmp_path: Path) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text("[]\n")
    result = subprocess.run(
        [*CLI, "serve", "--agents", str(agents), "--listen", "127.0.0.1:0", "--tls-cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "TLS is required: missing --tls-key, --tls-client-ca, --agent-tls-cert, --agent-tls-key, "
        "--agent-tls-ca" in result.stderr
    )
    both = subprocess.run(
        [*CLI, "serve", "--agents", str(agents), "--insecure", "--tls-cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2
    assert "--insecure (plaintext) and --tls-cert exclude each other" in both.stderr


def test_demo_leaves_the_callers_logging_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in process (a test, a script), the demo sets logging for itself only: a cached logger
    left behind would bypass the caller's later configuration (structlog's capture_logs included)."""
    import structlog

    from scheduler_extender.commands import demo

    def exits_at_once(*args: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    monkeypatch.setattr(demo, "start_agent", exits_at_once)
    before = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    assert main(["demo"]) == 1
    assert structlog.get_config() == before
    assert logging.getLogger().handlers == handlers
