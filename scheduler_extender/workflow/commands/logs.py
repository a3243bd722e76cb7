"""`gedge-flow logs NAME STEP`: the log of a step's pod, its last attempt unless --attempt says which
(a serve step: its newest pod)."""

from __future__ import annotations

import argparse
import sys

from scheduler_extender.workflow.commands.common import add_workflow_command, connect, fail, workflow_failed
from scheduler_extender.workflow.kube import ApiError
from scheduler_extender.workflow.serve import LABEL_SERVE
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_workflow
from scheduler_extender.workflow.status import StatusError, status_from_dict

EPILOG = """examples:
  gedge-flow logs resnet-edge train -n ml
  gedge-flow logs resnet-edge train -n ml --attempt 0     # the first try of a retried step
"""


def register(parser: argparse.ArgumentParser) -> None:
    add_workflow_command(parser, EPILOG, run)
    parser.add_argument("step", help="task name")
    parser.add_argument("--attempt", type=int, help="attempt number (default: the last)")


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    try:
        obj = api.get_workflow(args.namespace, args.name)
        status = status_from_dict(obj.get("status"))
    except ApiError as exc:
        return workflow_failed(args, exc.message)
    except StatusError as exc:
        return workflow_failed(args, exc)
    if args.step not in status.tasks:
        known = ", ".join(sorted(status.tasks)) or "none yet"
        return fail(f"workflow {args.name} has no step {args.step!r} with a status (steps: {known})")
    attempts = status.tasks[args.step].attempts
    if not attempts:
        return fail(
            f"step {args.step} never ran: {status.tasks[args.step].phase} {status.tasks[args.step].message}"
        )
    chosen = (
        attempts[-1]
        if args.attempt is None
        else next((a for a in attempts if a.number == args.attempt), None)
    )
    if chosen is None:
        return fail(f"step {args.step} has attempts {[a.number for a in attempts]}, not {args.attempt}")
    pod = chosen.pod_name
    try:
        task = parse_workflow(obj).spec.task(args.step)
    except (WorkflowSpecError, KeyError):
        task = None
    if task is not None and task.serve is not None:
        # a serve step's attempt is its Deployment: show its newest pod
        try:
            pods, _ = api.list_pods(args.namespace, f"{LABEL_SERVE}={task.serve.name}")
        except ApiError as exc:
            return fail(f"serve {task.serve.name}: {exc.message}")
        if not pods:
            return fail(f"serve {task.serve.name} has no pods")
        pod = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")["metadata"]["name"]
    try:
        text = api.read_pod_log(args.namespace, pod, "main")
    except ApiError as exc:
        return fail(f"pod {pod}: {exc.message}")
    sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0
