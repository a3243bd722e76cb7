"""What users feel: pods/s and time-to-bind of the real kube-scheduler, with our extender and without.

The real kube-scheduler (tests/e2e/controlplane/build.sh's binary) runs against
the real kube-apiserver and etcd with N Node objects (capacity, no kubelets).
Their gedge.io/* capacity is what the agents' device plugins would advertise
for the topologies of bench/extender.py's seeded mix (DGX-like boxes,
workstations, edge boxes, a few pods already placed); the extender gets the
same topologies as its node cache. M pods of bench/extender.py's shapes are
created through the API as fast as 8 client threads can, and a watch records
when each is bound.

Runs per cluster size:
- alone: kube-scheduler without the extender, gedge.io/* counted as plain
  extended resources (no device choice), default percentageOfNodesToScore;
- alone 100%: the same with percentageOfNodesToScore 100;
- extender: deploy/scheduler/gedge-scheduler-config.yaml's profile calling the
  extender (HTTP on loopback, its own process, binding through the API),
  default percentageOfNodesToScore;
- extender 100%: the same with percentageOfNodesToScore 100.

Per run: pods bound of M, pods/s (M over first create to last bind), p50/p99
time-to-bind (create answered -> bind seen by the watch), the best-level
share: placed pods whose allocation costs no more than the cheapest the pod's
shape gets on an idle node of the mix, and the CPU time per bound pod of
kube-scheduler, of kube-apiserver + etcd, and of the extender (user + system,
first create to last bind). On a machine with few cores these add up to the
pods/s: every process of the run shares the same CPUs. Each run gets a fresh
extender (empty assume cache) and its own namespace; pods are deleted after
each run.
Last line: `with extender / without, <N> nodes, 100%: R` (pods/s of extender
100% over alone 100%, at the largest N), best-level share beside it. Goal: R >= 0.5.
With --repeat K each configuration runs K times, interleaved, a row per run,
and R compares the median runs (on a small machine one run's pods/s varies
by a fifth from run to run).

    .venv/bin/python bench/scheduling.py [--sizes 500,5000] [--pods 300,600] [--repeat 1]

Needs the control-plane binaries (`make e2e-binaries`); several minutes per size.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import multiprocessing
import os
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import extender as mix  # noqa: E402  (bench/extender.py: the seeded cluster and pod shapes)
from cli_args import counted, counts  # noqa: E402

from gedge_model import ANNOTATION, Allocation, NodeState  # noqa: E402
from scheduler_extender.placement import parse_pod_request, place  # noqa: E402
from scheduler_extender.placement.engine import Placement  # noqa: E402
from tests.e2e.control_plane import ControlPlane, binary_dir  # noqa: E402
from tests.e2e.edge_cluster import advertised_resources, deploy_scheduler_configuration  # noqa: E402
from tests.support.synthetic import dgx_like, edge_box, pcie_workstation  # noqa: E402

CLIENT_THREADS = 8
BIND_TIMEOUT = 600.0


class Api:
    """Raw JSON over keep-alive HTTPS as the cluster admin; one connection per thread."""

    def __init__(self, server: str, context: ssl.SSLContext) -> None:
        url = urllib.parse.urlsplit(server)
        self.host, self.port, self.context = url.hostname or "127.0.0.1", url.port or 443, context
        self._local = threading.local()

    def connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=60
            )
        return conn

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        conn = self.connection()
        data = None if body is None else orjson.dumps(body)
        conn.request(method, path, data, {"Content-Type": "application/json", "Accept": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status not in ok:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return orjson.loads(payload) if payload else None

    def watch_binds(self, namespace: str, seen: dict[str, float]) -> threading.Event:
        """Record in `seen` when each pod of `namespace` is first seen with spec.nodeName.

        The watch is open when this returns; setting the returned event ends it. A watch the API
        server closes (it drops watchers that read too slowly) is resumed from a fresh list, whose
        newly bound pods count as bound when listed.
        """
        stop = threading.Event()
        path = f"/api/v1/namespaces/{namespace}/pods"

        def note(obj: dict[str, Any]) -> None:
            name = (obj.get("metadata") or {}).get("name")
            if name and (obj.get("spec") or {}).get("nodeName") and name not in seen:
                seen[name] = time.perf_counter()

        def open_watch(version: str) -> http.client.HTTPResponse:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=2)
            conn.request("GET", f"{path}?watch=1&resourceVersion={version}&allowWatchBookmarks=true")
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"watch pods of {namespace}: {response.status}")
            return response

        listed = self.call("GET", path)
        first = open_watch(listed["metadata"]["resourceVersion"])

        def follow(response: http.client.HTTPResponse) -> None:
            while not stop.is_set():
                try:
                    while not stop.is_set() and (line := response.readline()):
                        event = orjson.loads(line)
                        if event.get("type") != "BOOKMARK":
                            note(event.get("object") or {})
                except (OSError, ValueError, http.client.HTTPException):
                    pass  # quiet for 2 s, or closed by the API server: list and watch again
                response.close()
                if stop.is_set():
                    return
                relisted = self.call("GET", path)
                for item in relisted["items"]:
                    note(item)
                response = open_watch(relisted["metadata"]["resourceVersion"])

        threading.Thread(target=follow, args=(first,), daemon=True).start()
        return stop


def node_body(name: str, state: NodeState) -> tuple[dict[str, Any], dict[str, Any]]:
    topology = state.topology
    cpus = sum(1 for c in topology.cpus if c.online) or 8
    resources = {"cpu": str(cpus), "memory": "512Gi", "pods": "110"}
    resources.update({r: str(n) for r, n in advertised_resources(topology).items()})
    meta = {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "bench node",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }
        ],
    }
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}, status


def register_nodes(api: Api, states: dict[str, NodeState]) -> None:
    def one(item: tuple[str, NodeState]) -> None:
        node, status = node_body(*item)
        created = api.call("POST", "/api/v1/nodes", node)
        created["status"] = status
        api.call("PUT", f"/api/v1/nodes/{item[0]}/status", created)

    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(one, states.items()))


def serve_extender(count: int, kubeconfig: str, conn: Any) -> None:
    """The extender process: the mix's topologies as its node cache, binding through the API server.

    Each "start" message starts a fresh extender (empty assume cache) and sends its port back.
    """
    import asyncio
    import logging

    import structlog
    import uvloop
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from scheduler_extender.bind.kube import KubeBinder, read_pod
    from scheduler_extender.http.app import build_app, start_server, tune_gc
    from scheduler_extender.node_source import StaticNodeSource
    from scheduler_extender.verbs import Extender

    states = mix.build_states(count)
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
    tune_gc()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner = None
        while (message := await loop.run_in_executor(None, conn.recv)) != "stop":
            if runner is not None:
                await runner.cleanup()
            if message == "start":
                extender = Extender(
                    StaticNodeSource(states),
                    KubeBinder(core),
                    pod_reader=lambda namespace, name: read_pod(core, namespace, name),
                )
                runner, port = await start_server(build_app(extender), "127.0.0.1", 0)
                conn.send(port)
        if runner is not None:
            await runner.cleanup()

    uvloop.run(main())  # as `gedge-extender serve` runs it


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def best_costs() -> list[float]:
    """Per shape of the mix, the lowest allocation cost it gets on an idle node of any kind."""
    idle = [
        dgx_like("idle-a", timeslice_replicas=1),
        dgx_like("idle-b", timeslice_replicas=4),
        pcie_workstation("idle-c"),
        edge_box("idle-d", gpus=1),
        edge_box("idle-e", gpus=2),
    ]
    best = []
    for limits, notes in mix.SHAPES:
        request = parse_pod_request(mix.pod("probe", limits, notes))
        costs = [o.allocation.cost for t in idle if isinstance(o := place(NodeState(t), request), Placement)]
        best.append(min(costs))
    return best


def pod_body(index: int, scheduler: str) -> dict[str, Any]:
    limits, annotations = mix.SHAPES[index % len(mix.SHAPES)]
    body = mix.pod(f"p-{index}", limits, annotations)
    del body["metadata"]["uid"], body["metadata"]["namespace"]
    body["spec"]["schedulerName"] = scheduler
    return body


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process `pid` so far (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, ValueError):
        return 0.0
    return float(times.user + times.system)


def run(
    plane: ControlPlane,
    api: Api,
    label: str,
    pods: int,
    configuration: dict[str, Any],
    best: list[float],
    extender_pid: int | None,
) -> dict[str, float]:
    namespace = f"bench-{label.replace(' ', '-').replace('%', 'pct')}"
    scheduler_name = configuration["profiles"][0]["schedulerName"]
    api.call(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    scheduler = plane.start_scheduler(configuration, name=f"kube-scheduler-{namespace}")
    seen: dict[str, float] = {}
    created: dict[str, float] = {}
    stop_watch = api.watch_binds(namespace, seen)
    assert plane.etcd is not None and plane.apiserver is not None
    processes = {
        "scheduler": [scheduler.pid],
        "api": [plane.apiserver.pid, plane.etcd.pid],
        "extender": [extender_pid] if "extenders" in configuration else [],
    }

    def cpu() -> dict[str, float]:
        return {part: sum(map(cpu_seconds, pids)) for part, pids in processes.items()}

    try:
        before = cpu()
        started = time.perf_counter()

        def create(i: int) -> None:
            api.call("POST", f"/api/v1/namespaces/{namespace}/pods", pod_body(i, scheduler_name))
            created[f"p-{i}"] = time.perf_counter()

        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(create, range(pods)))
        created_all = time.perf_counter()
        deadline = time.monotonic() + BIND_TIMEOUT
        while len(seen) < pods and time.monotonic() < deadline:
            time.sleep(0.2)
        finished = max(seen.values(), default=time.perf_counter())
        used = {part: seconds - before[part] for part, seconds in cpu().items()}
    finally:
        stop_watch.set()
        plane.stop_scheduler(scheduler)
    listed = api.call("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    placed = best_level = 0
    for item in listed:
        text = ((item.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
        if not text or not (item.get("spec") or {}).get("nodeName"):
            continue
        placed += 1
        index = int(item["metadata"]["name"].split("-")[1])
        if Allocation.from_annotation(text).cost <= best[index % len(best)] + 1e-9:
            best_level += 1
    api.call("DELETE", f"/api/v1/namespaces/{namespace}/pods?gracePeriodSeconds=0")
    waits = [seen[name] - created[name] for name in seen if name in created]
    return {
        "bound": len(seen),
        "pods_per_s": len(seen) / (finished - started) if seen else 0.0,
        "create_per_s": pods / (created_all - started),
        "p50": percentile(waits, 0.5) * 1000,
        "p99": percentile(waits, 0.99) * 1000,
        "best_share": best_level / placed if placed else float("nan"),
        **{f"cpu_{part}": 1000 * seconds / max(1, len(seen)) for part, seconds in used.items()},
    }


def share(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: no allocations (kube-scheduler alone)


def configurations(extender_url: str, nodes: int) -> list[tuple[str, dict[str, Any]]]:
    alone: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": "bench-alone"}],
    }
    alone_all = {**alone, "percentageOfNodesToScore": 100, "profiles": [{"schedulerName": "bench-alone-100"}]}
    ours = deploy_scheduler_configuration(extender_url)
    ours["leaderElection"] = {"leaderElect": False}
    for extender in ours["extenders"]:
        # plain HTTP on loopback: deploy/'s mTLS files are not here (connections are kept alive, so
        # TLS would add only the encryption of each body)
        extender["enableHTTPS"] = False
        extender.pop("tlsConfig", None)
    ours_all = {**ours, "percentageOfNodesToScore": 100}
    ours_all["profiles"] = [{**ours["profiles"][0], "schedulerName": "bench-extender-100"}]
    return [("alone", alone), ("alone 100%", alone_all), ("extender", ours), ("extender 100%", ours_all)]


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median pods/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["pods_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def bench_size(
    plane: ControlPlane, api: Api, nodes: int, pods: int, repeat: int = 1
) -> dict[str, dict[str, float]]:
    """Each configuration `repeat` times, interleaved (so slow spells of the machine hit every
    configuration alike); per configuration, its median run."""
    states = mix.build_states(nodes)
    register_nodes(api, states)
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.Process(
        target=serve_extender, args=(nodes, str(plane.kubeconfig), child), daemon=True
    )
    worker.start()
    best = best_costs()
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for label, _ in [item for _ in range(repeat) for item in configurations("http://unused", nodes)]:
            parent.send("start")
            port = parent.recv()
            configuration = dict(configurations(f"http://127.0.0.1:{port}", nodes))[label]
            attempt = len(runs.setdefault(label, []))
            r = run(plane, api, f"{nodes}-{label}-{attempt}", pods, configuration, best, worker.pid)
            runs[label].append(r)
            print(
                f"{nodes:>6} {label:<14} {r['bound']:>5.0f}/{pods:<5} {r['pods_per_s']:>7.1f} "
                f"{r['p50']:>9.0f}ms {r['p99']:>9.0f}ms {share(r['best_share']):>10} "
                f"{r['create_per_s']:>9.0f} {r['cpu_scheduler']:>11.1f} {r['cpu_api']:>9.1f} "
                f"{r['cpu_extender']:>9.1f}",
                flush=True,
            )
    finally:
        parent.send("stop")
        worker.join(timeout=60)
        api.call("DELETE", "/api/v1/nodes")
    return {label: median_run(found) for label, found in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=counts, default=[500, 5000], help="cluster sizes (nodes), comma-separated"
    )
    parser.add_argument(
        "--pods", type=counts, default=[300, 600], help="pods per run, one per size (or one for all)"
    )
    parser.add_argument(
        "--repeat",
        type=counted(1),
        default=1,
        help="runs of each configuration, interleaved; R from the medians",
    )
    args = parser.parse_args()
    sizes: list[int] = args.sizes
    pods: list[int] = args.pods
    pods = pods * len(sizes) if len(pods) == 1 else pods
    if len(pods) != len(sizes):
        parser.error("--pods: one count, or one per size")
    load = os.getloadavg()[0]
    print(f"real kube-apiserver + kube-scheduler on loopback; {os.cpu_count()} CPUs, load average {load:.1f}")
    print(
        f"{'nodes':>6} {'run':<14} {'bound':>11} {'pods/s':>7} {'bind p50':>11} {'bind p99':>11} "
        f"{'best-level':>10} {'created/s':>9} {'sched ms/pod':>11} {'api ms/pod':>9} {'ext ms/pod':>9}"
    )
    with tempfile.TemporaryDirectory(prefix="gedge-bench-") as workdir:
        plane = ControlPlane(binary_dir(), Path(workdir)).start()
        try:
            assert plane.ca is not None and plane.admin is not None  # set by start()
            context = ssl.create_default_context(cafile=str(plane.ca.cert))
            context.load_cert_chain(str(plane.admin.cert), str(plane.admin.key))
            api = Api(plane.server, context)
            results = {n: bench_size(plane, api, n, m, args.repeat) for n, m in zip(sizes, pods, strict=True)}
        finally:
            plane.stop()
    largest = max(sizes)
    ours, alone = results[largest]["extender 100%"], results[largest]["alone 100%"]
    ratio = ours["pods_per_s"] / alone["pods_per_s"] if alone["pods_per_s"] else float("nan")
    print("goal: R >= 0.5")
    print(
        f"with extender / without, {largest} nodes, 100%: {ratio:.2f} "
        f"(best-level share {share(ours['best_share'])})"
    )


if __name__ == "__main__":
    main()
