"""`gedge-flow`: one subcommand per module in scheduler_extender/workflow/commands."""

from __future__ import annotations

import sys

from gedge_common.cli import lazy_main

COMMANDS: dict[str, str] = {
    "run": "submit a workflow file and drive it to its end, showing progress (or --dry-run: print its pods)",
    "lint": "validate workflow files offline (no cluster); exit 1 naming workflow, task and field",
    "get": "a workflow's steps as a tree (or DOT/SVG graph) with phases, times, attempts, pods, endpoints",
    "logs": "the log of one step's pod (its last attempt unless --attempt)",
    "delete": "delete a workflow, its pods, its serve Deployments/Services and its workspace claim",
    "controller": "run the workflow controller: drive every Workflow created in the cluster",
}

EPILOG = """examples:
  gedge-flow run deploy/crds/examples/train-pipeline.yaml --dry-run \\
      --catalog deploy/runtime-catalog/runtime-catalog.yaml
  gedge-flow run pipeline.yaml -n ml -p epochs=5 --catalog-configmap gedge-system/gedge-runtime-catalog
  gedge-flow lint deploy/crds/examples/*.yaml --catalog deploy/runtime-catalog/runtime-catalog.yaml
  gedge-flow get resnet-edge -n ml --watch
  gedge-flow get resnet-edge -n ml -o svg > resnet-edge.svg
  gedge-flow logs resnet-edge train -n ml
  gedge-flow delete resnet-edge -n ml
  gedge-flow controller --namespace ml --catalog-configmap gedge-system/gedge-runtime-catalog
"""


main = lazy_main(
    prog="gedge-flow",
    description="gedge-accel workflows: DAG steps as pods on the topology-aware scheduler, "
    "each with its runtime composed from a catalog.",
    epilog=EPILOG,
    package="scheduler_extender.workflow.commands",
    commands=COMMANDS,
)


if __name__ == "__main__":
    sys.exit(main())
