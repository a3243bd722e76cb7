"""Options the cluster-facing gedge-flow commands share: where the API is, which namespace, which catalog."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from gedge_common import cli as cli_support
from scheduler_extender.commands.cluster_access import NoCluster, unreachable
from scheduler_extender.workflow.catalog import (
    Catalog,
    CatalogError,
    load_catalog_configmap,
    load_catalog_file,
)
from scheduler_extender.workflow.kube import ApiError, KubernetesWorkflowApi, WorkflowApi


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")


def add_workflow_command(
    parser: argparse.ArgumentParser, epilog: str, run: Callable[[argparse.Namespace], int]
) -> None:
    """Register a command about one workflow (get, delete, logs): its epilog, the workflow NAME, the
    cluster options, and `run` behind needs_cluster. The command adds its own arguments after NAME."""
    parser.epilog = epilog
    parser.add_argument("name", help="workflow name")
    add_cluster_options(parser)
    parser.set_defaults(run=needs_cluster(run))


def workflow_failed(args: argparse.Namespace, problem: object) -> int:
    """`gedge-flow: workflow NAMESPACE/NAME: problem` on stderr; returns the exit code 2."""
    return fail(f"workflow {args.namespace}/{args.name}: {problem}")


def add_catalog_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--catalog", metavar="FILE", help="runtime catalog: a catalog YAML or a ConfigMap manifest"
    )
    group.add_argument(
        "--catalog-configmap",
        metavar="NAMESPACE/NAME",
        help="runtime catalog from a ConfigMap in the cluster",
    )
    parser.add_argument(
        "--catalog-key", default="catalog.yaml", help="the ConfigMap data key (default catalog.yaml)"
    )


def connect(args: argparse.Namespace) -> WorkflowApi:
    """The cluster's API; NoCluster when no kubeconfig or service account loads."""
    return KubernetesWorkflowApi.from_kubeconfig(args.kubeconfig, args.context)


def needs_cluster(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's `run`: no cluster config -> `gedge-flow CMD: no cluster: why`, exit 2;
    an API server that cannot be reached -> the same line, exit 1."""
    command = run.__module__.rsplit(".", 1)[-1]

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        # urllib3 warns once per retry of a refused connection; the one line below says it all
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        try:
            return run(args)
        except NoCluster as exc:
            print(f"gedge-flow {command}: no cluster: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            lost = unreachable(exc)
            if lost is None:
                raise
            print(f"gedge-flow {command}: no cluster: {lost}", file=sys.stderr)
            return 1

    return wrapped


def load_catalog(args: argparse.Namespace, api: WorkflowApi | None) -> Catalog | None:
    if args.catalog:
        return load_catalog_file(args.catalog, key=args.catalog_key)
    if args.catalog_configmap:
        namespace, _, name = args.catalog_configmap.partition("/")
        if not name:
            raise CatalogError(f"--catalog-configmap {args.catalog_configmap!r}: expected NAMESPACE/NAME")
        if api is None:
            raise CatalogError("--catalog-configmap needs the cluster; use --catalog FILE with --dry-run")
        try:
            return load_catalog_configmap(api.get_config_map(namespace, name), args.catalog_key)
        except ApiError as exc:
            raise CatalogError(f"configmap {args.catalog_configmap}: {exc.message}") from None
    return None


def add_log_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=("debug", "info", "warning", "error"),
        help=f"JSON log lines on stderr from this level up (default {default})",
    )


def configure_logging(level: str) -> None:
    """The one structlog JSON setup every gedge-accel command uses (level field, UTC time)."""
    cli_support.configure_logging(level, cache=False)


def fail(message: str) -> int:
    print(f"gedge-flow: {message}", file=sys.stderr)
    return 2
