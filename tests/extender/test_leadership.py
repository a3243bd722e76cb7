"""Only the leader is Ready and answers verbs; a standby answers 503 naming itself, over real HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from gedge_model import NodeState
from scheduler_extender.commands.serve import leader_election
from scheduler_extender.http.app import build_app
from scheduler_extender.leader import AlwaysLeader, LeaseElection
from scheduler_extender.node_source import StaticNodeSource
from scheduler_extender.verbs import Extender
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post
from tests.support.synthetic import edge_box


class Switch:
    """Leadership that the test hands over, as the Lease election does (same interface)."""

    def __init__(self) -> None:
        self.leading = threading.Event()

    def is_leader(self) -> bool:
        return self.leading.is_set()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_standby_is_not_ready_and_refuses_verbs_until_it_leads() -> None:
    switch = Switch()
    binder = RecordingBinder()
    extender = Extender(StaticNodeSource({"edge-1": NodeState(edge_box("edge-1"))}), binder)
    with ServerThread(build_app(extender, leadership=switch)) as server:
        assert get(f"{server.url}/readyz") == (503, "standby")
        assert get(f"{server.url}/healthz") == (200, "ok"), "alive all the same"
        body = {
            "Pod": pod("p", uid="uid-p", limits={"gedge.io/gpu": "1"}),
            "Nodes": None,
            "NodeNames": ["edge-1"],
        }
        status, reply = post(f"{server.url}/filter", body)
        assert (
            status == 503 and reply["Error"] == "filter: this extender replica is a standby; ask the leader"
        )
        status, reply = post(
            f"{server.url}/bind", {"PodName": "p", "PodNamespace": "ml", "PodUID": "uid-p", "Node": "edge-1"}
        )
        assert status == 503 and binder.bound == []

        switch.leading.set()
        assert get(f"{server.url}/readyz") == (200, "leader")
        status, reply = post(f"{server.url}/filter", body)
        assert status == 200 and reply["NodeNames"] == ["edge-1"]
        assert post(
            f"{server.url}/bind", {"PodName": "p", "PodNamespace": "ml", "PodUID": "uid-p", "Node": "edge-1"}
        )[1] == {"Error": ""}

        switch.leading.clear()
        assert get(f"{server.url}/readyz") == (503, "standby"), "a deposed leader stops at once"


class Args:
    leader_elect = True
    agents = None
    leader_elect_lease = None
    leader_elect_identity = "extender-0"


def test_leader_election_settings() -> None:
    args = Args()
    election = leader_election(args, on_lost=lambda: None)
    assert isinstance(election, LeaseElection)
    assert (election.namespace, election.name, election.identity) == (
        "gedge-system",
        "gedge-extender",
        "extender-0",
    )
    assert election.lease_duration_s + election.retry_period_s <= 15, "a standby takes over within 15 s"
    args.leader_elect_lease = "ops/gedge"
    election = leader_election(args, on_lost=lambda: None)
    assert (election.namespace, election.name) == ("ops", "gedge")
    args.leader_elect_lease = "no-slash"
    with pytest.raises(ValueError, match="not NAMESPACE/NAME"):
        leader_election(args, on_lost=lambda: None)
    args.agents = "agents.yaml"
    with pytest.raises(ValueError, match="needs Kubernetes"):
        leader_election(args, on_lost=lambda: None)
    args.leader_elect = False
    with pytest.raises(ValueError, match="--leader-elect-lease is given without --leader-elect"):
        leader_election(args, on_lost=lambda: None)
    args.leader_elect_lease = args.leader_elect_identity = None
    assert isinstance(leader_election(args, on_lost=lambda: None), AlwaysLeader)
