"""`gedge-flow controller`: drive every unfinished Workflow of a namespace, one thread per workflow."""

from __future__ import annotations

import argparse
import signal
import threading

import structlog

from scheduler_extender.workflow.catalog import CatalogError
from scheduler_extender.workflow.commands.common import (
    add_catalog_options,
    add_cluster_options,
    configure_logging,
    connect,
    fail,
    load_catalog,
)
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController
from scheduler_extender.workflow.kube import ApiError, WorkflowApi
from scheduler_extender.workflow.metrics import WorkflowMetrics
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER

log = structlog.get_logger("gedge.workflow")

EPILOG = """examples:
  gedge-flow controller -n ml --catalog-configmap gedge-system/gedge-runtime-catalog
  gedge-flow controller -n ml --catalog deploy/runtime-catalog/runtime-catalog.yaml --poll 5
  gedge-flow controller -n ml --metrics-listen 0.0.0.0:9402   # Prometheus /metrics
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
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(True)
    api = connect(args)
    try:
        catalog = load_catalog(args, api)
    except CatalogError as exc:
        return fail(str(exc))
    controller = WorkflowController(
        api, catalog=catalog, config=ControllerConfig(scheduler_name=args.scheduler_name)
    )
    metrics = WorkflowMetrics()
    if args.metrics_listen:
        from prometheus_client import start_http_server

        host, _, port = args.metrics_listen.rpartition(":")
        if not port.isdigit():
            return fail(f"--metrics-listen {args.metrics_listen!r} is not HOST:PORT")
        try:
            start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=metrics.registry)
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
            thread.start()
        stop.wait(poll)
    for thread in drivers.values():
        thread.join(timeout=5)


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
