"""`gedge-flow delete NAME`: the workflow, its pods, its serves and its workspace claim.

Kubernetes' garbage collector removes what the Workflow owns on its own; this
does it at once, and also where none runs. A serve a later run took over
belongs to that run and stays.
"""

from __future__ import annotations

import argparse
import contextlib

from scheduler_extender.workflow.commands.common import add_workflow_command, connect, fail, workflow_failed
from scheduler_extender.workflow.kube import ApiError, NotFound
from scheduler_extender.workflow.podspec import workflow_selector
from scheduler_extender.workflow.serve import SERVE_SELECTOR, owned_by, workspace_claim
from scheduler_extender.workflow.spec import WorkflowSpecError, parse_workflow

EPILOG = """examples:
  gedge-flow delete resnet-edge -n ml
"""


def register(parser: argparse.ArgumentParser) -> None:
    add_workflow_command(parser, EPILOG, run)


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    try:
        obj = api.get_workflow(args.namespace, args.name)
    except ApiError as exc:
        return workflow_failed(args, exc.message)
    uid = obj["metadata"].get("uid")
    try:
        api.delete_workflow(args.namespace, args.name)
    except NotFound:
        pass
    except ApiError as exc:
        return workflow_failed(args, exc.message)
    pods, _ = api.list_pods(args.namespace, workflow_selector(args.name))
    deleted = 0
    for pod in pods:
        if owned_by(pod, uid):
            api.delete_pod(args.namespace, pod["metadata"]["name"])
            deleted += 1
    serves = []
    try:
        for deployment in api.list_deployments(args.namespace, SERVE_SELECTOR):
            if owned_by(deployment, uid):
                name = deployment["metadata"]["name"]
                api.delete_deployment(args.namespace, name)
                api.delete_service(args.namespace, name)
                serves.append(name)
    except ApiError as exc:
        return fail(f"workflow {args.namespace}/{args.name} deleted, but its serves were not: {exc.message}")
    claim = None
    with contextlib.suppress(WorkflowSpecError):
        claim = workspace_claim(parse_workflow(obj))
    claims = 0
    if claim is not None:
        try:
            if owned_by(api.get_claim(args.namespace, claim["metadata"]["name"]), uid):
                api.delete_claim(args.namespace, claim["metadata"]["name"])
                claims = 1
        except NotFound:
            pass
        except ApiError as exc:
            return fail(f"workspace claim {claim['metadata']['name']}: {exc.message}")
    extra = f", serve(s) {', '.join(serves)}" if serves else ""
    extra += ", its workspace claim" if claims else ""
    print(f"workflow {args.namespace}/{args.name} deleted with {deleted} pod(s){extra}")
    return 0
