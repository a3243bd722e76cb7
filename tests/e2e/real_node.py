"""A real node on this machine: containerd 2 (NRI on), CNI and a kubelet joining the e2e control plane.

- containerd, ctr and the runc shim come from node/build_containerd.sh (static,
  cached); runc and the CNI plugins (bridge, host-local, loopback) from Debian.
  Its config, root, state and sockets are private to the run; the sandbox image
  is a local pause image (tests/e2e/oci_image.py), imported and pinned.
- kubelet runs as system:node:<name> (Node authorizer) with certificates from
  the harness CA, cgroupfs driver on this machine's cgroup v1 (failCgroupV1:
  false), cpuManagerPolicy none, and serves logs to the API server over TLS.
- Some paths are fixed by kubelet or containerd (/var/lib/kubelet with its
  device-plugins directory, /var/run/nri, /run/containerd/s, /run/netns/cni-*,
  /var/log/pods): one real node per machine at a time (a lock file), and every
  host change is undone at stop: pods and shims, mounts, netns, `kubepods`
  cgroups, iptables chains, sysctls, the CNI bridge, paths that did not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from agent.apply.cgroups import remove_cgroup_tree
from tests.e2e.cluster_objects import wait_for
from tests.e2e.control_plane import ControlPlane, kubeconfig_text
from tests.e2e.oci_image import BUSYBOX_IMAGE, PAUSE_IMAGE, busybox_archive, pause_archive
from tests.e2e.processes import HarnessError, ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "node" / "build_containerd.sh"
CONTAINERD_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2", "pause")
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
NODE_LOCK = Path("/run/gedge-e2e-node.lock")
LOCK_TIMEOUT = 900.0
READY_TIMEOUT = 120.0
KUBELET_ROOT = Path("/var/lib/kubelet")
NETNS_DIR = Path("/run/netns")
DEVICE_PLUGIN_DIR = KUBELET_ROOT / "device-plugins"
NRI_SOCKET = Path("/var/run/nri/nri.sock")
CGROUP_MOUNT = Path("/sys/fs/cgroup")
BRIDGE = "gedge-e2e0"
POD_SUBNET = "10.244.250.0/24"
NAMESPACE = "k8s.io"
REAL_NODE_TAINT = "gedge.io/e2e-real-node"
"""The real node's taint: pods of the stand-in tests never land on it; real-node pods tolerate it."""
HOST_PATHS = (
    Path("/var/lib/kubelet"),
    Path("/run/nri"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/run/netns"),
)
"""Paths kubelet, containerd or CNI create at fixed places; removed at stop when they were absent before."""
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
)
"""Kernel settings kubelet, kube-proxy and the bridge plugin write; put back at stop."""
IPTABLES = ("iptables", "ip6tables")
IPTABLES_TABLES = ("filter", "nat", "mangle")


def binary_dir() -> Path:
    """build_containerd.sh's cache directory for the pins ($GEDGE_E2E_CONTAINERD_DIR overrides)."""
    override = os.environ.get("GEDGE_E2E_CONTAINERD_DIR")
    if override:
        return Path(override)
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True, timeout=60
    )
    return Path(result.stdout.strip())


def missing_parts(directory: Path) -> list[str]:
    """What a real node needs and this machine lacks (binaries, Debian packages, root)."""
    missing = [str(directory / n) for n in CONTAINERD_BINARIES if not os.access(directory / n, os.X_OK)]
    if not os.access(RUNC, os.X_OK):
        missing.append(f"{RUNC} (Debian package runc)")
    missing += [
        f"{CNI_BIN_DIR / p} (Debian package containernetworking-plugins)"
        for p in CNI_PLUGINS
        if not os.access(CNI_BIN_DIR / p, os.X_OK)
    ]
    if shutil.which("iptables") is None:
        missing.append("iptables (Debian package iptables)")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def host_ip() -> str:
    """The source address of this machine's default route: the Node's InternalIP."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "route", "get", "1.1.1.1"], check=True, capture_output=True, text=True
        ).stdout
    )
    if not routes or "prefsrc" not in routes[0]:
        raise HarnessError("no default route with a source address: cannot pick the node's InternalIP")
    return routes[0]["prefsrc"]


def _mountpoints() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            points.append(line.split()[4].replace("\\040", " "))
    return points


def unmount_below(prefix: Path) -> None:
    """Lazily unmount everything mounted at or below `prefix`, deepest first."""
    root = str(prefix).rstrip("/")
    for point in sorted(
        {p for p in _mountpoints() if p == root or p.startswith(root + "/")}, key=len, reverse=True
    ):
        subprocess.run(["umount", "--lazy", point], capture_output=True)


@dataclass
class HostState:
    """What this machine looked like before the node started, to put back at stop."""

    sysctls: dict[str, str] = field(default_factory=dict)
    chains: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    absent: list[Path] = field(default_factory=list)
    netns: set[str] = field(default_factory=set)
    kubepods_existed: bool = False
    netns_dir_mounted: bool = False
    """Whether start made /run/netns a shared mount of itself (undone at stop)."""

    @classmethod
    def record(cls) -> HostState:
        state = cls()
        for name in SYSCTLS:
            with contextlib.suppress(OSError):
                state.sysctls[name] = (Path("/proc/sys") / name).read_text().strip()
        for tool in IPTABLES:
            for table in IPTABLES_TABLES:
                state.chains[(tool, table)] = _chains(tool, table)
        state.absent = [p for p in HOST_PATHS if not p.exists()]
        state.netns = set(glob.glob("/run/netns/cni-*"))
        state.kubepods_existed = any((d / "kubepods").exists() for d in CGROUP_MOUNT.iterdir())
        return state

    def share_netns_dir(self) -> None:
        """Make /run/netns a shared mount of itself, as `ip netns add` does, when it is not a mount.

        A hostPath volume of /run/netns with HostToContainer propagation (the agent's) needs it to be
        on a shared or slave mount; systemd makes / shared, so on such hosts it always is. Without
        systemd as PID 1 (/ private, as here) the runtime refuses the container until /run/netns is
        a mount of its own.
        """
        if str(NETNS_DIR) in _mountpoints():
            return
        NETNS_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(NETNS_DIR), str(NETNS_DIR)], check=True, capture_output=True)
        subprocess.run(["mount", "--make-shared", str(NETNS_DIR)], check=True, capture_output=True)
        self.netns_dir_mounted = True

    def restore(self) -> list[str]:
        """Undo; returns what could not be undone (empty when all went back)."""
        problems: list[str] = []
        for netns in set(glob.glob("/run/netns/cni-*")) - self.netns:
            unmount_below(Path(netns))
            with contextlib.suppress(OSError):
                os.unlink(netns)
        if self.netns_dir_mounted:
            subprocess.run(["umount", "--lazy", str(NETNS_DIR)], capture_output=True)
            if str(NETNS_DIR) in _mountpoints():
                problems.append(f"{NETNS_DIR} still mounted")
        if not self.kubepods_existed:
            for hierarchy in CGROUP_MOUNT.iterdir():
                top = hierarchy / "kubepods"
                remove_cgroup_tree(top)
                if top.exists():
                    problems.append(f"cgroup {top} still there")
        for (tool, table), before in self.chains.items():
            problems += _drop_new_chains(tool, table, before)
        for name, value in self.sysctls.items():
            path = Path("/proc/sys") / name
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value)
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        for path in self.absent:
            unmount_below(path)
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                problems.append(f"{path} still there")
        return problems


def _chains(tool: str, table: str) -> set[str]:
    result = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("-N ")}


def _drop_new_chains(tool: str, table: str, before: set[str]) -> list[str]:
    new = _chains(tool, table) - before
    if not new:
        return []
    rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout.splitlines()
    for rule in rules:
        words = shlex.split(rule)  # comments are quoted and hold spaces
        if words[:1] == ["-A"] and words[1] not in new and any(w in new for w in words[2:]):
            subprocess.run([tool, "-t", table, "-D", *words[1:]], capture_output=True)
    for chain in new:
        subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
    problems = []
    for chain in new:
        if subprocess.run([tool, "-t", table, "-X", chain], capture_output=True).returncode:
            problems.append(f"{tool} -t {table} chain {chain} not removed")
    return problems


@contextlib.contextmanager
def node_lock(timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """One real node per machine: kubelet's device-plugin directory and NRI's socket are fixed."""
    with NODE_LOCK.open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"another real e2e node holds {NODE_LOCK} for over {timeout:.0f}s"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RealNode:
    """containerd + kubelet named `name` on this machine, registered with `plane`."""

    def __init__(self, plane: ControlPlane, workdir: Path, name: str = "gedge-node") -> None:
        self.plane = plane
        self.name = name
        self.workdir = workdir
        self.bin_dir = binary_dir()
        missing = missing_parts(self.bin_dir)
        if missing:
            raise HarnessError(f"a real node needs {missing}: run `make e2e-binaries` and `make system-deps`")
        self.ip = host_ip()
        self.state_dir = Path(f"/run/gedge-e2e-{os.getpid()}")
        self.socket = self.state_dir / "containerd.sock"
        self.containerd: ManagedProcess | None = None
        self.kubelet: ManagedProcess | None = None
        self.kubelet_port = 0
        self.host: HostState | None = None
        self._lock: contextlib.ExitStack | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> RealNode:
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(node_lock())
        try:
            self.host = HostState.record()
            self.host.share_netns_dir()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._write_cni()
            self.start_containerd()
            self.import_image(pause_archive(self.workdir / "pause.tar", self.bin_dir / "pause"))
            self.import_image(busybox_archive(self.workdir / "busybox.tar"))
            self._write_kubelet_files()
            self.start_kubelet()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[str]:
        """Stop pods, kubelet and containerd; undo the host changes. Returns what was left behind."""
        problems: list[str] = []
        try:
            if self.kubelet is not None:
                self.kubelet.stop()
            if self.containerd is not None and self.containerd.running:
                self._remove_all_containers()
            if self.containerd is not None:
                self.containerd.stop()
            self._kill_shims()
            unmount_below(self.workdir)
            unmount_below(self.state_dir)
            if self.host is not None:
                problems += self.host.restore()
            shutil.rmtree(self.state_dir, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None
        return problems

    # -- containerd ------------------------------------------------------------------------------

    def _write_cni(self) -> None:
        self.cni_conf_dir = self.workdir / "net.d"
        self.cni_conf_dir.mkdir(exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "gedge-e2e",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    # Pods reach Service addresses (kube-proxy) and the node through the bridge.
                    "isDefaultGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "dataDir": str(self.workdir / "ipam"),
                    },
                },
                {"type": "loopback"},
            ],
        }
        (self.cni_conf_dir / "10-gedge-e2e.conflist").write_text(json.dumps(conflist, indent=2))

    def containerd_config(self) -> str:
        root, state = self.workdir / "containerd", self.state_dir
        return f"""version = 3
root = '{root}'
state = '{state}'

[grpc]
  address = '{self.socket}'

[ttrpc]
  address = '{self.socket}.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    # No CAP_SYS_RESOURCE on these machines: never lower a container's oom_score_adj below ours.
    restrict_oom_score_adj = true
    disable_apparmor = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        runtime_path = '{self.bin_dir / "containerd-shim-runc-v2"}'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '{RUNC}'
          Root = '{state / "runc"}'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{CNI_BIN_DIR}']
      conf_dir = '{self.cni_conf_dir}'
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{self.workdir / "opt"}'
  [plugins.'io.containerd.nri.v1.nri']
    disable = false
    socket_path = '{NRI_SOCKET}'
    plugin_path = '{self.workdir / "nri" / "plugins"}'
    plugin_config_path = '{self.workdir / "nri" / "conf.d"}'
"""

    def start_containerd(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "containerd.toml"
        config.write_text(self.containerd_config())
        if self.containerd is None:
            self.containerd = ManagedProcess(
                "containerd",
                [str(self.bin_dir / "containerd"), f"--config={config}", "--log-level=info"],
                self.plane.log_dir / "containerd.log",
                env={"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
            )
        self.containerd.start()
        self.containerd.wait_until(lambda: self.ctr("version").returncode == 0, READY_TIMEOUT, "answered ctr")

    def ctr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`ctr --address <ours> -n k8s.io ARGS`."""
        result = subprocess.run(
            [str(self.bin_dir / "ctr"), "--address", str(self.socket), "-n", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode:
            raise HarnessError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def import_image(self, archive: Path) -> None:
        """`ctr -n k8s.io images import ARCHIVE` (unpacked for the CRI's snapshotter)."""
        self.ctr("images", "import", "--snapshotter=overlayfs", str(archive), check=True)

    def _remove_all_containers(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q").stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task)
        containers = self.ctr("containers", "ls", "-q").stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers)

    def _kill_shims(self) -> None:
        """Shims this containerd started outlive it; find them by our socket in their command line."""
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    # -- kubelet ---------------------------------------------------------------------------------

    def _write_kubelet_files(self) -> None:
        plane = self.plane
        assert plane.ca is not None
        client = plane.ca.issue(f"system:node:{self.name}", organizations=("system:nodes",), client=True)
        serving = plane.ca.issue(
            f"kubelet-{self.name}", ips=(self.ip, "127.0.0.1"), dns=(self.name,), server=True
        )
        self.kubeconfig = self.workdir / "kubelet.kubeconfig"
        identity = f"system:node:{self.name}"
        self.kubeconfig.write_text(kubeconfig_text(plane.server, plane.ca.cert, client, identity))
        self.kubelet_port = free_port()
        self.healthz_port = free_port()
        configuration = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine has cgroup v1 only; v2 cannot get the cpuset controller here.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            # Exclusive CPUs are ours (the agent pins); the static policy would undo its cpusets.
            "cpuManagerPolicy": "none",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": self.ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "tlsCertFile": str(serving.cert),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(plane.ca.cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "resolvConf": "",
            "registerNode": True,
            "registerWithTaints": [{"key": REAL_NODE_TAINT, "value": "true", "effect": "NoSchedule"}],
            "nodeStatusReportFrequency": "10s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "imageMinimumGCAge": "24h",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "podPidsLimit": 1024,
            "maxPods": 30,
        }
        self.kubelet_config = self.workdir / "kubelet.yaml"
        self.kubelet_config.write_text(yaml.safe_dump(configuration, sort_keys=False))

    def start_kubelet(self) -> None:
        """Start kubelet (again, after `stop_kubelet`) and wait for its /healthz."""
        if self.kubelet is None:
            self.kubelet = ManagedProcess(
                "kubelet",
                [
                    str(self.plane.bin_dir / "kubelet"),
                    f"--config={self.kubelet_config}",
                    f"--kubeconfig={self.kubeconfig}",
                    f"--hostname-override={self.name}",
                    f"--node-ip={self.ip}",
                    f"--root-dir={KUBELET_ROOT}",
                    "--v=2",
                ],
                self.plane.log_dir / "kubelet.log",
                env={"PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
            )
        self.kubelet.start()
        self.kubelet.wait_until(self._kubelet_healthy, READY_TIMEOUT, "answered /healthz")

    def stop_kubelet(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()

    def _kubelet_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=5) as reply:
            return reply.status == 200

    def node(self) -> k8s.V1Node:
        return k8s.CoreV1Api(self.plane.api_client()).read_node(self.name)

    def wait_ready(self) -> k8s.V1Node:
        """The Node once kubelet reports it Ready."""
        assert self.kubelet is not None
        core = k8s.CoreV1Api(self.plane.api_client())
        found: list[k8s.V1Node] = []

        def ready() -> bool:
            node = core.read_node(self.name)
            found[:] = [node]
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or ())

        self.kubelet.wait_until(ready, READY_TIMEOUT, f"reported Node {self.name} Ready")
        return found[0]

    def registrations(self, resource: str) -> int:
        """How many times this kubelet process registered a device plugin for `resource` (its
        kubelet_device_plugin_registration_total metric; 0 right after a restart)."""
        url = f"https://{self.ip}:{self.kubelet_port}/metrics"
        with urllib.request.urlopen(url, context=self.kubelet_tls(), timeout=10) as reply:
            text = reply.read().decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("kubelet_device_plugin_registration_total{") and f'"{resource}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def kubelet_tls(self) -> ssl.SSLContext:
        """An admin TLS context trusted by kubelet (for its /pods or /metrics)."""
        assert self.plane.ca is not None
        context = ssl.create_default_context(cafile=str(self.plane.ca.cert))
        context.load_cert_chain(str(self.plane.kubelet_client.cert), str(self.plane.kubelet_client.key))
        return context


@contextlib.contextmanager
def gpu_device_nodes(minors: list[int]) -> Iterator[list[Path]]:
    """/dev/nvidiactl and /dev/nvidia<minor> on this GPU-less host, for the devices a GPU-box agent
    hands kubelet: character devices with /dev/null's numbers, so the runtime can create them in a
    container and nothing behind them exists. Only nodes this made are removed afterwards."""
    made: list[Path] = []
    null = os.stat("/dev/null").st_rdev
    try:
        for name in ["nvidiactl", *(f"nvidia{m}" for m in minors)]:
            path = Path("/dev") / name
            if path.exists():
                continue
            os.mknod(path, 0o666 | 0o020000, null)
            made.append(path)
        yield made
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()


WORKLOAD_IMAGE = BUSYBOX_IMAGE
"""Real pods run this image (busybox's sh and applets), imagePullPolicy Never."""


def workload_pod(
    name: str,
    script: str,
    *,
    scheduler: str | None = "default-scheduler",
    requests: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node_name: str | None = None,
    on_node: str | None = None,
) -> k8s.V1Pod:
    """A one-container pod running `sh -c script` in the workload image, tolerating the real node's taint.

    `node_name` binds it there (no scheduler); `on_node` lets the scheduler place it, on that node
    only (a hostname node selector). Extended resources (names with a `/`) go to limits as well,
    as Kubernetes requires."""
    requests = dict(requests or {})
    limits = {**{k: v for k, v in requests.items() if "/" in k}, **(limits or {})}
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=annotations),
        spec=k8s.V1PodSpec(
            scheduler_name=scheduler,
            node_name=node_name,
            node_selector={"kubernetes.io/hostname": on_node} if on_node else None,
            termination_grace_period_seconds=1,
            tolerations=[k8s.V1Toleration(key=REAL_NODE_TAINT, operator="Exists", effect="NoSchedule")],
            containers=[
                k8s.V1Container(
                    name="main",
                    image=WORKLOAD_IMAGE,
                    image_pull_policy="Never",
                    command=["sh", "-c", script],
                    resources=k8s.V1ResourceRequirements(requests=requests or None, limits=limits or None),
                )
            ],
        ),
    )


def describe_pod(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    pod = core.read_namespaced_pod(name, namespace)
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    said = "; ".join(f"{e.reason}: {e.message}" for e in events)
    return f"{namespace}/{name} phase={pod.status.phase} node={pod.spec.node_name} events: {said}"


def running(core: k8s.CoreV1Api, namespace: str, name: str, timeout: float = 120.0) -> k8s.V1Pod:
    """The pod once its container runs; hopeless once it failed."""
    wait_for(
        lambda: core.read_namespaced_pod(name, namespace),
        lambda p: p.status.phase == "Running",
        timeout=timeout,
        describe=lambda p: describe_pod(core, namespace, name),
        hopeless=lambda p: p.status.phase in ("Failed", "Succeeded"),
    )
    return core.read_namespaced_pod(name, namespace)


def _log(core: k8s.CoreV1Api, namespace: str, name: str) -> str:
    """The pod's log; empty while kubelet does not serve it (404: a restarted kubelet that has not
    taken the pod back yet)."""
    try:
        return core.read_namespaced_pod_log(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return ""
        raise


def report(core: k8s.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    """KEY=VALUE lines the pod printed (through the API server, from the real kubelet), once complete."""
    log = wait_for(lambda: _log(core, namespace, name), lambda text: "END" in text.split(), describe=str)
    return dict(line.split("=", 1) for line in log.splitlines() if "=" in line)


class HostAgent:
    """`gedge-agent serve` as a process on this machine for the real node: its device plugins register
    with the real kubelet, the extender reaches it at the node's InternalIP and annotated port."""

    def __init__(self, node: RealNode, argv: list[str], kubeconfig: Path, workdir: Path) -> None:
        self.node = node
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess(
            "gedge-agent (real node)",
            [
                *argv,
                f"--node-name={node.name}",
                f"--listen={node.ip}:{self.port}",
                "--metrics-listen=",
                f"--kubeconfig={kubeconfig}",
                f"--device-plugin-dir={DEVICE_PLUGIN_DIR}",
                f"--checkpoint={workdir / 'checkpoint.json'}",
                "--log-level=info",
            ],
            node.plane.log_dir / "agent-real-node.log",
            cwd=HERE.parents[1],
        )

    def start(self) -> HostAgent:
        from tests.e2e.cluster_objects import AGENT_PORT_ANNOTATION
        from tests.e2e.processes import wait_for_port

        self.process.start()
        self.process.wait_until(lambda: wait_for_port(self.port, self.node.ip), READY_TIMEOUT, "listened")
        core = k8s.CoreV1Api(self.node.plane.api_client())
        annotations = {AGENT_PORT_ANNOTATION: str(self.port)}
        core.patch_node(self.node.name, {"metadata": {"annotations": annotations}})
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.stop(sig)

    def allocatable(self) -> dict[str, str]:
        node = self.node.node()
        return {k: v for k, v in (node.status.allocatable or {}).items() if k.startswith("gedge.io/")}
