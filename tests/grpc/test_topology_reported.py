"""The watch-stream count behind GedgeTopologyReported, and the condition's writer."""

from __future__ import annotations

import threading

from agent.service.watchers import ServedWatches
from agent.topology_reported import NOT_WATCHED, WATCHED, TopologyReportedCondition


def test_listeners_hear_only_when_the_state_becomes_held_or_not() -> None:
    watches = ServedWatches()
    heard: list[tuple[bool, int]] = []
    watches.add_listener(lambda held: heard.append((held, watches.streams)))
    watches.served()
    watches.served()
    watches.ended()
    assert heard == [(True, 1)] and watches.held
    watches.ended()
    assert heard == [(True, 1), (False, 0)] and not watches.held
    watches.ended()  # an extra end never goes below none
    assert watches.streams == 0 and heard == [(True, 1), (False, 0)]


class Writes:
    """Records writes; fails the first `failures` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.done: list[tuple[bool, str]] = []
        self.tries = 0
        self.changed = threading.Condition()

    def __call__(self, status: bool, reason: str, message: str) -> bool:
        with self.changed:
            self.tries += 1
            if self.tries <= self.failures:
                self.changed.notify_all()
                return False
            self.done.append((status, reason))
            self.changed.notify_all()
            return True

    def wait_for(self, count: int) -> list[tuple[bool, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.done) >= count, timeout=30)
            return list(self.done)


def test_a_failed_write_is_tried_again_and_the_agent_going_away_writes_false() -> None:
    writes = Writes(failures=2)
    condition = TopologyReportedCondition(writes, retry_after=0.01)
    condition.follow(True)
    assert writes.wait_for(1) == [(True, WATCHED)]
    assert writes.tries == 3
    condition.follow(True)  # nothing new: no write
    condition.stop(last=False)
    assert writes.done == [(True, WATCHED), (False, NOT_WATCHED)]
    condition.follow(True)  # after stop: nothing
    assert writes.done == [(True, WATCHED), (False, NOT_WATCHED)]


def test_only_the_latest_wanted_status_is_written() -> None:
    entered, gate = threading.Event(), threading.Event()
    writes = Writes()

    def slow(status: bool, reason: str, message: str) -> bool:
        entered.set()
        gate.wait(30)
        return writes(status, reason, message)

    condition = TopologyReportedCondition(slow)
    condition.follow(True)
    assert entered.wait(30)  # the write of True is in flight, held at the gate
    condition.follow(False)
    condition.follow(True)
    gate.set()
    condition.stop()
    # the first write was in flight as True; the later False then True end where it began
    assert writes.done == [(True, WATCHED)]
