"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-scheduler, kube-controller-manager.

The binaries come from controlplane/build.sh (pinned, cached outside the
repository). Everything a run needs is made fresh under one work directory:
a CA, server and client certificates, the service-account signing key, etcd's
data directory, kubeconfigs and logs. Nothing listens beyond 127.0.0.1.

Run it by hand to poke at a cluster:

    .venv/bin/python -m tests.e2e.control_plane   # prints a kubeconfig path, Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.e2e.pki import CertificateAuthority, KeyPair, service_account_key
from tests.e2e.processes import HarnessError, ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "controlplane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
KUBERNETES_VERSION = "v1.37.2"
"""The release controlplane/kube/go.mod pins (and deploy/'s image tags follow)."""
CONTROLLERS = (
    "daemonset-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
)
"""What kube-controller-manager runs: workloads only. No node lifecycle controller: the stand-in
nodes never renew a Lease and must not be tainted unreachable."""
POD_CONTROLLERS = (
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "endpointslice-controller",
)
"""What a plane serving pods (`pod_network`) runs besides: each namespace's `default` ServiceAccount
and `kube-root-ca.crt` (the token volume's CA), and EndpointSlices for kube-proxy."""
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
READY_TIMEOUT = 120.0
PORT_ATTEMPTS = 3


def binary_dir() -> Path:
    """Where the pinned binaries are: $GEDGE_E2E_BIN_DIR, else build.sh's cache directory for the pins."""
    override = os.environ.get("GEDGE_E2E_BIN_DIR")
    if override:
        return Path(override)
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True, timeout=60
    )
    return Path(result.stdout.strip())


def missing_binaries(directory: Path) -> list[str]:
    return [name for name in BINARIES if not os.access(directory / name, os.X_OK)]


def kubeconfig_text(server: str, ca: Path, credentials: KeyPair | str, name: str) -> str:
    """A kubeconfig for `server` as `name`, by client certificate (KeyPair) or bearer token (str)."""
    if isinstance(credentials, KeyPair):
        user = {"client-certificate": str(credentials.cert), "client-key": str(credentials.key)}
    else:
        user = {"token": credentials}
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "gedge-e2e", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": "gedge-e2e", "user": name}}],
            "current-context": name,
        },
        sort_keys=False,
    )


class ControlPlane:
    """etcd + kube-apiserver (+ kube-schedulers started with `start_scheduler`) under `workdir`.

    With `node_ip` (a real node's InternalIP) the plane serves pods as a cluster does: kube-apiserver
    listens on every address and advertises `node_ip` (the `kubernetes` Service's endpoint, which
    in-cluster clients reach through kube-proxy), the ServiceAccount admission plugin gives pods
    their token volumes, and kube-controller-manager also runs POD_CONTROLLERS. Without it,
    everything stays on loopback and pods get no token (the stand-in tests create pods right after
    their namespace, before any `default` ServiceAccount could exist).
    """

    def __init__(self, bin_dir: Path, workdir: Path, node_ip: str | None = None) -> None:
        missing = missing_binaries(bin_dir)
        if missing:
            raise HarnessError(
                f"control-plane binaries {missing} not in {bin_dir}: run `make e2e-binaries` "
                f"(tests/e2e/controlplane/build.sh)"
            )
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.node_ip = node_ip
        self.pki_dir = workdir / "pki"
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.etcd: ManagedProcess | None = None
        self.apiserver: ManagedProcess | None = None
        self.schedulers: list[ManagedProcess] = []
        self.controller_manager: ManagedProcess | None = None
        self.apiserver_port = 0
        self.ca: CertificateAuthority | None = None
        self.admin: KeyPair | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        """Make the PKI, start etcd then kube-apiserver, wait for /readyz."""
        try:
            self._make_pki()
            self._start_etcd()
            try:
                self._start_apiserver()
            except HarnessError as exc:
                if self.etcd is not None and not self.etcd.running:
                    raise self.etcd.failure("died while kube-apiserver was starting") from exc
                raise
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in (self.controller_manager, *self.schedulers, self.apiserver, self.etcd):
            if process is not None:
                process.stop()

    def _make_pki(self) -> None:
        ca = CertificateAuthority(self.pki_dir)
        self.ca = ca
        self.etcd_server = ca.issue("etcd", ips=("127.0.0.1",), dns=("localhost",), server=True)
        self.etcd_client = ca.issue("kube-apiserver-etcd-client", client=True)
        self.apiserver_serving = ca.issue(
            "kube-apiserver",
            ips=("127.0.0.1", SERVICE_IP, *([self.node_ip] if self.node_ip else [])),
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server=True,
        )
        self.admin = ca.issue("gedge-e2e-admin", organizations=("system:masters",), client=True)
        self.scheduler_client = ca.issue("system:kube-scheduler", client=True)
        self.scheduler_serving = ca.issue("kube-scheduler", ips=("127.0.0.1",), server=True)
        self.controller_manager_client = ca.issue("system:kube-controller-manager", client=True)
        self.controller_manager_serving = ca.issue("kube-controller-manager", ips=("127.0.0.1",), server=True)
        self.kubelet_client = ca.issue("kube-apiserver-kubelet-client", client=True)
        self.service_account = service_account_key(self.pki_dir)

    def _start_on_free_ports(
        self, start: Callable[[int], ManagedProcess], ready: Callable[[], bool], what: str
    ) -> None:
        """Start a process on ports picked now; if another process took one meanwhile, pick again.

        Free ports are only free when picked: on a machine where other suites
        bind ports too, a port can be gone by the time the process binds it.
        """
        for attempt in range(PORT_ATTEMPTS):
            process = start(attempt)
            try:
                process.wait_until(ready, READY_TIMEOUT, what)
                return
            except HarnessError:
                if attempt + 1 == PORT_ATTEMPTS or "address already in use" not in process.tail(200):
                    raise
                process.stop()

    def _start_etcd(self) -> None:
        self._start_on_free_ports(self._etcd_process, self._etcd_healthy, "answered /health")

    def _etcd_healthy(self) -> bool:
        assert self.ca is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(str(self.etcd_client.cert), str(self.etcd_client.key))
        with urllib.request.urlopen(f"{self.etcd_url}/health", context=context, timeout=5) as reply:
            return json.loads(reply.read()).get("health") == "true"

    def _etcd_process(self, attempt: int) -> ManagedProcess:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"https://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        assert self.ca is not None
        self.etcd = ManagedProcess(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=e2e",
                f"--data-dir={self.workdir / f'etcd-{attempt}'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--listen-metrics-urls=",
                f"--cert-file={self.etcd_server.cert}",
                f"--key-file={self.etcd_server.key}",
                f"--trusted-ca-file={self.ca.cert}",
                "--client-cert-auth",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--logger=zap",
            ],
            self.log_dir / "etcd.log",
        ).start()
        return self.etcd

    def _start_apiserver(self) -> None:
        assert self.ca is not None and self.admin is not None
        self._start_on_free_ports(self._apiserver_process, self._apiserver_ready, "answered /readyz")
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubeconfig.write_text(kubeconfig_text(self.server, self.ca.cert, self.admin, "gedge-e2e-admin"))
        self.scheduler_kubeconfig = self.workdir / "scheduler.kubeconfig"
        self.scheduler_kubeconfig.write_text(
            kubeconfig_text(self.server, self.ca.cert, self.scheduler_client, "system:kube-scheduler")
        )
        self.controller_manager_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self.controller_manager_kubeconfig.write_text(
            kubeconfig_text(
                self.server, self.ca.cert, self.controller_manager_client, "system:kube-controller-manager"
            )
        )

    def _apiserver_process(self, attempt: int) -> ManagedProcess:
        assert self.ca is not None
        if self.etcd is None or not self.etcd.running:
            raise HarnessError(f"etcd is not running; log {self.log_dir / 'etcd.log'}")
        self.apiserver_port = free_port()
        self.apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                *self._address_flags(),
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.apiserver_serving.cert}",
                f"--tls-private-key-file={self.apiserver_serving.key}",
                f"--client-ca-file={self.ca.cert}",
                f"--etcd-servers={self.etcd_url}",
                f"--etcd-cafile={self.ca.cert}",
                f"--etcd-certfile={self.etcd_client.cert}",
                f"--etcd-keyfile={self.etcd_client.key}",
                f"--service-account-key-file={self.service_account.cert}",
                f"--service-account-signing-key-file={self.service_account.key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # No node lifecycle controller runs to lift the not-ready taint from new nodes; and
                # unless pods run for real, no controller makes `default` service accounts.
                "--disable-admission-plugins="
                + ("TaintNodesByCondition" if self.node_ip else "ServiceAccount,TaintNodesByCondition"),
                "--allow-privileged=true",
                # Logs and exec of pods on a real kubelet (tests/e2e/real_node.py).
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={self.kubelet_client.cert}",
                f"--kubelet-client-key={self.kubelet_client.key}",
                f"--kubelet-certificate-authority={self.ca.cert}",
                "--profiling=false",
                "--v=1",
            ],
            self.log_dir / "kube-apiserver.log",
        ).start()
        return self.apiserver

    def _address_flags(self) -> list[str]:
        if self.node_ip:
            # Pods reach the API through the `kubernetes` Service: its endpoint is node_ip.
            return ["--bind-address=0.0.0.0", f"--advertise-address={self.node_ip}"]
        return [
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # 1.37 refuses a loopback advertise address while it keeps the `kubernetes`
            # Service's endpoints itself; nothing here reaches the API through that Service.
            "--endpoint-reconciler-type=none",
        ]

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def _admin_tls(self) -> ssl.SSLContext:
        assert self.ca is not None and self.admin is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        context.load_cert_chain(str(self.admin.cert), str(self.admin.key))
        return context

    def _apiserver_ready(self) -> bool:
        with urllib.request.urlopen(f"{self.server}/readyz", context=self._admin_tls(), timeout=5) as reply:
            return reply.status == 200 and reply.read().strip() == b"ok"

    # -- scheduler -------------------------------------------------------------------------------

    def start_scheduler(
        self, configuration: Mapping[str, Any], kubeconfig: Path | None = None, name: str = "kube-scheduler"
    ) -> ManagedProcess:
        """Run a kube-scheduler with `configuration` (a KubeSchedulerConfiguration) as `kubeconfig`'s user.

        The default identity is system:kube-scheduler by client certificate; only
        clientConnection.kubeconfig is replaced. Several may run at once under
        different profile names; `name` keeps their config and log files apart.
        """
        kubeconfig = kubeconfig or self.scheduler_kubeconfig
        config = dict(configuration)
        config["clientConnection"] = {
            **dict(config.get("clientConnection") or {}),
            "kubeconfig": str(kubeconfig),
        }
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        scheduler = ManagedProcess(
            name,
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--config={path}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={self.scheduler_serving.cert}",
                f"--tls-private-key-file={self.scheduler_serving.key}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--v=2",
            ],
            self.log_dir / f"{name}.log",
        ).start()
        self.schedulers.append(scheduler)
        scheduler.wait_until(lambda: self._healthz(port), READY_TIMEOUT, "answered /healthz")
        return scheduler

    def _healthz(self, port: int) -> bool:
        assert self.ca is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as reply:
            return reply.status == 200

    def stop_scheduler(self, scheduler: ManagedProcess) -> None:
        scheduler.stop()
        if scheduler in self.schedulers:
            self.schedulers.remove(scheduler)

    # -- controller manager ----------------------------------------------------------------------

    def start_controller_manager(self, controllers: tuple[str, ...] = CONTROLLERS) -> ManagedProcess:
        """Run kube-controller-manager (`controllers` only) as system:kube-controller-manager; idempotent.

        DaemonSets, Deployments and ReplicaSets get pods, owners' garbage is
        collected (and, with `node_ip`, POD_CONTROLLERS run). Each controller acts with the
        manager's own identity.
        """
        if self.controller_manager is not None and self.controller_manager.running:
            return self.controller_manager
        if self.node_ip:
            controllers = (*controllers, *POD_CONTROLLERS)
        assert self.ca is not None
        kubeconfig = self.controller_manager_kubeconfig
        port = free_port()
        self.controller_manager = ManagedProcess(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--controllers={','.join(controllers)}",
                "--leader-elect=false",
                # Serving pods, each controller acts as its own kube-system service account with
                # the stock rights (the manager's own identity may not make ReplicaSets).
                f"--use-service-account-credentials={'true' if self.node_ip else 'false'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={self.controller_manager_serving.cert}",
                f"--tls-private-key-file={self.controller_manager_serving.key}",
                f"--root-ca-file={self.ca.cert}",
                f"--service-account-private-key-file={self.service_account.key}",
                "--v=1",
            ],
            self.log_dir / "kube-controller-manager.log",
        ).start()
        self.controller_manager.wait_until(lambda: self._healthz(port), READY_TIMEOUT, "answered /healthz")
        return self.controller_manager

    def stop_controller_manager(self) -> None:
        if self.controller_manager is not None:
            self.controller_manager.stop()
            self.controller_manager = None

    # -- clients ---------------------------------------------------------------------------------

    def api_client(self) -> k8s.ApiClient:
        """A fresh `kubernetes` ApiClient as the cluster admin (system:masters)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))


@contextlib.contextmanager
def running_control_plane(workdir: Path | None = None) -> Iterator[ControlPlane]:
    """Start etcd and kube-apiserver under `workdir` (a temp dir if None) and stop them on exit."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gedge-e2e-")))
        plane = ControlPlane(binary_dir(), workdir).start()
        stack.callback(plane.stop)
        yield plane


def main() -> None:
    with running_control_plane() as plane:
        print(f"kubeconfig: {plane.kubeconfig}\nlogs: {plane.log_dir}\nCtrl-C stops it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while plane.apiserver is not None and plane.apiserver.running:
                time.sleep(1)


if __name__ == "__main__":
    main()
