"""`gedge-agent certs`: a CA and certificates for agents and extenders run without Kubernetes."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path

from gedge_model.certs import (
    CA_FILES,
    LEAF_DAYS,
    MAX_DAYS,
    CertError,
    check_days,
    check_dns_name,
    issue_files,
)

DEFAULT_DIR = "/etc/gedge/pki"


def register(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Makes DIR/ca.pem and DIR/ca.key first if they are not there, then NAME.pem and NAME.key\n"
        "for each NAME (the certificate's common name and DNS name; keys are written 0600).\n"
        "The systemd units read DIR/<hostname>.pem on a node and DIR/gedge-extender.pem for the extender.\n\n"
        "examples:\n"
        "  gedge-agent certs                      # this host's node certificate in /etc/gedge/pki\n"
        "  gedge-agent certs --dir ./pki edge-1 edge-2 gedge-extender kube-scheduler\n"
        "  gedge-agent certs --dir ./pki edge-1 --ip 10.0.0.11   # also valid for an IP address\n"
        "Copy ca.pem and a node's NAME.pem/NAME.key to that node; ca.key stays where it was made."
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="certificate names: node names, gedge-extender, kube-scheduler (default: this host's name)",
    )
    parser.add_argument(
        "--dir", default=DEFAULT_DIR, metavar="DIR", help=f"the files' folder ({DEFAULT_DIR})"
    )
    parser.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS name (repeat)")
    parser.add_argument("--ip", action="append", default=[], metavar="ADDR", help="extra IP address (repeat)")
    parser.add_argument(
        "--days", type=int, default=LEAF_DAYS, metavar="N", help=f"validity, 1-{MAX_DAYS} ({LEAF_DAYS})"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = args.names or [socket.gethostname()]
    try:
        try:
            check_days(args.days)
        except CertError as exc:
            raise CertError(f"--days: {exc}") from None
        for name in names:
            check_dns_name(name, "NAME")
            if any(f"{name.lower()}{suffix}" in CA_FILES for suffix in (".pem", ".key")):
                raise CertError(f"NAME {name!r} would overwrite the CA's files {' and '.join(CA_FILES)}")
        for extra in args.dns:
            check_dns_name(extra, "--dns")
        for ip in args.ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise CertError(f"--ip {ip!r} is not an IPv4 or IPv6 address") from None
        if Path(args.dir).exists() and not Path(args.dir).is_dir():
            raise CertError(f"--dir {args.dir}: not a directory")
    except CertError as exc:
        print(f"gedge-agent certs: error: {exc}", file=sys.stderr)
        return 2
    directory = Path(args.dir)
    try:
        for name in names:
            files = issue_files(directory, name, dns=args.dns, ips=args.ip, days=args.days)
            print(f"{name}: {files.cert} {files.key}")
    except CertError as exc:
        print(f"gedge-agent certs: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gedge-agent certs: {exc.filename or directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"CA: {directory / 'ca.pem'}")
    return 0
