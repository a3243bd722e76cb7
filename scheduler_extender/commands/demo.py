"""`gedge-extender demo`: the whole path on this machine, no cluster.

A real `gedge-agent serve` discovers this machine and serves it over gRPC on a
free loopback port; the extender follows it through the cluster cache (an
agents file naming it); a sample pod goes through the extender's real HTTP
filter -> prioritize -> bind, and bind applies through the agent's gRPC Apply.
The pod asks for what this machine has: a GPU with a VF and pinned CPUs on a
GPU box, pinned CPUs (with a VF when there is one) elsewhere.

With no kubelet here, the demo plays the container runtime: the pod is one real
process in its own container cgroup under a private kubepods tree, which the
agent's cpuset applier then pins. Everything is torn down at the end.

With `--root` naming a snapshot (not /), the agent reports that machine and
applies nothing (`--no-apply`): its CPUs and devices are not this machine's, so
the pod is placed and bound in the extender and the allocation printed, not
applied.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from gedge_common.cli import logging_for_run
from gedge_common.files import sysfs_root_problem
from gedge_model import Allocation, NodeTopology
from gedge_model.certs import issue_files
from gedge_model.tls import TlsMaterial, channel_credentials, expect_peer_name_options, load_tls
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.bind.binder import BindError
from scheduler_extender.cache.cache import CacheOptions
from scheduler_extender.commands.render import allocation_summary, topology_summary
from scheduler_extender.http.app import build_app, server_ssl_context, start_server
from scheduler_extender.verbs import Extender

AGENT_START_TIMEOUT_S = 20.0


class DemoError(RuntimeError):
    pass


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "examples:\n"
        "  gedge-extender demo                       # agent over this machine, a sample pod placed, pinned\n"
        "  gedge-extender demo --root /tmp/snapshot  # an unpacked sysfs snapshot: placed, not applied"
    )
    parser.add_argument(
        "--root", default="/", metavar="PATH", help="sysfs root the agent discovers (default /)"
    )
    parser.add_argument("--node-name", metavar="NAME", help="node name (default: this host's name)")
    parser.add_argument("--keep", action="store_true", help="leave the allocation applied (do not release)")
    parser.set_defaults(run=run)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_name_for(host: str) -> str:
    """This host's name as a Kubernetes node name (lowercase RFC 1123), as kubelet derives it."""
    name = re.sub(r"[^a-z0-9.-]+", "-", host.lower()).strip("-.")
    return name[:63] or "gedge-demo-node"


def sample_pod(topology: NodeTopology, uid: str) -> tuple[dict[str, Any], str]:
    """A pod this machine can hold, and one line saying what it asks for and why."""
    cores = {(c.package_id, c.core_id) for c in topology.cpus if c.online}
    threads_per_core = max(1, len(topology.online_cpus) // max(1, len(cores)))
    cpus = min(threads_per_core * (2 if len(cores) >= 4 else 1), len(topology.online_cpus))
    free_vfs = sum(len(nic.vfs) for nic in topology.interfaces)
    limits: dict[str, str] = {"cpu": str(cpus), "memory": "256Mi"}
    annotations = {
        "gedge.io/cpu-pinning": "true",
        "gedge.io/topology-aware": "true",
        "gedge.io/topology-policy": "best-effort",
    }
    asks = [f"{cpus} pinned CPU(s)"]
    if topology.gpus:
        limits["gedge.io/gpu"] = "1"
        annotations["gedge.io/compute"] = '["GPU"]'
        asks.insert(0, "1 GPU")
    if free_vfs:
        limits["gedge.io/sriov-vf"] = "1"
        annotations["gedge.io/communication"] = '["SRIOV"]'
        asks.append("1 SR-IOV VF")
    note = "asks for " + ", ".join(asks)
    if not topology.gpus:
        note += " (no GPU on this machine"
        note += ", no SR-IOV VF either)" if not free_vfs else ")"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-inference",
            "namespace": "default",
            "uid": uid,
            "annotations": annotations,
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/inference:1",
                    "resources": {"limits": limits, "requests": limits},
                }
            ]
        },
    }
    return pod, note


class PodSandbox:
    """The demo pod as a container runtime would leave it: kubepods/pod<uid>/<container>, one process.

    Under a private cgroup (`gedge-demo-<pid>`) of the cpuset hierarchy (cgroup v1
    cpuset controller, or v2 with cpuset enabled), so nothing of the host's own
    pods is touched. The agent gets that cgroup as its --cgroup-root.
    """

    def __init__(self, pod_uid: str) -> None:
        self.pod_uid = pod_uid
        self.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.root = Path()
        self.version = ""
        self._dirs: list[Path] = []
        self.process: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        v1, v2 = Path("/sys/fs/cgroup/cpuset"), Path("/sys/fs/cgroup")
        if (v1 / "cpuset.cpus").exists():
            self.version, parent = "v1", v1
        elif "cpuset" in _read(v2 / "cgroup.controllers").split():
            self.version, parent = "v2", v2
        else:
            raise DemoError("no cpuset cgroup controller here (cgroup v1 cpuset, or v2 with cpuset)")
        self.root = parent / f"gedge-demo-{os.getpid()}"
        try:
            for path in (
                self.root,
                self.root / "kubepods",
                self.root / "kubepods" / f"pod{self.pod_uid}",
                self.root / "kubepods" / f"pod{self.pod_uid}" / self.container_id,
            ):
                if self.version == "v2":
                    (path.parent / "cgroup.subtree_control").write_text("+cpuset")
                path.mkdir()
                self._dirs.append(path)
                if self.version == "v1":
                    for name in ("cpuset.cpus", "cpuset.mems"):
                        (path / name).write_text(_read(path.parent / name) or "\n")
            self.process = subprocess.Popen(["sleep", "600"], start_new_session=True)
            (self._dirs[-1] / "cgroup.procs").write_text(str(self.process.pid))
        except OSError as exc:
            self.destroy()
            hint = (
                " (run it as root: the demo pins a real process in a cgroup of its own;"
                " --root SNAPSHOT places without applying)"
                if isinstance(exc, PermissionError)
                else ""
            )
            raise DemoError(
                f"cannot create the demo pod's cgroups under {parent}: {exc.strerror or exc}{hint}"
            ) from None

    def cpus_allowed(self) -> str:
        if self.process is None:
            return "-"
        for line in _read(Path(f"/proc/{self.process.pid}/status")).splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
        return "-"

    def container_cpuset(self) -> str:
        name = "cpuset.cpus" if self.version == "v1" else "cpuset.cpus.effective"
        return _read(self._dirs[-1] / name).strip() if self._dirs else "-"

    def runtime(self) -> agent_pb2.PodRuntime:
        return agent_pb2.PodRuntime(qos_class="Guaranteed", container_ids=[self.container_id])

    def destroy(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for path in reversed(self._dirs):
            with contextlib.suppress(OSError):
                path.rmdir()
        self._dirs.clear()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class SnapshotBinder:
    """Bind for a snapshot's node: the extender's choice is kept and printed; nothing is applied,
    since the snapshot's CPUs and devices are not this machine's."""

    def __init__(self) -> None:
        self.bound: Allocation | None = None

    def bind(self, allocation: Allocation) -> None:
        self.bound = allocation

    def close(self) -> None:
        pass


class SandboxBinder:
    """Bind without Kubernetes, for the demo pod: the agent's gRPC Apply with where the pod runs."""

    def __init__(self, address: str, sandbox: PodSandbox, tls: TlsMaterial, node: str) -> None:
        self._channel = grpc.secure_channel(address, channel_credentials(tls), expect_peer_name_options(node))
        self._stub = agent_pb2_grpc.NodeAgentStub(self._channel)
        self._sandbox = sandbox
        self.bound: Allocation | None = None
        """The last allocation the agent applied (the extender stops holding it once reported)."""

    def bind(self, allocation: Allocation) -> None:
        request = agent_pb2.ApplyRequest(
            allocation_json=allocation.to_annotation(), runtime=self._sandbox.runtime()
        )
        try:
            self._stub.Apply(request, timeout=10)
        except grpc.RpcError as exc:
            raise BindError(
                f"pod {allocation.namespace}/{allocation.name}: agent on {allocation.node} did not apply: "
                f"{exc.code().name}: {exc.details()}"
            ) from None
        self.bound = allocation

    def release(self, pod_uid: str) -> None:
        self._stub.Release(agent_pb2.ReleaseRequest(pod_uid=pod_uid), timeout=10)

    def close(self) -> None:
        self._channel.close()


def start_agent(
    root: str, node: str, port: int, workdir: Path, cgroup_root: Path | None
) -> subprocess.Popen[bytes]:
    """`gedge-agent serve` with mTLS: its certificate from the demo's CA in workdir/pki; report only
    (`--no-apply`) without a cgroup root (a snapshot's node)."""
    env = dict(os.environ, GEDGE_AGENT_DEVICE_PLUGIN_DIR=str(workdir / "device-plugins"))
    pki = workdir / "pki"
    command = [
        sys.executable,
        "-m",
        "agent.cli",
        "serve",
        "--root",
        root,
        "--node-name",
        node,
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        "",
        "--checkpoint",
        str(workdir / "checkpoint.json"),
        *(["--cgroup-root", str(cgroup_root)] if cgroup_root is not None else ["--no-apply"]),
        "--cgroup-driver",
        "cgroupfs",
        "--nri-socket",
        "",
        "--pod-resources-socket",
        "",
        "--log-level",
        "warning",
        "--tls-cert",
        str(pki / f"{node}.pem"),
        "--tls-key",
        str(pki / f"{node}.key"),
        "--tls-ca",
        str(pki / "ca.pem"),
    ]
    log = (workdir / "agent.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as response:
        payload = await response.json()
        if response.status != 200:
            raise DemoError(f"{url} answered {response.status}: {payload}")
        return payload


async def drive(
    extender: Extender, pod: dict[str, Any], node: str, pki: Path
) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """kube-scheduler's three calls, over HTTPS with its client certificate to the extender on loopback."""
    server = server_ssl_context(
        str(pki / "gedge-extender.pem"), str(pki / "gedge-extender.key"), str(pki / "ca.pem")
    )
    app = build_app(extender, allowed_clients=frozenset({"kube-scheduler"}))
    runner, port = await start_server(app, "127.0.0.1", 0, server)
    base = f"https://127.0.0.1:{port}"
    client = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    client.check_hostname = False
    client.load_cert_chain(pki / "kube-scheduler.pem", pki / "kube-scheduler.key")
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10), connector=aiohttp.TCPConnector(ssl=client)
        ) as session:
            args = {"Pod": pod, "Nodes": None, "NodeNames": [node]}
            filtered = await post(session, f"{base}/filter", args)
            scores = await post(
                session, f"{base}/prioritize", {**args, "NodeNames": filtered["NodeNames"] or []}
            )
            bound: dict[str, Any] = {"Error": "skipped: filter left no node"}
            if filtered["NodeNames"]:
                meta = pod["metadata"]
                bound = await post(
                    session,
                    f"{base}/bind",
                    {
                        "PodName": meta["name"],
                        "PodNamespace": meta["namespace"],
                        "PodUID": meta["uid"],
                        "Node": node,
                    },
                )
            return filtered, scores, bound
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Logging is set for the run only and uncached, so a caller in the same process (a test, a
    script) keeps its own logging and loggers afterwards."""
    with logging_for_run("error"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from scheduler_extender.cache import ClusterCache
    from scheduler_extender.cache.targets import AgentTarget, dump_agents

    problem = sysfs_root_problem(Path(args.root))
    if problem:
        print(f"gedge-extender demo: --root {args.root}: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    applies = Path(args.root).resolve() == Path("/")
    node = args.node_name or node_name_for(socket.gethostname())
    pod_uid = str(uuid.uuid4())
    sandbox = PodSandbox(pod_uid)
    with tempfile.TemporaryDirectory(prefix="gedge-demo-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        agents_file = workdir / "agents.yaml"
        agents_file.write_text(dump_agents([AgentTarget(node, f"127.0.0.1:{port}")]))
        agent = None
        pki = workdir / "pki"
        for name in (node, "gedge-extender", "kube-scheduler"):
            issue_files(pki, name, ips=["127.0.0.1"], days=1)
        tls = load_tls(pki / "gedge-extender.pem", pki / "gedge-extender.key", pki / "ca.pem")
        cluster = ClusterCache.from_agents_file(agents_file, CacheOptions(tls=tls))
        binder: SandboxBinder | SnapshotBinder = (
            SandboxBinder(f"127.0.0.1:{port}", sandbox, tls, node) if applies else SnapshotBinder()
        )
        try:
            if applies:
                sandbox.create()
            print(
                f"starting gedge-agent serve --root {args.root} --node-name {node} on 127.0.0.1:{port} "
                "(mTLS, certificates from a throwaway CA"
                + ("" if applies else "; --no-apply: a snapshot's CPUs and devices are not this machine's")
                + ")"
            )
            agent = start_agent(args.root, node, port, workdir, sandbox.root if applies else None)
            cluster.start()
            running = agent
            reported = cluster.wait_for(
                lambda v: (node in v and v[node].fresh) or running.poll() is not None, AGENT_START_TIMEOUT_S
            )
            if not reported or agent.poll() is not None:
                view = cluster.node(node)
                reason = view.reason if view else "no record"
                log = _read(workdir / "agent.log")[-2000:]
                if agent.poll() is not None:
                    raise DemoError(f"the agent exited ({agent.returncode}) before it reported:\n{log}")
                raise DemoError(
                    f"the agent did not report within {AGENT_START_TIMEOUT_S:g}s: {reason}\n{log}"
                )
            view = cluster.node(node)
            assert view is not None
            topology = view.state.topology
            print()
            print(topology_summary(topology))
            pod, note = sample_pod(topology, pod_uid)
            print()
            print(f"sample pod default/demo-inference {note};")
            if applies:
                pid = sandbox.process.pid if sandbox.process else "-"
                print(f"  it runs as process {pid} in container cgroup")
                print(
                    f"  {sandbox.root}/kubepods/pod{pod_uid}/{sandbox.container_id[:12]}..."
                    f" (cgroup {sandbox.version})"
                )
            else:
                print("  placed on the snapshot's node; nothing runs or is pinned here")
            extender = Extender(cluster, binder, cache=AssumeCache())
            filtered, scores, bound = asyncio.run(drive(extender, pod, node, pki))
            verdict = filtered["NodeNames"] or filtered["Error"] or filtered["FailedNodes"]
            print(f"  POST /filter     -> {'passes ' if filtered['NodeNames'] else 'refused: '}{verdict}")
            print(f"  POST /prioritize -> {scores}")
            done = "bound; the agent applied it over gRPC" if applies else "bound (not applied: a snapshot)"
            print(f"  POST /bind       -> {bound['Error'] or done}")
            allocation = binder.bound
            if bound["Error"] or allocation is None or allocation.pod_uid != pod_uid:
                return 1
            print()
            print(allocation_summary(allocation, topology))
            if isinstance(binder, SandboxBinder):
                print(
                    f"  applied: container cpuset.cpus = {sandbox.container_cpuset() or '-'}, "
                    f"process Cpus_allowed_list = {sandbox.cpus_allowed()}"
                )
                if not args.keep:
                    binder.release(pod_uid)
                    print(f"released on {node}: process Cpus_allowed_list = {sandbox.cpus_allowed()}")
        except DemoError as exc:
            print(f"gedge-extender demo: {exc}", file=sys.stderr)
            return 1
        finally:
            binder.close()
            cluster.stop()
            if agent is not None:
                stop_agent(agent)
            if not args.keep:
                sandbox.destroy()
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0
