"""`gedge-extender csr-signer`: approve and sign the agents' node certificates (signer gedge.io/agent)."""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
import threading

import structlog

from gedge_common.cli import configure_logging
from scheduler_extender.commands.cluster_access import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    NoCluster,
    add_cluster_access,
    load_cluster_config,
)

log = structlog.get_logger("gedge.extender.csr_signer")


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Approves a CertificateSigningRequest of signer gedge.io/agent when the agent's service account\n"
        "asks for the node its token is bound to (spec.extra authentication.kubernetes.io/node-name),\n"
        "denies one from that account naming another node, leaves others for an administrator, and signs\n"
        "approved requests with the CA in --ca-cert/--ca-key (read at each signing: a renewed CA is used).\n"
        "The CA certificate is published in ConfigMap --ca-configmap for the agents.\n\n"
        "examples:\n"
        "  gedge-extender csr-signer --in-cluster --ca-cert /etc/gedge/ca/tls.crt \\\n"
        "      --ca-key /etc/gedge/ca/tls.key --certificate-duration-s 86400\n"
        "  gedge-extender csr-signer --kubeconfig ~/.kube/config --ca-cert ca.pem --ca-key ca.key"
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    add_cluster_access(mode)
    parser.add_argument("--ca-cert", required=True, metavar="FILE", help="the signing CA's certificate (PEM)")
    parser.add_argument("--ca-key", required=True, metavar="FILE", help="the signing CA's private key (PEM)")
    parser.add_argument(
        "--certificate-duration-s",
        type=float,
        default=86400.0,
        metavar="S",
        help="longest validity of an issued certificate (86400; a request may ask for less)",
    )
    parser.add_argument(
        "--agent-service-account",
        default="gedge-system:gedge-agent",
        metavar="NAMESPACE:NAME",
        help="the agents' service account (gedge-system:gedge-agent)",
    )
    parser.add_argument(
        "--ca-configmap",
        default="gedge-system/gedge-ca-bundle",
        metavar="NAMESPACE/NAME",
        help="ConfigMap that gets the CA certificate as ca.crt (gedge-system/gedge-ca-bundle; '' none)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from kubernetes import client

    from gedge_model.certs import CertError, check_ca
    from scheduler_extender.csr_signer import AgentCsrSigner, CaFiles, configmap_publisher

    namespace, sep, account = args.agent_service_account.partition(":")
    if not sep or not namespace or not account:
        print(
            f"gedge-extender csr-signer: --agent-service-account {args.agent_service_account!r} "
            "is not NAMESPACE:NAME",
            file=sys.stderr,
        )
        return 2
    publish = None
    if args.ca_configmap:
        parts = args.ca_configmap.split("/")
        if len(parts) != 2 or not DNS_LABEL.fullmatch(parts[0]) or not DNS_SUBDOMAIN.fullmatch(parts[1]):
            print(
                f"gedge-extender csr-signer: --ca-configmap {args.ca_configmap!r} is not NAMESPACE/NAME "
                "(a DNS-1123 namespace and name)",
                file=sys.stderr,
            )
            return 2
        cm_namespace, cm_name = parts
    ca = CaFiles(args.ca_cert, args.ca_key)
    try:
        check_ca(*ca.read())
    except CertError as exc:
        print(
            f"gedge-extender csr-signer: --ca-cert {args.ca_cert} / --ca-key {args.ca_key}: {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        load_cluster_config(args)
    except NoCluster as exc:
        print(f"gedge-extender csr-signer: no cluster: {exc}", file=sys.stderr)
        return 2
    if args.ca_configmap:
        publish = configmap_publisher(client.CoreV1Api(), cm_namespace, cm_name)
    try:
        signer = AgentCsrSigner(
            client.CertificatesV1Api(),
            ca,
            duration=datetime.timedelta(seconds=args.certificate_duration_s),
            agent_user=f"system:serviceaccount:{namespace}:{account}",
            publish_ca=publish,
        )
    except ValueError as exc:
        print(f"gedge-extender csr-signer: --certificate-duration-s: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "CSR signer running",
        signer="gedge.io/agent",
        agent=signer.agent_user,
        duration_s=args.certificate_duration_s,
    )
    worker = threading.Thread(target=signer.run, args=(stop,), name="csr-signer", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.wait(1.0):
        pass
    log.info("CSR signer stopped")
    return 0
