"""`gedge-extender demo`: the whole path on this machine, no cluster.

A real `gedge-agent serve` discovers this machine and serves it over gRPC on a
free loopback port; the extender follows it through the cluster cache (an
agents file naming it); a sample pod goes through the extender's real HTTP
filter -> prioritize -> bind, and bind applies through the agent's gRPC Apply.
The pod asks for what this machine has: a GPU with a VF and pinned CPUs on a
GPU box, pinned CPUs (with a VF when there is one) elsewhere. Everything is
torn down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from gedge_model import NodeTopology
from scheduler_extender.bind.agent import AgentBinder
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.commands.render import allocation_summary, topology_summary
from scheduler_extender.http.app import build_app, start_server
from scheduler_extender.verbs import Extender

AGENT_START_TIMEOUT_S = 20.0


class DemoError(RuntimeError):
    pass


def register(parser: argparse.ArgumentParser) -> None:
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


def start_agent(root: str, node: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GEDGE_AGENT_DEVICE_PLUGIN_DIR=str(workdir / "device-plugins"))
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
        "--log-level",
        "warning",
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


async def drive(extender: Extender, pod: dict[str, Any], node: str) -> tuple[dict, list, dict]:
    """kube-scheduler's three calls, over real HTTP to the extender on a loopback port."""
    runner, port = await start_server(build_app(extender), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
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
    from scheduler_extender.cache import ClusterCache, GrpcAgentApplier
    from scheduler_extender.cache.targets import AgentTarget, dump_agents

    started = time.monotonic()
    node = args.node_name or node_name_for(socket.gethostname())
    with tempfile.TemporaryDirectory(prefix="gedge-demo-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        agents_file = workdir / "agents.yaml"
        agents_file.write_text(dump_agents([AgentTarget(node, f"127.0.0.1:{port}")]))
        print(f"starting gedge-agent serve --root {args.root} --node-name {node} on 127.0.0.1:{port}")
        agent = start_agent(args.root, node, port, workdir)
        cluster = ClusterCache.from_agents_file(agents_file)
        applier = GrpcAgentApplier(cluster)
        try:
            cluster.start()
            if not cluster.wait_for(lambda v: node in v and v[node].fresh, AGENT_START_TIMEOUT_S):
                view = cluster.node(node)
                reason = view.reason if view else "no record"
                log = (workdir / "agent.log").read_text(errors="replace")[-2000:]
                raise DemoError(
                    f"the agent did not report within {AGENT_START_TIMEOUT_S:g}s: {reason}\n{log}"
                )
            view = cluster.node(node)
            assert view is not None
            topology = view.state.topology
            print()
            print(topology_summary(topology))
            pod, note = sample_pod(topology, str(uuid.uuid4()))
            print()
            print(f"sample pod default/demo-inference {note}")
            extender = Extender(cluster, AgentBinder(applier), cache=AssumeCache())
            filtered, scores, bound = asyncio.run(drive(extender, pod, node))
            print(
                "  POST /filter     -> "
                + (
                    f"passes {filtered['NodeNames']}"
                    if filtered["NodeNames"]
                    else f"refused: {filtered['Error'] or filtered['FailedNodes']}"
                )
            )
            print(f"  POST /prioritize -> {scores}")
            print(
                "  POST /bind       -> "
                + ("bound, applied by the agent" if not bound["Error"] else bound["Error"])
            )
            allocation = extender.cache.held_by(pod["metadata"]["uid"])
            if bound["Error"] or allocation is None:
                return 1
            print()
            print(allocation_summary(allocation, topology))
            if not args.keep:
                applier.release(node, allocation.pod_uid)
                print(f"\nreleased the allocation on {node}")
        except DemoError as exc:
            print(f"gedge-extender demo: {exc}", file=sys.stderr)
            return 1
        finally:
            with contextlib.suppress(Exception):
                applier.close()
            cluster.stop()
            stop_agent(agent)
    print(f"done in {time.monotonic() - started:.1f}s")
    return 0
