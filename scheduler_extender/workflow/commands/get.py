"""`gedge-flow get NAME`: the workflow's steps as a tree with phases, durations, attempts and pods."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import yaml

from scheduler_extender.workflow.commands.common import add_cluster_options, connect, fail
from scheduler_extender.workflow.kube import ApiError
from scheduler_extender.workflow.render import render_tree
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_workflow
from scheduler_extender.workflow.status import StatusError, status_from_dict

EPILOG = """examples:
  gedge-flow get resnet-edge -n ml
  gedge-flow get resnet-edge -n ml -o yaml     # the stored status
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("name", help="workflow name")
    parser.add_argument("-o", "--output", choices=("tree", "json", "yaml"), default="tree")
    add_cluster_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    try:
        obj = api.get_workflow(args.namespace, args.name)
    except ApiError as exc:
        return fail(f"workflow {args.namespace}/{args.name}: {exc.message}")
    if args.output == "json":
        print(json.dumps(obj.get("status") or {}, indent=2, sort_keys=True))
        return 0
    if args.output == "yaml":
        print(yaml.safe_dump(obj.get("status") or {}, sort_keys=True).rstrip())
        return 0
    try:
        workflow = parse_workflow(obj)
        status = status_from_dict(obj.get("status"))
    except (WorkflowSpecError, StatusError) as exc:
        return fail(f"workflow {args.namespace}/{args.name}: {exc}")
    print(render_tree(workflow, status, datetime.now(UTC)))
    return 0
