"""The agent's NRI plugin against a real containerd 2.4.2: containers are created on their cpusets.

A private containerd (own root, state, sockets and NRI socket) with the CRI plugin;
pods and containers are made through CRI, as kubelet makes them, and the cpuset is
read from the container's own cgroup and from its first process.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from agent.apply.cgroups import remove_cgroup_tree
from agent.nri import NriCpusets, NriSession
from gedge_model import ANNOTATION, Allocation
from gedge_model.cpulist import parse_cpulist
from tests.nri.runtime import IMAGE, Containerd, binary_dir, cri_modules, oci_archive

NODE = "nri-node"
CPUSET = Path("/sys/fs/cgroup/cpuset")
CONTROLLERS = ("cpuset", "cpu", "cpuacct", "memory", "devices", "freezer", "blkio", "pids", "systemd")

pytestmark = [
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs"),
    pytest.mark.skipif(not (CPUSET / "cpuset.cpus").exists(), reason="needs the cgroup v1 cpuset hierarchy"),
]


def eventually(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not reached in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Containerd]:
    binaries = binary_dir()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("containerd binaries or runc missing: run make e2e-binaries system-deps")
        pytest.skip("containerd binaries (tests/e2e/node/build_containerd.sh) or runc missing")
    with tempfile.TemporaryDirectory(prefix="gnri-", dir="/tmp") as scratch:
        daemon = Containerd(binaries, Path(scratch) / "ctrd")
        daemon.start()
        try:
            daemon.ctr(
                "images",
                "import",
                "--platform",
                "linux/amd64",
                "--snapshotter",
                "native",
                str(oci_archive(binaries / "pause", Path(scratch))),
            )
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture(scope="module")
def cri(runtime: Containerd, tmp_path_factory: pytest.TempPathFactory):
    api, api_grpc = cri_modules(tmp_path_factory.mktemp("cri"))
    channel = runtime.channel()
    yield api, api_grpc.RuntimeServiceStub(channel)
    channel.close()


@pytest.fixture
def online() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


@pytest.fixture
def plugin(runtime: Containerd, online: frozenset[int]) -> Iterator[tuple[NriCpusets, NriSession]]:
    policy = NriCpusets(NODE, lambda: online, reserved_cpus=frozenset({0}))
    session = NriSession(str(runtime.nri_socket), policy)
    session.open()
    assert session.synchronized.wait(10), session.error
    yield policy, session
    session.close()


class Pods:
    """Pods made through CRI under one private cgroup parent; all removed at the end."""

    def __init__(self, api, stub) -> None:
        self.api, self.stub = api, stub
        self.parent = f"/gedge-nri-{uuid.uuid4().hex[:8]}"
        self.sandboxes: list[str] = []

    def sandbox_config(self, name: str, annotations: dict[str, str], uid: str):
        api = self.api
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace="ml", attempt=0),
            annotations=annotations,
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.parent}/pod{uid}",
                security_context=api.LinuxSandboxSecurityContext(
                    namespace_options=api.NamespaceOption(network=api.NODE)
                ),
            ),
        )

    def run(self, name: str, allocation: Allocation | None = None):
        uid = allocation.pod_uid if allocation is not None else str(uuid.uuid4())
        annotations = {ANNOTATION: allocation.to_annotation()} if allocation is not None else {}
        config = self.sandbox_config(name, annotations, uid)
        sandbox = self.stub.RunPodSandbox(
            self.api.RunPodSandboxRequest(config=config), timeout=60
        ).pod_sandbox_id
        self.sandboxes.append(sandbox)
        return sandbox, config

    def container(self, sandbox: str, config, name: str = "main") -> str:
        api = self.api
        created = self.stub.CreateContainer(
            api.CreateContainerRequest(
                pod_sandbox_id=sandbox,
                config=api.ContainerConfig(
                    metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=IMAGE)
                ),
                sandbox_config=config,
            ),
            timeout=60,
        )
        self.stub.StartContainer(api.StartContainerRequest(container_id=created.container_id), timeout=60)
        return created.container_id

    def remove(self, sandbox: str) -> None:
        self.stub.StopPodSandbox(self.api.StopPodSandboxRequest(pod_sandbox_id=sandbox), timeout=60)
        self.stub.RemovePodSandbox(self.api.RemovePodSandboxRequest(pod_sandbox_id=sandbox), timeout=60)
        self.sandboxes.remove(sandbox)

    def cgroup(self, uid: str, container_id: str) -> Path:
        return CPUSET / self.parent.lstrip("/") / f"pod{uid}" / container_id

    def close(self) -> None:
        for sandbox in list(self.sandboxes):
            self.remove(sandbox)
        for controller in CONTROLLERS:
            remove_cgroup_tree(Path("/sys/fs/cgroup") / controller / self.parent.lstrip("/"))


@pytest.fixture
def pods(cri) -> Iterator[Pods]:
    api, stub = cri
    made = Pods(api, stub)
    yield made
    made.close()


def cpus_of(cgroup: Path) -> frozenset[int]:
    return parse_cpulist((cgroup / "cpuset.cpus").read_text())


def first_process_cpus(cgroup: Path) -> frozenset[int]:
    pid = (cgroup / "cgroup.procs").read_text().split()[0]
    line = next(
        x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Cpus_allowed_list")
    )
    return parse_cpulist(line.split(":", 1)[1])


def test_pinned_container_is_created_on_its_cpus_and_others_leave_them(plugin, pods, online) -> None:
    _policy, session = plugin
    plain_sandbox, plain_config = pods.run("plain")
    plain_uid = plain_config.metadata.uid
    before = pods.container(plain_sandbox, plain_config)
    assert cpus_of(pods.cgroup(plain_uid, before)) == online  # nothing pinned yet: every CPU

    pinned_cpu = max(online)
    allocation = Allocation(str(uuid.uuid4()), "ml", "pinned", NODE, cpus=(pinned_cpu,))
    sandbox, config = pods.run("pinned", allocation)
    pinned = pods.container(sandbox, config)
    cgroup = pods.cgroup(allocation.pod_uid, pinned)
    assert cpus_of(cgroup) == {pinned_cpu}
    assert first_process_cpus(cgroup) == {pinned_cpu}

    # the container that ran before was moved off the pinned CPU in the same call
    assert cpus_of(pods.cgroup(plain_uid, before)) == online - {pinned_cpu}
    after = pods.container(plain_sandbox, plain_config, name="sidecar")
    assert cpus_of(pods.cgroup(plain_uid, after)) == online - {pinned_cpu}
    assert first_process_cpus(pods.cgroup(plain_uid, after)) == online - {pinned_cpu}

    pods.remove(sandbox)  # the pinned pod goes: its CPU returns to the shared pool
    eventually(lambda: cpus_of(pods.cgroup(plain_uid, before)) == online)
    assert not session.closed.is_set()


def test_a_container_that_cannot_get_its_cpus_is_refused_with_the_reason(plugin, pods, online) -> None:
    allocation = Allocation(str(uuid.uuid4()), "ml", "greedy", NODE, cpus=(0,))  # 0 is reserved here
    sandbox, config = pods.run("greedy", allocation)
    with pytest.raises(grpc.RpcError) as refused:
        pods.container(sandbox, config)
    assert "pod ml/greedy: cpus 0 are reserved for the system" in refused.value.details()
    other_node = Allocation(str(uuid.uuid4()), "ml", "elsewhere", "other-node", cpus=(max(online),))
    sandbox, config = pods.run("elsewhere", other_node)
    with pytest.raises(grpc.RpcError) as wrong:
        pods.container(sandbox, config)
    assert "is for node 'other-node', this is 'nri-node'" in wrong.value.details()


def test_plugin_that_registers_late_pins_and_excludes_what_already_runs(runtime, pods, online) -> None:
    """Pods created while no agent listened (agent restart): Synchronize moves them at registration."""
    plain_sandbox, plain_config = pods.run("plain")
    plain = pods.container(plain_sandbox, plain_config)
    pinned_cpu = max(online)
    allocation = Allocation(str(uuid.uuid4()), "ml", "pinned", NODE, cpus=(pinned_cpu,))
    sandbox, config = pods.run("pinned", allocation)
    pinned = pods.container(sandbox, config)
    plain_cgroup = pods.cgroup(plain_config.metadata.uid, plain)
    pinned_cgroup = pods.cgroup(allocation.pod_uid, pinned)
    assert cpus_of(plain_cgroup) == online and cpus_of(pinned_cgroup) == online  # nobody pinned them

    session = NriSession(str(runtime.nri_socket), NriCpusets(NODE, lambda: online))
    session.open()
    try:
        assert session.synchronized.wait(10), session.error
        time.sleep(2)
        import json as _j

        print("LOGTAIL", runtime.log.read_text()[-20000:])
        print("SPEC", _j.loads(runtime.ctr("containers", "info", pinned))["Spec"]["linux"]["resources"])
        assert cpus_of(pinned_cgroup) == {pinned_cpu}
        assert first_process_cpus(pinned_cgroup) == {pinned_cpu}
        assert cpus_of(plain_cgroup) == online - {pinned_cpu}
    finally:
        session.close()


def test_gedge_agent_serve_is_the_nri_plugin(runtime, pods, online, tmp_path: Path) -> None:
    """`gedge-agent serve --nri-socket`: the daemon registers with containerd and pins at creation."""
    from tests.apply.helpers import make_v1_cgroup, v1_sandbox
    from tests.grpc.agents import spawn_agent

    with v1_sandbox("gtnri-") as cgroups:
        make_v1_cgroup(cgroups / "kubepods")
        agent = spawn_agent(
            "/",
            NODE,
            "--nri-socket",
            str(runtime.nri_socket),
            "--cgroup-root",
            str(cgroups),
            "--cgroup-driver",
            "cgroupfs",
            "--checkpoint",
            str(tmp_path / "checkpoint.json"),
            "--no-netlink",
            metrics_listen="",
        )
        try:
            # registered before the node's state is served, so no pod is placed here before it can be pinned
            events = [json.loads(line).get("event") for line in list(agent.log_lines) if line.startswith("{")]
            assert "nri plugin registered" in events[: events.index("agent serving")]
            eventually(lambda: any("nri synchronized" in line for line in agent.log_lines))
            pinned_cpu = max(online)
            allocation = Allocation(str(uuid.uuid4()), "ml", "pinned", NODE, cpus=(pinned_cpu,))
            sandbox, config = pods.run("pinned", allocation)
            pinned = pods.container(sandbox, config)
            assert cpus_of(pods.cgroup(allocation.pod_uid, pinned)) == {pinned_cpu}
            assert agent.terminate(timeout=15) == 0
        finally:
            agent.kill()


def test_agent_registers_again_when_containerd_restarts(tmp_path: Path) -> None:
    """containerd restarted under a running agent: its sessions end, and the agent registers again
    and synchronizes as soon as the NRI socket is back."""
    from tests.apply.helpers import make_v1_cgroup, v1_sandbox
    from tests.grpc.agents import spawn_agent

    binaries = binary_dir()
    if binaries is None:
        pytest.skip("containerd binaries (tests/e2e/node/build_containerd.sh) or runc missing")
    daemon = Containerd(binaries, tmp_path / "ctrd")
    daemon.start()
    try:
        with v1_sandbox("gtnri-") as cgroups:
            make_v1_cgroup(cgroups / "kubepods")
            agent = spawn_agent(
                "/",
                NODE,
                "--nri-socket",
                str(daemon.nri_socket),
                "--cgroup-root",
                str(cgroups),
                "--cgroup-driver",
                "cgroupfs",
                "--checkpoint",
                str(tmp_path / "checkpoint.json"),
                "--no-netlink",
                metrics_listen="",
                env={"GEDGE_AGENT_READINESS_INTERVAL_S": "0.2"},
            )
            try:

                def synced() -> int:
                    return sum("nri synchronized" in line for line in agent.log_lines)

                eventually(lambda: synced() == 1)
                daemon.stop()
                eventually(lambda: any("nri session ended" in line for line in agent.log_lines))
                daemon.start()
                eventually(lambda: synced() == 2)
                assert agent.terminate(timeout=15) == 0
            finally:
                agent.kill()
    finally:
        daemon.stop()
