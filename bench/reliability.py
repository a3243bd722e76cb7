"""Reliability campaigns on loopback: what hostile clients, races and kill -9 do to agent and extender.

Real processes and servers only: `gedge-agent serve` on real cgroup v1 cpuset
sandboxes, `gedge-extender serve --agents` copies, the extender's HTTP server,
real gRPC clients killed mid-stream. Prints one table; the goal is zero in every
fault column. Needs root (cgroups). Bounded: a few minutes on two CPUs.

    sudo .venv/bin/python bench/reliability.py [--seed 7] [--fuzz 3000] [--watch-kills 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.apply import CgroupDriver, QosClass  # noqa: E402
from agent.bench.common import render_table  # noqa: E402
from gedge_common.cli import configure_logging  # noqa: E402
from tests.apply.helpers import build_pod_cgroups, new_pod_uid, v1_sandbox  # noqa: E402
from tests.grpc.agents import AgentProcess, spawn_agent  # noqa: E402

CLI = [str(Path(sys.executable).parent / "gedge-extender")]


@dataclass
class Row:
    campaign: str
    tried: int = 0
    crashes: int = 0
    stalls: int = 0
    internal_errors: int = 0
    server_errors: int = 0
    double_allocations: int = 0
    leaked_reservations: int = 0
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        return [
            self.campaign,
            str(self.tried),
            str(self.crashes),
            str(self.stalls),
            str(self.internal_errors),
            str(self.server_errors),
            str(self.double_allocations),
            str(self.leaked_reservations),
            "; ".join(self.notes),
        ]


def post(url: str, body: Any = None, raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any, float]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text), time.monotonic() - started
        except ValueError:
            return exc.code, text.decode(errors="replace"), time.monotonic() - started


# -- agent: watch clients killed mid-stream ------------------------------------------------------------

WATCH_CLIENT = """
import sys, threading, uuid
import grpc
from gedge_model import Allocation
from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc
port, node = sys.argv[1], sys.argv[2]
stub = agent_pb2_grpc.NodeAgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
stream = stub.WatchNodeState(agent_pb2.WatchNodeStateRequest())
threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()
def apply():
    while True:
        a = Allocation(str(uuid.uuid4()), "ns", "p", node)
        try:
            stub.Apply(agent_pb2.ApplyRequest(allocation_json=a.to_annotation()), timeout=5)
        except grpc.RpcError:
            pass
for _ in range(8):
    threading.Thread(target=apply, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def agent_sandbox(stack: ExitStack, prefix: str) -> Path:
    root = stack.enter_context(v1_sandbox(prefix))
    build_pod_cgroups(root, CgroupDriver.CGROUPFS, QosClass.BURSTABLE, new_pod_uid(), [])
    return root


def start_agent(stack: ExitStack, node: str, workdir: Path, *extra: str) -> AgentProcess:
    root = agent_sandbox(stack, f"grel-{node}-")
    agent = spawn_agent(
        "/",
        node,
        "--cgroup-root",
        str(root),
        "--cgroup-driver",
        "cgroupfs",
        "--checkpoint",
        str(workdir / f"{node}.json"),
        "--no-netlink",
        *extra,
        metrics_listen="",
    )
    stack.callback(agent.kill)
    return agent


def watch_kills(rounds: int, workdir: Path) -> Row:
    row = Row("agent: watch clients kill -9'd mid-stream")
    script = workdir / "watch_client.py"
    script.write_text(WATCH_CLIENT)
    with ExitStack() as stack:
        agent = start_agent(stack, "edge-watch", workdir, "--reservation-ttl-s", "0")
        for i in range(rounds):
            client = subprocess.Popen(
                [sys.executable, str(script), str(agent.port), "edge-watch"],
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert client.stdout is not None
            client.stdout.readline()
            time.sleep(0.2 + (i % 5) * 0.05)
            client.kill()
            client.wait()
            row.tried += 1
            if agent.process.poll() is not None:
                row.crashes += 1
                row.notes.append(f"agent rc {agent.process.returncode} in round {i}")
                break
    return row


# -- extender: hostile requests, with /healthz probed throughout ---------------------------------------

QUANTITIES = [
    "1e999999", "1E999999", "1e99999", "NaN", "Infinity", "-Infinity", "inf", "1e31", "9" * 40,
    "1" + "0" * 70, "1.5.5", "1Ki1", "0x10", "", " ", "1e", "e3", "1e-99999", "-1", "0.5", "1025",
    "\uff11", "1Ei", "999999999999999999999999",
]  # fmt: skip
RESOURCES = ["gedge.io/gpu", "gedge.io/sriov-vf", "gedge.io/mig-1g.10gb", "memory", "cpu", "gedge.io/bogus"]
ANNOTATIONS = [
    "gedge.io/communication", "gedge.io/compute", "gedge.io/topology-policy", "gedge.io/topology-aware",
    "gedge.io/cpu-pinning", "gedge.io/runtime", "gedge.io/min-nvidia-driver",
]  # fmt: skip


def hostile_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            "[" * 1500 + "]" * 1500,
            '["SRIOV"' + ',"RDMA"' * 2000 + "]",
            "x" * 5000,
            '["GPU"]',
            "[NaN]",
            "true",
            "maybe",
            42,
            None,
            {"a": 1},
            ["x"],
            "single-numa-node",
            "\x00\xff",
        ]
    )


def fuzz_bodies(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    bodies: list[tuple[str, bytes]] = []
    raw_cases = [
        b'{"Pod": {"metadata": {"name": NaN}}, "NodeNames": []}',
        b'{"Pod": {}, "NodeNames": [Infinity]}',
        b'{"Pod": ' + b"[" * 1000 + b"]" * 1000 + b', "NodeNames": []}',
        b'{"Pod": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"\xff\xfe{}",
        b"",
        b"null",
        b"[]",
        b'{"Pod": null, "NodeNames": null}',
        b'{"PodName": 1, "PodNamespace": [], "PodUID": {}, "Node": null}',
    ]
    while len(bodies) < count:
        verb = rng.choice(["filter", "prioritize", "bind", "preempt"])
        kind = rng.random()
        if kind < 0.15:
            bodies.append((verb, rng.choice(raw_cases)))
            continue
        limits = {rng.choice(RESOURCES): rng.choice(QUANTITIES)}
        if rng.random() < 0.5:
            limits["gedge.io/gpu"] = "1"
        annotations = {rng.choice(ANNOTATIONS): hostile_value(rng)} if rng.random() < 0.6 else {}
        pod: dict[str, Any] = {
            "metadata": {"name": f"fuzz-{len(bodies)}", "namespace": "ml", "uid": str(uuid.uuid4())},
            "spec": {"containers": [{"name": "main", "resources": {"limits": limits, "requests": limits}}]},
        }
        if annotations:
            pod["metadata"]["annotations"] = annotations
        if rng.random() < 0.1:
            pod["spec"]["containers"] = rng.choice([None, "x", [1, 2], [{"resources": []}]])
        if verb == "bind":
            body: Any = {
                "PodName": pod["metadata"]["name"],
                "PodNamespace": "ml",
                "PodUID": "u",
                "Node": "edge-1",
            }
        elif verb == "preempt":
            body = {"Pod": pod, "NodeNameToMetaVictims": {"edge-1": {"Pods": [{"UID": "v"}]}}}
        else:
            body = {"Pod": pod, "Nodes": None, "NodeNames": ["edge-1", "edge-2"]}
        bodies.append((verb, json.dumps(body).encode()))
    return bodies


class HealthProbe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.worst = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=60) as response:
                response.read()
            self.worst = max(self.worst, time.monotonic() - started)
            self.stop.wait(0.02)


def extender_fuzz(seed: int, count: int) -> tuple[Row, Row]:
    from gedge_model import NodeState
    from scheduler_extender.http.app import build_app, start_server
    from scheduler_extender.node_source import StaticNodeSource
    from scheduler_extender.verbs import Extender
    from tests.support.synthetic import edge_box

    class NoBinder:
        def bind(self, allocation: Any) -> None:
            return None

    row = Row(f"extender: hostile requests (seed {seed})")
    memory = Row("extender: 120 filtered pods of 2 MB")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    source = StaticNodeSource({n: NodeState(edge_box(n)) for n in ("edge-1", "edge-2")})
    extender = Extender(source, NoBinder())
    runner, port = asyncio.run_coroutine_threadsafe(
        start_server(build_app(extender), "127.0.0.1", 0), loop
    ).result(30)
    url = f"http://127.0.0.1:{port}"
    probe = HealthProbe(url)
    probe.start()
    try:
        for verb, raw in fuzz_bodies(random.Random(seed), count):
            status, body, took = post(f"{url}/{verb}", raw=raw)
            row.tried += 1
            row.stalls += took > 1.0
            row.server_errors += status >= 500
            text = json.dumps(body)
            if "internal error" in text:
                row.internal_errors += 1
                if len(row.notes) < 3:
                    row.notes.append(text[:160])
        row.notes.append(f"worst /healthz {probe.worst * 1000:.0f} ms")

        me = psutil.Process()
        gc.collect()
        before = me.memory_info().rss
        blob = "x" * (2 * 1024 * 1024)
        for i in range(120):
            pod = {
                "metadata": {
                    "name": f"big-{i}",
                    "namespace": "ml",
                    "uid": f"uid-big-{i}",
                    "annotations": {"b": blob},
                },
                "spec": {"containers": [{"name": "m", "resources": {"limits": {"gedge.io/gpu": "1"}}}]},
            }
            status, _, took = post(f"{url}/filter", {"Pod": pod, "Nodes": None, "NodeNames": ["edge-1"]})
            memory.tried += 1
            memory.server_errors += status >= 500
            memory.stalls += took > 1.0
        gc.collect()
        after = me.memory_info().rss
        memory.notes.append(
            f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB; "
            f"remembered {len(extender.remembered)} pods, {extender.remembered.bytes / 1024:.0f} KiB"
        )
    finally:
        probe.stop.set()
        probe.join(10)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return row, memory


# -- two extender copies racing binds over two agents, and kill -9 mid-load -----------------------------


def spawn_extender(agents_file: Path) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            *CLI,
            "serve",
            "--agents",
            str(agents_file),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--insecure",
            "--reserve-ttl-s",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = process.stderr
    assert stderr is not None
    for line in stderr:
        record = json.loads(line)
        if record.get("event") == "serving":
            threading.Thread(target=lambda: [None for _ in stderr], daemon=True).start()
            return process, int(record["listen"].rsplit(":", 1)[1])
    raise RuntimeError("extender did not start")


def pinned_pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"race-{i}",
            "namespace": "ml",
            "uid": str(uuid.uuid4()),
            "annotations": {"gedge.io/cpu-pinning": "true"},
        },
        "spec": {
            "containers": [{"name": "m", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]
        },
    }


def agent_allocations(port: int) -> tuple[list[dict[str, Any]], list[str]]:
    import grpc

    from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = agent_pb2_grpc.NodeAgentStub(channel).ListAllocations(
            agent_pb2.ListAllocationsRequest(), timeout=20
        )
    return json.loads(reply.allocations_json), list(reply.reserved_pod_uids)


def release_all(port: int) -> None:
    import grpc

    from protos.gedge.agent.v1 import agent_pb2, agent_pb2_grpc

    allocations, _ = agent_allocations(port)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_pb2_grpc.NodeAgentStub(channel)
        for allocation in allocations:
            stub.Release(agent_pb2.ReleaseRequest(pod_uid=allocation["pod_uid"]), timeout=20)


def race_and_kills(binds: int, kills: int, workdir: Path, ttl_s: float) -> tuple[Row, Row]:
    race = Row("2 extender copies: racing binds")
    killed = Row("extender kill -9 mid-bind")
    nodes = ["edge-a", "edge-b"]
    with ExitStack() as stack:
        agents = {n: start_agent(stack, n, workdir, "--reservation-ttl-s", str(ttl_s)) for n in nodes}
        agents_file = workdir / "agents.yaml"
        agents_file.write_text(
            json.dumps([{"node": n, "address": f"127.0.0.1:{a.port}"} for n, a in agents.items()])
        )
        copies = [spawn_extender(agents_file) for _ in range(2)]
        for process, _ in copies:
            stack.callback(process.kill)

        def one_bind(i: int, port: int) -> tuple[int, Any]:
            try:
                return try_bind(i, port)
            except OSError as exc:  # the copy was killed under it
                return 0, f"connection lost: {exc}"

        def try_bind(i: int, port: int) -> tuple[int, Any]:
            pod = pinned_pod(i)
            args = {"Pod": pod, "Nodes": None, "NodeNames": nodes}
            for _ in range(60):  # until the copy's cache has both agents
                status, body, _ = post(f"http://127.0.0.1:{port}/filter", args)
                if status == 200 and (body.get("NodeNames") or not body.get("FailedAndUnresolvableNodes")):
                    break
                time.sleep(0.1)
            passed = body.get("NodeNames") or []
            if not passed:
                return status, body
            meta = pod["metadata"]
            node = passed[i % len(passed)]
            bind = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"], "Node": node}
            status, body, _ = post(f"http://127.0.0.1:{port}/bind", bind)
            return status, body

        def check(row: Row) -> None:
            for agent in agents.values():
                allocations, _ = agent_allocations(agent.port)
                cpus = [c for a in allocations for c in a["cpus"]]
                row.double_allocations += len(cpus) - len(set(cpus))

        results: list[tuple[int, Any]] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(one_bind(i, copies[i % 2][1])))
            for i in range(binds)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        race.tried = len(results)
        race.server_errors = sum(status >= 500 for status, _ in results)
        race.crashes = sum(process.poll() is not None for process, _ in copies)
        race.internal_errors = sum("internal error" in json.dumps(body) for _, body in results)
        bound = sum(status == 200 and body == {"Error": ""} for status, body in results)
        race.notes.append(f"{bound} bound (one pinnable CPU per node)")
        check(race)

        for agent in agents.values():  # the race's pods are gone: their binds are not the kills' concern
            release_all(agent.port)
        orphans: set[str] = set()
        for k in range(kills):
            victim, victim_port = copies[k % 2]
            threads = [
                threading.Thread(target=one_bind, args=(1000 * (k + 1) + i, victim_port)) for i in range(4)
            ]
            for t in threads:
                t.start()
            time.sleep(0.1 + 0.1 * (k % 5))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            for t in threads:
                t.join(60)
            killed.tried += 1
            for agent in agents.values():
                orphans.update(agent_allocations(agent.port)[1])
            copies[k % 2] = spawn_extender(agents_file)
            stack.callback(copies[k % 2][0].kill)
        check(killed)
        deadline = time.monotonic() + ttl_s * 1.25 + 5
        left = len(orphans)
        while time.monotonic() < deadline:
            left = sum(len(agent_allocations(a.port)[1]) for a in agents.values())
            if left == 0:
                break
            time.sleep(0.2)
        killed.leaked_reservations = left
        killed.notes.append(
            f"{len(orphans)} reservations orphaned by the kills, {left} left after 1.25 x TTL ({ttl_s:g} s)"
        )
        killed.crashes = sum(a.process.poll() is not None for a in agents.values())
    return race, killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fuzz", type=int, default=3000, help="hostile extender requests")
    parser.add_argument("--watch-kills", type=int, default=20)
    parser.add_argument("--binds", type=int, default=40)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--reservation-ttl-s", type=float, default=4.0)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/reliability.py: needs root (cgroup sandboxes)", file=sys.stderr)
        return 2
    configure_logging("error")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gedge-reliability-") as tmp:
        workdir = Path(tmp)
        rows += list(extender_fuzz(args.seed, args.fuzz))
        rows.append(watch_kills(args.watch_kills, workdir))
        rows += list(race_and_kills(args.binds, args.kills, workdir, args.reservation_ttl_s))
    header = ["campaign", "tried", "crashes", "stalls>1s", "internal", "5xx", "double", "leaked", "notes"]
    print(render_table(header, [r.cells() for r in rows]))
    faults = sum(
        r.crashes
        + r.stalls
        + r.internal_errors
        + r.server_errors
        + r.double_allocations
        + r.leaked_reservations
        for r in rows
    )
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
