"""`gedge-flow get NAME`: the workflow's steps as a tree (or a DOT/SVG graph), once or live with --watch."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import yaml

from scheduler_extender.workflow.commands.common import add_workflow_command, connect, fail, workflow_failed
from scheduler_extender.workflow.kube import ApiError, WorkflowApi
from scheduler_extender.workflow.render import render_dot, render_tree
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_workflow
from scheduler_extender.workflow.status import StatusError, status_from_dict

EPILOG = """examples:
  gedge-flow get resnet-edge -n ml
  gedge-flow get resnet-edge -n ml --watch        # redrawn as it changes, until it ends
  gedge-flow get resnet-edge -n ml -o yaml        # the stored status
  gedge-flow get resnet-edge -n ml -o dot | dot -Tpng > resnet-edge.png
  gedge-flow get resnet-edge -n ml -o svg > resnet-edge.svg   # needs Graphviz's dot on PATH
"""

FINAL_PHASES = ("Succeeded", "Failed", "Errored")
CLEAR = "\033[H\033[2J"


def register(parser: argparse.ArgumentParser) -> None:
    add_workflow_command(parser, EPILOG, run)
    parser.add_argument("-o", "--output", choices=("tree", "json", "yaml", "dot", "svg"), default="tree")
    parser.add_argument(
        "-w", "--watch", action="store_true", help="show every change until the workflow ends"
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="--watch: seconds between looks (default 1)"
    )


def view(obj: dict[str, Any], output: str, now: datetime) -> str:
    """One rendering of a Workflow object; WorkflowSpecError/StatusError/RuntimeError when it cannot be."""
    if output == "json":
        return json.dumps(obj.get("status") or {}, indent=2, sort_keys=True)
    if output == "yaml":
        return yaml.safe_dump(obj.get("status") or {}, sort_keys=True).rstrip()
    workflow = parse_workflow(obj)
    status = status_from_dict(obj.get("status"))
    if output == "tree":
        return render_tree(workflow, status, now)
    dot = render_dot(workflow, status, now)
    if output == "dot":
        return dot.rstrip()
    return to_svg(dot).rstrip()


def to_svg(dot: str) -> str:
    program = shutil.which("dot")
    if program is None:
        raise RuntimeError(
            "-o svg needs Graphviz's dot on PATH (apt install graphviz); -o dot prints the graph"
        )
    result = subprocess.run([program, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"dot -Tsvg failed: {result.stderr.strip()[:500]}")
    return result.stdout


def watch(
    api: WorkflowApi,
    namespace: str,
    name: str,
    output: str,
    interval: float,
    stop: threading.Event,
    write: Any = None,
) -> int:
    """Print the view each time the status changes (on a terminal: redraw every look) until the
    workflow ends; 0 when it Succeeded, 1 otherwise."""
    write = write or sys.stdout.write
    shown = None
    clear = output == "tree" and sys.stdout.isatty()
    while True:
        try:
            obj = api.get_workflow(namespace, name)
        except ApiError as exc:
            return fail(f"workflow {namespace}/{name}: {exc.message}")
        key = json.dumps(obj.get("status") or {}, sort_keys=True)
        if key != shown or clear:
            text = view(obj, output, datetime.now(UTC))
            write((CLEAR if clear else "") + text + "\n" + ("" if clear else "\n"))
            shown = key
        phase = (obj.get("status") or {}).get("phase")
        if phase in FINAL_PHASES:
            return 0 if phase == "Succeeded" else 1
        if stop.wait(interval):
            return 1


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    try:
        if args.watch:
            return watch(api, args.namespace, args.name, args.output, args.interval, threading.Event())
        obj = api.get_workflow(args.namespace, args.name)
        print(view(obj, args.output, datetime.now(UTC)))
    except ApiError as exc:
        return workflow_failed(args, exc.message)
    except (WorkflowSpecError, StatusError, RuntimeError) as exc:
        return workflow_failed(args, exc)
    except KeyboardInterrupt:
        return 1
    return 0
