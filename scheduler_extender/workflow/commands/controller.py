"""`gedge-flow controller`: drive every unfinished Workflow of a namespace, one thread per workflow."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import UTC, datetime

import structlog

from gedge_common.listen import ListenError, parse_listen
from scheduler_extender.workflow.catalog import CatalogError
from scheduler_extender.workflow.commands.common import (
    add_catalog_options,
    add_cluster_options,
    add_log_options,
    configure_logging,
    connect,
    fail,
    load_catalog,
)
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController, sweep_expired_serves
from scheduler_extender.workflow.kube import ApiError, WorkflowApi
from scheduler_extender.workflow.metrics import WorkflowMetrics
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER

log = structlog.get_logger("gedge.workflow")

EPILOG = """examples:
  gedge-flow controller -n ml --catalog-configmap gedge-system/gedge-runtime-catalog
  gedge-flow controller -n ml --catalog deploy/runtime-catalog/runtime-catalog.yaml --poll 5
  gedge-flow controller -n ml --metrics-listen 0.0.0.0:9402   # Prometheus /metrics

Serve tasks whose ttl ran out are deleted on each poll.
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER, help="scheduler for task pods")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between looks for new workflows")
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default="",
        help="serve Prometheus /metrics here (default: off)",
    )
    add_cluster_options(parser)
    add_catalog_options(parser)
    add_log_options(parser, "info")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    log.info(
        "workflow controller starting",
        namespace=args.namespace,
        scheduler=args.scheduler_name,
        catalog=args.catalog or args.catalog_configmap or "none",
        poll_s=args.poll,
        metrics=args.metrics_listen or "off",
    )
    api = connect(args)
    try:
        catalog = load_catalog(args, api)
    except CatalogError as exc:
        log.error("runtime catalog unusable", error=str(exc))
        return fail(str(exc))
    if catalog is not None:
        log.info("runtime catalog loaded", components=len(catalog.components))
    controller = WorkflowController(
        api, catalog=catalog, config=ControllerConfig(scheduler_name=args.scheduler_name)
    )
    metrics = WorkflowMetrics()
    if args.metrics_listen:
        from prometheus_client import start_http_server

        try:
            host, port = parse_listen(args.metrics_listen, "--metrics-listen")
        except ListenError as exc:
            return fail(str(exc))
        try:
            start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            return fail(f"--metrics-listen {args.metrics_listen}: {exc}")
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _supervise(api, controller, args.namespace, args.poll, stop, metrics)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


def _supervise(
    api: WorkflowApi,
    controller: WorkflowController,
    namespace: str,
    poll: float,
    stop: threading.Event,
    metrics: WorkflowMetrics,
) -> None:
    """One driver thread per unfinished workflow; a driver that died is started again on the next poll."""
    drivers: dict[str, threading.Thread] = {}
    while not stop.is_set():
        try:
            workflows = api.list_workflows(namespace)
        except ApiError as exc:
            log.warning("listing workflows failed", error=exc.message)
            workflows = []
        try:
            sweep_expired_serves(api, namespace, datetime.now(UTC))
        except ApiError as exc:
            log.warning("sweeping expired serves failed", error=exc.message)
        for obj in workflows:
            name = obj["metadata"]["name"]
            phase = (obj.get("status") or {}).get("phase")
            running = drivers.get(name)
            if phase in ("Succeeded", "Failed", "Errored") or (running is not None and running.is_alive()):
                continue
            thread = threading.Thread(
                target=_drive,
                args=(controller, namespace, name, stop, metrics),
                name=f"workflow-{name}",
                daemon=True,
            )
            drivers[name] = thread
            log.info("driving workflow", workflow=f"{namespace}/{name}", phase=phase or "new")
            thread.start()
        stop.wait(poll)
    for thread in drivers.values():
        thread.join(timeout=5)
    log.info("workflow controller stopped", namespace=namespace)


def _drive(
    controller: WorkflowController,
    namespace: str,
    name: str,
    stop: threading.Event,
    metrics: WorkflowMetrics,
) -> None:
    try:
        status = controller.run(namespace, name, stop=stop, on_update=metrics.observe)
        log.info("workflow done", workflow=f"{namespace}/{name}", phase=status.phase)
    except Exception as exc:
        log.error(
            "workflow driver failed; retried on the next poll", workflow=f"{namespace}/{name}", error=str(exc)
        )
