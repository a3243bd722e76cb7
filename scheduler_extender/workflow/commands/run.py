"""`gedge-flow run FILE`: submit a workflow and drive it here, with a progress view; or print its pods."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import yaml

from gedge_common.files import FileLoadError, load_yaml
from scheduler_extender.workflow import dag
from scheduler_extender.workflow.catalog import CatalogError
from scheduler_extender.workflow.commands.common import (
    add_catalog_options,
    add_cluster_options,
    configure_logging,
    connect,
    fail,
    load_catalog,
    needs_cluster,
)
from scheduler_extender.workflow.composer import CompositionError
from scheduler_extender.workflow.controller import ControllerConfig, WorkflowController
from scheduler_extender.workflow.kube import AlreadyExists, ApiError
from scheduler_extender.workflow.plan import planned_pods
from scheduler_extender.workflow.podspec import DEFAULT_SCHEDULER, check_runtimes
from scheduler_extender.workflow.render import progress_lines, render_tree
from scheduler_extender.workflow.spec import Workflow, WorkflowSpecError, api_object, parse_workflow

MAX_FILE_BYTES = 1 << 20

EPILOG = """examples:
  gedge-flow run pipeline.yaml --dry-run --catalog deploy/runtime-catalog/runtime-catalog.yaml
  gedge-flow run pipeline.yaml -n ml -p epochs=5 -p quantize=false \\
      --catalog-configmap gedge-system/gedge-runtime-catalog
  gedge-flow run pipeline.yaml --no-wait          # submit only; a `gedge-flow controller` drives it

Exit status: 0 when the workflow Succeeded, 1 when it Failed, 2 when it was refused.
Stopped with Ctrl-C, the workflow keeps its status; run the same command again to resume.
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("file", help="Workflow YAML (kind Workflow, apiVersion gedge.io/v1alpha1)")
    parser.add_argument(
        "-p", "--parameter", action="append", default=[], metavar="NAME=VALUE", help="override a parameter"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the pods (and serve objects) it would create, in order"
    )
    parser.add_argument("--no-wait", action="store_true", help="submit and return")
    parser.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER, help="scheduler for task pods")
    parser.add_argument("-v", "--verbose", action="store_true", help="controller logs (JSON) on stderr")
    add_cluster_options(parser)
    add_catalog_options(parser)
    parser.set_defaults(run=run)


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise WorkflowSpecError(f"-p {pair!r}: expected NAME=VALUE")
        out[name] = value
    return out


@needs_cluster
def run(args: argparse.Namespace) -> int:
    configure_logging("info" if args.verbose else "warning")
    path = Path(args.file)
    try:
        raw = load_yaml(path, limit=MAX_FILE_BYTES)
        body = api_object(raw, namespace=args.namespace, overrides=_overrides(args.parameter))
        workflow = parse_workflow(body)
    except FileLoadError as exc:
        return fail(str(exc))
    except WorkflowSpecError as exc:
        return fail(str(exc))
    api = None if args.dry_run else connect(args)
    try:
        catalog = load_catalog(args, api)
        check_runtimes(workflow, catalog)
    except (CatalogError, CompositionError) as exc:
        return fail(str(exc))
    if args.dry_run:
        pods = planned_pods(workflow, catalog, default_scheduler=args.scheduler_name)
        for index, pod in enumerate(pods, 1):
            labels = pod["metadata"]["labels"]
            print(f"# {index}/{len(pods)}: task {labels['gedge.io/task']} ({pod['kind']})")
            print(yaml.safe_dump(pod, sort_keys=False).rstrip())
            print("---" if index < len(pods) else "", end="\n" if index < len(pods) else "")
        return 0
    assert api is not None
    try:
        api.create_workflow(workflow.namespace, body)
        print(f"workflow {workflow.namespace}/{workflow.name} submitted")
    except AlreadyExists:
        print(f"workflow {workflow.namespace}/{workflow.name} exists; resuming it")
    except ApiError as exc:
        return fail(f"the API server refused workflow {workflow.name}: {exc.message}")
    if args.no_wait:
        return 0
    stop = threading.Event()
    previous: dict[str, tuple[str, str | None]] = {}

    def show(current: Workflow, status: dag.WorkflowStatus) -> None:
        nonlocal previous
        lines, previous = progress_lines(previous, status, datetime.now(UTC))
        for line in lines:
            print(line, flush=True)

    def interrupt(signum: int, frame: object) -> None:
        stop.set()

    handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        controller = WorkflowController(
            api, catalog=catalog, config=ControllerConfig(scheduler_name=args.scheduler_name)
        )
        status = controller.run(workflow.namespace, workflow.name, on_update=show, stop=stop)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print()
    print(render_tree(workflow, status, datetime.now(UTC)))
    if stop.is_set() and not status.final:
        print("stopped; the workflow keeps its status - run again to resume", file=sys.stderr)
        return 1
    return 0 if status.phase == dag.SUCCEEDED else 1
