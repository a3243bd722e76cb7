"""How the extender's commands reach the cluster and the agents: the `--kubeconfig | --in-cluster`
choice and loading it, and the `--agent-tls-*` files of the agents' mTLS."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A namespace: a DNS-1123 label (63 characters at most)."""
DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""An object name (ConfigMap, Lease): a DNS-1123 subdomain (253 characters at most)."""


MAX_KUBECONFIG_BYTES = 16 * 1024 * 1024
"""The largest kubeconfig read (with its certificates inline, one is a few kilobytes)."""


class NoCluster(ValueError):
    """No usable cluster configuration, or the API server cannot be reached; one line naming the cause."""


def add_cluster_access(mode: argparse._MutuallyExclusiveGroup) -> None:
    """`--kubeconfig FILE` and `--in-cluster` in `mode`, a required mutually exclusive group."""
    mode.add_argument("--kubeconfig", metavar="FILE", help="talk to the cluster this kubeconfig names")
    mode.add_argument("--in-cluster", action="store_true", help="use the pod's service account")


def add_agent_tls(parser: argparse.ArgumentParser) -> None:
    """`--agent-tls-cert`, `--agent-tls-key` and `--agent-tls-ca` (PEM files): the client side of the
    agents' mTLS, for the commands that call agents (serve, place)."""
    parser.add_argument("--agent-tls-cert", metavar="FILE", help="client certificate for the agents' mTLS")
    parser.add_argument("--agent-tls-key", metavar="FILE", help="its private key")
    parser.add_argument("--agent-tls-ca", metavar="FILE", help="CA that signs the agents' certificates")


def name_agent_tls_flag(message: str) -> str:
    """A TlsConfigError message about the agents' TLS files (`TLS key PATH: ...`) with the flag that
    gave the file in front of its path (`--agent-tls-key PATH: ...`)."""
    for label, flag in (
        ("TLS certificate ", "--agent-tls-cert "),
        ("TLS key ", "--agent-tls-key "),
        ("TLS CA ", "--agent-tls-ca "),
    ):
        if message.startswith(label):
            return flag + message.removeprefix(label)
    return message


def load_config(
    kubeconfig: str | None,
    *,
    in_cluster: bool = False,
    context: str | None = None,
    client_configuration: Any = None,
) -> None:
    """Load the service account (`in_cluster`) or a kubeconfig into the kubernetes client.

    Raises NoCluster naming --in-cluster, --kubeconfig FILE (None: $KUBECONFIG or
    ~/.kube/config, as the client reads them) or --context for any file, format or context fault.
    """
    import yaml
    from kubernetes import config

    from gedge_common.files import FileLoadError, load_yaml

    try:
        if kubeconfig and not in_cluster:
            # The client parses with yaml.safe_load, unbounded: a deep or huge file is refused here first.
            load_yaml(kubeconfig, what="--kubeconfig", limit=MAX_KUBECONFIG_BYTES)
        if in_cluster:
            config.load_incluster_config(client_configuration=client_configuration)
        else:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=client_configuration
            )
    except (
        config.ConfigException,
        OSError,
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        yaml.YAMLError,
    ) as exc:
        if isinstance(exc, FileLoadError):
            raise NoCluster(" ".join(str(exc).split())) from None
        if in_cluster:
            where = "--in-cluster"
        elif kubeconfig:
            where = f"--kubeconfig {kubeconfig}"
        else:
            where = f"kubeconfig {os.environ.get('KUBECONFIG') or '~/.kube/config'}"
        if context:
            where += f" --context {context}"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, TypeError | AttributeError | KeyError):
            reason = f"not a kubeconfig ({reason})"
        raise NoCluster(f"{where}: {reason}") from None


def load_cluster_config(args: argparse.Namespace) -> None:
    """Point the kubernetes client at the pod's service account or at `args.kubeconfig`; NoCluster if not."""
    load_config(args.kubeconfig, in_cluster=args.in_cluster)


def unreachable(exc: BaseException) -> NoCluster | None:
    """A urllib3 connection failure as NoCluster (one line), or None for any other exception."""
    from urllib3.exceptions import HTTPError, MaxRetryError

    if not isinstance(exc, HTTPError):
        return None
    cause = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    text = re.sub(r"<[^>]*>:\s*", "", " ".join(str(cause).split()))
    where = ""
    if isinstance(exc, MaxRetryError) and exc.pool is not None:
        where = f" {exc.pool.host}:{exc.pool.port}"
    return NoCluster(f"API server{where} unreachable: {text}")
