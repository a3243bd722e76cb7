"""The agent's word on its Node when it cannot drive cgroups, and the resync once it can."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client as k8s

from agent.apply.readiness import ApplyGate
from agent.commands.serve import NodeParts, readiness_reporter
from agent.podwatch import PodWatcher
from tests.apply.helpers import make_v1_cgroup, v1_sandbox
from tests.podwatch.conftest import NODE, RecordingApplier, pod


class Api:
    """The calls made here, recorded: events created, Node status patched, pods listed."""

    def __init__(self, pods) -> None:
        self.events: list[tuple[str, k8s.CoreV1Event]] = []
        self.conditions: list[dict] = []
        self.pods = pods

    def patch_node_status(self, name, body, _content_type, _request_timeout):
        assert name == NODE and _content_type == "application/strategic-merge-patch+json"
        assert 0 < _request_timeout <= 30
        self.conditions += body["status"]["conditions"]

    def create_namespaced_event(self, namespace, event):
        self.events.append((namespace, event))

    def list_pod_for_all_namespaces(self, field_selector):
        return k8s.V1PodList(items=self.pods, metadata=k8s.V1ListMeta(resource_version="1"))


def test_blocked_node_gets_a_warning_event_and_a_normal_one_with_a_resync_when_ready(tmp_path: Path) -> None:
    with v1_sandbox("gtevt-") as cgroups:
        api = Api([pod("u1", started=1, phase="Running")])
        applier = RecordingApplier()
        gate = ApplyGate("", tmp_path / "absent.yaml", cgroups)
        parts = NodeParts(core=api, gate=gate)
        parts.watcher = PodWatcher(api, NODE, applier, blocked=gate.blocked)
        gate.add_listener(readiness_reporter(parts, NODE))

        ((namespace, warning),) = api.events
        assert namespace == "default"
        assert (warning.type, warning.reason) == ("Warning", "CgroupDriverUnknown")
        assert warning.involved_object.kind == "Node" and warning.involved_object.name == NODE
        assert "no kubepods.slice or kubepods cgroup under" in warning.message
        ((condition),) = api.conditions
        assert (condition["type"], condition["status"]) == ("GedgeAgentReady", "False")
        assert (condition["reason"], condition["message"]) == ("CgroupDriverUnknown", warning.message)
        gate.refresh()  # unchanged: nothing new said
        assert len(api.events) == 1 and len(api.conditions) == 1 and applier.calls == []

        make_v1_cgroup(cgroups / "kubepods")
        gate.refresh()
        _, ready = api.events[-1]
        assert (ready.type, ready.reason) == ("Normal", "AllocationsApplied")
        assert (api.conditions[-1]["status"], api.conditions[-1]["reason"]) == ("True", "Ready")
        assert applier.calls == [("apply", "u1")]  # the resync applied what waited
