"""`gedge-extender serve`: the kube-scheduler extender over the live cluster cache.

With `--agents FILE` it runs without Kubernetes: nodes come from the agents file
and bind applies through each agent's gRPC Apply. With `--kubeconfig` or
`--in-cluster` the agents are found from Node objects, bind writes the
`gedge.io/allocation` annotation and creates the Binding, and allocations are
rebuilt from the pods after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvloop

from gedge_common.cli import configure_logging
from gedge_common.files import FileLoadError, read_bounded
from gedge_common.listen import parse_listen
from gedge_model.tls import MAX_PEM_BYTES, TlsConfigError, TlsFiles
from scheduler_extender.bind.agent import AgentBinder
from scheduler_extender.bind.assume import AssumeCache
from scheduler_extender.bind.binder import Binder
from scheduler_extender.cache.cache import CacheOptions
from scheduler_extender.commands.cluster_access import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    add_agent_tls,
    add_cluster_access,
    load_cluster_config,
    name_agent_tls_flag,
)
from scheduler_extender.http.app import (
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS_PER_CLIENT,
    METRICS_KEY,
    ReloadingSslContext,
    build_app,
    build_metrics_app,
    start_server,
    tune_gc,
)
from scheduler_extender.leader import AlwaysLeader, Leadership, LeaseElection
from scheduler_extender.node_source import NodeSource
from scheduler_extender.verbs import Extender

log = structlog.get_logger("gedge.extender.serve")


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "TLS is on unless --insecure: HTTPS for kube-scheduler, which must present a client certificate\n"
        "from --tls-client-ca naming one of --tls-allowed-clients, and mTLS to every agent (--agent-tls-*).\n"
        "/metrics, /healthz and /readyz are also served plain on --metrics-listen.\n\n"
        "examples:\n"
        "  gedge-extender serve --agents agents.yaml --tls-cert pki/gedge-extender.pem \\\n"
        "      --tls-key pki/gedge-extender.key --tls-client-ca pki/ca.pem --agent-tls-cert \\\n"
        "      pki/gedge-extender.pem --agent-tls-key pki/gedge-extender.key --agent-tls-ca pki/ca.pem\n"
        "  gedge-extender serve --in-cluster --tls-cert ... (as deploy/scheduler/extender.yaml runs it)\n"
        "  gedge-extender serve --agents agents.yaml --listen 127.0.0.1:8888 --insecure   # plaintext\n"
        "agents.yaml is a list of {node: NAME, address: HOST:PORT}; all flags: docs/configuration.md."
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--agents", metavar="FILE", help="YAML list of {node, address}: run without Kubernetes")
    add_cluster_access(mode)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="0.0.0.0:8888",
        help="the verbs' HTTPS address (plain HTTP with --insecure; default 0.0.0.0:8888)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require kube-scheduler to present a certificate this CA signed",
    )
    parser.add_argument(
        "--tls-allowed-clients",
        default="kube-scheduler",
        metavar="NAMES",
        help="comma-separated client certificate names allowed to call the verbs (kube-scheduler)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP without client authentication and plaintext gRPC to agents (warns at start)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="0.0.0.0:9401",
        help="plain HTTP /metrics, /healthz and /readyz (default 0.0.0.0:9401; empty: none)",
    )
    parser.add_argument(
        "--tls-reload-interval-s",
        type=float,
        default=30.0,
        metavar="S",
        help="how often replaced --tls-* files are looked for (30)",
    )
    add_agent_tls(parser)
    parser.add_argument(
        "--stale-after-s",
        type=float,
        default=30.0,
        metavar="S",
        help="a node whose stream is gone this long is filtered out",
    )
    parser.add_argument(
        "--reserve-ttl-s",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a bind's reservation lives unsettled",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        metavar="N",
        help=f"largest request body accepted; larger is answered 413 (default {MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--body-timeout-s", type=float, default=10.0, metavar="S", help="time for a request body to arrive"
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=IDLE_TIMEOUT_S,
        metavar="S",
        help="close a connection without a complete request this long",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=int,
        default=MAX_CONNECTIONS_PER_CLIENT,
        metavar="N",
        help="open connections from one client address",
    )
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        help="with Kubernetes: elect one leader among replicas on a Lease; only it is Ready and serves",
    )
    parser.add_argument(
        "--leader-elect-lease",
        metavar="NAMESPACE/NAME",
        default=None,
        help="the Lease (default: $POD_NAMESPACE or gedge-system, /gedge-extender)",
    )
    parser.add_argument(
        "--leader-elect-identity", metavar="ID", default=None, help="this replica's name (default: hostname)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="lowest level logged, as JSON lines on stderr (default info)",
    )
    parser.set_defaults(run=run)


@dataclass
class Wiring:
    """What one serve mode puts together; `start`/`stop` run the background parts."""

    source: NodeSource
    binder: Binder
    cache: AssumeCache
    pod_reader: Callable[[str, str], dict[str, Any]] | None = None
    warn: Callable[[dict[str, Any], str, str], None] | None = None
    starts: list[Callable[[], None]] = field(default_factory=list)
    stops: list[Callable[[], None]] = field(default_factory=list)

    def start(self) -> None:
        for start in self.starts:
            start()

    def stop(self) -> None:
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception:
                log.exception("stop_failed")

    def extender(self) -> Extender:
        return Extender(
            self.source, self.binder, cache=self.cache, pod_reader=self.pod_reader, warn=self.warn
        )


TLS_FLAGS = ("tls_cert", "tls_key", "tls_client_ca", "agent_tls_cert", "agent_tls_key", "agent_tls_ca")


def check_tls_flags(args: argparse.Namespace) -> None:
    """Every TLS flag, or --insecure and none; ValueError names what is missing or in conflict."""
    given = [f"--{name.replace('_', '-')}" for name in TLS_FLAGS if getattr(args, name, None)]
    missing = [f"--{name.replace('_', '-')}" for name in TLS_FLAGS if not getattr(args, name, None)]
    if getattr(args, "insecure", False):
        if given:
            raise ValueError(f"--insecure (plaintext) and {', '.join(given)} exclude each other")
        return
    if missing:
        raise ValueError(
            f"TLS is required: missing {', '.join(missing)} (`gedge-agent certs` makes the files), "
            "or --insecure for plaintext that anyone who reaches the port can call"
        )
    if not allowed_clients(args):
        raise ValueError("--tls-allowed-clients is empty: name the client certificate(s) allowed to call")


def allowed_clients(args: argparse.Namespace) -> frozenset[str]:
    return frozenset(part.strip() for part in (args.tls_allowed_clients or "").split(",") if part.strip())


def cache_options(args: argparse.Namespace) -> CacheOptions:
    """TTL and the agents' mTLS material; all three TLS files or none."""
    given = [args.agent_tls_cert, args.agent_tls_key, args.agent_tls_ca]
    if any(given) and not all(given):
        raise ValueError("--agent-tls-cert, --agent-tls-key and --agent-tls-ca go together")
    if not all(given):
        return CacheOptions(ttl_s=args.stale_after_s)
    try:
        files = TlsFiles(
            args.agent_tls_cert,
            args.agent_tls_key,
            args.agent_tls_ca,
            on_error=lambda error: log.error("replaced agent TLS files not used; old ones stay", error=error),
        )
    except TlsConfigError as exc:
        raise TlsConfigError(name_agent_tls_flag(str(exc))) from None
    return CacheOptions(ttl_s=args.stale_after_s, tls=files.current(), tls_files=files)


def agents_wiring(args: argparse.Namespace) -> Wiring:
    from scheduler_extender.cache import ClusterCache, GrpcAgentApplier

    cluster = ClusterCache.from_agents_file(args.agents, cache_options(args), what="--agents")
    applier = GrpcAgentApplier(cluster)
    wiring = Wiring(cluster, AgentBinder(applier), AssumeCache(reserve_ttl=args.reserve_ttl_s))
    wiring.starts.append(cluster.start)
    wiring.stops.extend([cluster.stop, applier.close])
    return wiring


def kube_wiring(args: argparse.Namespace) -> Wiring:
    from kubernetes import client

    from scheduler_extender.bind.kube import KubeBinder, KubeEvents, PodAllocationWatch, read_pod
    from scheduler_extender.cache import ClusterCache

    load_cluster_config(args)
    api = client.CoreV1Api()
    events = KubeEvents(api, instance=socket.gethostname())
    cache = AssumeCache(reserve_ttl=args.reserve_ttl_s)
    cluster = ClusterCache.from_kubernetes(api, options=cache_options(args))
    watch = PodAllocationWatch(
        api, cache, on_bad_annotation=lambda pod, message: events.warn(pod, "InvalidAllocation", message)
    )
    wiring = Wiring(
        cluster,
        KubeBinder(api),
        cache,
        pod_reader=lambda namespace, name: read_pod(api, namespace, name),
        warn=events.warn,
    )
    wiring.starts.extend([cluster.start, watch.start])
    wiring.stops.extend([cluster.stop, watch.stop])
    return wiring


async def serve(wiring: Wiring, host: str, port: int, args: argparse.Namespace) -> int:
    reloading = None
    if args.insecure:
        log.warning(
            "plain HTTP and plaintext gRPC (--insecure): anyone who reaches the port can call bind",
            listen=args.listen,
        )
    else:
        reloading = ReloadingSslContext(
            args.tls_cert,
            args.tls_key,
            args.tls_client_ca,
            on_error=lambda error: log.error("replaced TLS files not used; old ones stay", error=error),
        )
    registry = getattr(getattr(wiring.source, "metrics", None), "registry", None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        loop.call_soon_threadsafe(stop.set)

    leadership = leader_election(args, on_lost)
    app = build_app(
        wiring.extender(),
        max_body=args.max_body_bytes,
        body_timeout_s=args.body_timeout_s,
        registry=registry,
        leadership=leadership,
        allowed_clients=frozenset() if args.insecure else allowed_clients(args),
    )
    try:
        runner, bound = await start_server(
            app,
            host,
            port,
            reloading.context if reloading else None,
            idle_timeout_s=args.idle_timeout_s,
            max_connections_per_client=args.max_connections_per_client,
        )
    except OSError as exc:
        raise OSError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    log.info("serving", listen=f"{host}:{bound}", https=reloading is not None)
    runners = [runner]
    if args.metrics_listen:
        metrics_host, metrics_port = parse_listen(args.metrics_listen, "--metrics-listen")
        metrics_app = build_metrics_app(app[METRICS_KEY].registry, leadership)
        try:
            metrics_runner, metrics_bound = await start_server(metrics_app, metrics_host, metrics_port)
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"--metrics-listen {args.metrics_listen}: {exc.strerror or exc}") from None
        runners.append(metrics_runner)
        log.info("metrics serving", listen=f"{metrics_host}:{metrics_bound}")
    tune_gc()
    tasks = [loop.create_task(_refreeze_gc())]
    if reloading is not None:
        tasks.append(loop.create_task(_reload_tls(reloading, args.tls_reload_interval_s)))
    if isinstance(leadership, LeaseElection):
        leadership.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", lost_lease=lost)
    for task in tasks:
        task.cancel()
    for each in reversed(runners):
        await each.cleanup()
    return 1 if lost else 0


@dataclass(frozen=True)
class LeaderSettings:
    """Where and under which name this replica takes part in the election."""

    namespace: str
    name: str
    identity: str


def leader_settings(args: argparse.Namespace) -> LeaderSettings | None:
    """The --leader-elect-* flags, checked at start before anything is served or dialled; None without
    --leader-elect. ValueError names the flag at fault."""
    if not args.leader_elect:
        for flag, value in (
            ("--leader-elect-lease", args.leader_elect_lease),
            ("--leader-elect-identity", args.leader_elect_identity),
        ):
            if value is not None:
                raise ValueError(f"{flag} is given without --leader-elect")
        return None
    if args.agents:
        raise ValueError("--leader-elect needs Kubernetes (--kubeconfig or --in-cluster), not --agents")
    lease = args.leader_elect_lease
    if lease is None:
        lease = f"{os.environ.get('POD_NAMESPACE') or 'gedge-system'}/gedge-extender"
    parts = lease.split("/")
    if len(parts) != 2 or not DNS_LABEL.fullmatch(parts[0]) or not DNS_SUBDOMAIN.fullmatch(parts[1]):
        where = (
            "--leader-elect-lease"
            if args.leader_elect_lease is not None
            else "--leader-elect ($POD_NAMESPACE)"
        )
        raise ValueError(f"{where} {lease!r} is not NAMESPACE/NAME (a DNS-1123 namespace and name)")
    identity = args.leader_elect_identity
    if identity is None:
        identity = socket.gethostname()
        where = "--leader-elect (no --leader-elect-identity: the hostname)"
    else:
        where = "--leader-elect-identity"
    if not identity.strip() or identity != identity.strip() or "$(" in identity or len(identity) > 253:
        raise ValueError(
            f"{where} {identity!r} is not a replica name (non-empty, no surrounding blanks, no unexpanded "
            "$(VAR), at most 253 characters)"
        )
    return LeaderSettings(parts[0], parts[1], identity)


def leader_election(args: argparse.Namespace, on_lost: Callable[[], None]) -> Leadership:
    """The Lease election when --leader-elect (Kubernetes only), else always the leader."""
    settings = leader_settings(args)
    if settings is None:
        return AlwaysLeader()
    return LeaseElection(settings.name, settings.namespace, settings.identity, on_lost=on_lost)


async def _reload_tls(reloading: ReloadingSslContext, period_s: float) -> None:
    """Pick up replaced certificate files (cert-manager renews them in place) without a restart."""
    while True:
        await asyncio.sleep(period_s)
        try:
            if reloading.refresh():
                log.info("TLS files reloaded", generation=reloading.files.generation)
        except (OSError, ssl.SSLError) as exc:
            log.error("replaced TLS files not used; the old ones stay", error=str(exc))


async def _refreeze_gc(period_s: float = 300.0) -> None:
    """Node reports arriving after start join the frozen generation too (see tune_gc)."""
    while True:
        await asyncio.sleep(period_s)
        gc.freeze()


POSITIVE_LIMITS = (
    "max_body_bytes",
    "body_timeout_s",
    "idle_timeout_s",
    "stale_after_s",
    "reserve_ttl_s",
    "max_connections_per_client",
    "tls_reload_interval_s",
)


def check_limits(args: argparse.Namespace) -> None:
    """Every size, time and count flag must be positive and finite (inf, 1e309: a bound that never
    bounds); ValueError names the first that is not."""
    for name in POSITIVE_LIMITS:
        value = getattr(args, name)
        if not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be finite, got {value}")


def check_server_tls(args: argparse.Namespace) -> None:
    """Load --tls-cert/--tls-key/--tls-client-ca once before anything connects, each read only up to
    MAX_PEM_BYTES first (OpenSSL would read any length); ValueError names the flag."""
    if args.insecure:
        return
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        try:
            read_bounded(path, what=flag, limit=MAX_PEM_BYTES)
        except FileLoadError as exc:
            raise ValueError(str(exc)) from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"--tls-cert {args.tls_cert} / --tls-key {args.tls_key}: not a certificate and its key: {exc}"
        ) from exc
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(args.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-client-ca {args.tls_client_ca}: not a PEM CA certificate: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        for flag in ("--agents", "--kubeconfig"):
            if getattr(args, flag[2:]) == "":
                raise ValueError(f"{flag} is empty: name the file")
        check_tls_flags(args)
        check_limits(args)
        check_server_tls(args)
        leader_settings(args)
        host, port = parse_listen(args.listen, "--listen")
        if args.metrics_listen:
            parse_listen(args.metrics_listen, "--metrics-listen")
        wiring = agents_wiring(args) if args.agents else kube_wiring(args)
    except (ValueError, OSError, TlsConfigError) as exc:
        log.error("cannot start", error=str(exc))
        return 2
    try:
        wiring.start()
        # uvloop: the verbs' HTTP handling costs about a tenth less CPU than on asyncio's own loop.
        return uvloop.run(serve(wiring, host, port, args))
    except (ValueError, OSError) as exc:
        log.error("cannot start", error=str(exc))
        return 1
    finally:
        wiring.stop()
