"""The `--kubeconfig | --in-cluster` choice of the extender's cluster commands, and loading it."""

from __future__ import annotations

import argparse


def add_cluster_access(mode: argparse._MutuallyExclusiveGroup) -> None:
    """`--kubeconfig FILE` and `--in-cluster` in `mode`, a required mutually exclusive group."""
    mode.add_argument("--kubeconfig", metavar="FILE", help="talk to the cluster this kubeconfig names")
    mode.add_argument("--in-cluster", action="store_true", help="use the pod's service account")


def load_cluster_config(args: argparse.Namespace) -> None:
    """Point the kubernetes client at the pod's service account or at `args.kubeconfig`."""
    from kubernetes import config

    if args.in_cluster:
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=args.kubeconfig)
