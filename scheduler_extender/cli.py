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
  gedge-extender demo                                  # the main job on this machine, no cluster
  gedge-extender place --topology node.json --pod pod.yaml   # node.json: gedge-agent topology --json
  gedge-extender serve --agents agents.yaml --listen 127.0.0.1:8888 --insecure   # plaintext, to try
  gedge-extender serve --kubeconfig ~/.kube/config --tls-cert pki/gedge-extender.pem \\
      --tls-key pki/gedge-extender.key --tls-client-ca pki/ca.pem --agent-tls-cert pki/gedge-extender.pem \\
      --agent-tls-key pki/gedge-extender.key --agent-tls-ca pki/ca.pem
  gedge-extender csr-signer --in-cluster --ca-cert /etc/gedge/ca/tls.crt --ca-key /etc/gedge/ca/tls.key
serve and place --agents need TLS files (`gedge-agent certs` makes them) or --insecure.
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
