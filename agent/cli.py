"""`gedge-agent`: one subcommand per module in agent/commands."""

from __future__ import annotations

import sys

from gedge_common.cli import lazy_main

COMMANDS: dict[str, str] = {
    "topology": "print this node's topology and resource distance matrix (nvidia-smi topo -m layout)",
    "serve": "run the node agent: gRPC service, metrics, device plugins and appliers",
    "bench": "measure the acceleration on this node (data path, CPU pinning)",
    "certs": "make a CA and TLS certificates for agents and the extender (nodes without Kubernetes)",
    "uninstall": "give the node back: release every recorded allocation, remove checkpoint and sockets",
}

EPILOG = """examples:
  gedge-agent topology                      # this machine, nvidia-smi layout with a legend
  gedge-agent topology --json               # the full model as JSON
  gedge-agent topology --root /tmp/snapshot # an unpacked sysfs snapshot instead of /
  gedge-agent certs --dir /etc/gedge/pki edge-1 gedge-extender   # a CA, a node and an extender certificate
  gedge-agent serve --node-name edge-1 --tls-cert /etc/gedge/pki/edge-1.pem \\
      --tls-key /etc/gedge/pki/edge-1.key --tls-ca /etc/gedge/pki/ca.pem
  gedge-agent bench datapath --short
  gedge-agent uninstall --config /etc/gedge/agent.yaml   # after the agent's DaemonSet is deleted
"""


main = lazy_main(
    prog="gedge-agent",
    description="gedge-accel node agent: discovers the node's topology and applies placements.",
    epilog=EPILOG,
    package="agent.commands",
    commands=COMMANDS,
)


if __name__ == "__main__":
    sys.exit(main())
