"""`gedge-flow delete NAME`: the workflow and its pods (also where no garbage collector runs)."""

from __future__ import annotations

import argparse

from scheduler_extender.workflow.commands.common import add_cluster_options, connect, fail
from scheduler_extender.workflow.kube import ApiError, NotFound
from scheduler_extender.workflow.podspec import workflow_selector

EPILOG = """examples:
  gedge-flow delete resnet-edge -n ml
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("name", help="workflow name")
    add_cluster_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    try:
        workflow = api.get_workflow(args.namespace, args.name)
    except ApiError as exc:
        return fail(f"workflow {args.namespace}/{args.name}: {exc.message}")
    uid = workflow["metadata"].get("uid")
    try:
        api.delete_workflow(args.namespace, args.name)
    except NotFound:
        pass
    except ApiError as exc:
        return fail(f"workflow {args.namespace}/{args.name}: {exc.message}")
    pods, _ = api.list_pods(args.namespace, workflow_selector(args.name))
    deleted = 0
    for pod in pods:
        owners = pod["metadata"].get("ownerReferences") or []
        if any(o.get("uid") == uid for o in owners):
            api.delete_pod(args.namespace, pod["metadata"]["name"])
            deleted += 1
    print(f"workflow {args.namespace}/{args.name} deleted with {deleted} pod(s)")
    return 0
