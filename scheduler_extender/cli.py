"""`gedge-extender`: one subcommand per module in scheduler_extender/commands."""

from __future__ import annotations

import sys

from gedge_common.cli import lazy_main

COMMANDS: dict[str, str] = {
    "serve": "run the kube-scheduler extender (filter, prioritize, bind) over the live cluster cache",
    "place": (
        "one-shot: place a pod manifest on the nodes of live agents or saved reports and print the allocation"
    ),
    "demo": "the main job here, no cluster: an agent discovers this machine, the extender places a pod",
    "csr-signer": "approve and sign the agents' node certificates (CSRs of signer gedge.io/agent)",
}

EPILOG = """examples:
  gedge-extender serve --agents agents.yaml --listen 127.0.0.1:8888
  gedge-extender serve --kubeconfig ~/.kube/config --listen 0.0.0.0:8888
  gedge-extender place --agents agents.yaml --pod pod.yaml
  gedge-extender demo
  gedge-extender csr-signer --in-cluster --ca-cert /etc/gedge/ca/tls.crt --ca-key /etc/gedge/ca/tls.key
"""


main = lazy_main(
    prog="gedge-extender",
    description="gedge-accel scheduler extender: topology-aware filter, prioritize and bind.",
    epilog=EPILOG,
    package="scheduler_extender.commands",
    commands=COMMANDS,
)


if __name__ == "__main__":
    sys.exit(main())
