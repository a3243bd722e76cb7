"""The change detector over a real sysfs copy: a change made between the discovery the store holds
and the detector's first poll is still seen by that poll."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from agent.discovery import discover
from agent.metrics import AgentMetrics
from agent.service.changes import ChangeDetector, ChangePolicy, fingerprint
from agent.service.store import NodeStateStore

SNAPSHOT = "16amd64-8n2c"


def test_a_change_before_the_first_poll_is_seen_against_the_baseline(
    snapshot_roots: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "node"
    shutil.copytree(snapshot_roots[SNAPSHOT], root, symlinks=True)

    async def scenario() -> tuple[int, bool]:
        baseline = fingerprint(root)
        store = NodeStateStore(discover(root, node_name="edge"), (), frozenset())
        # The node changes after the discovery and before the detector runs at all.
        (root / "sys/devices/system/cpu/cpu3/online").write_text("0\n")
        changed = asyncio.Event()
        store.add_listener(lambda snap: changed.set())
        detector = ChangeDetector(
            root,
            lambda: discover(root, node_name="edge"),
            store,
            AgentMetrics(),
            ChangePolicy(poll_interval_s=0.01, full_interval_s=3600.0),
            baseline=baseline,
        )
        detector.start()
        try:
            await asyncio.wait_for(changed.wait(), timeout=60)
        finally:
            await detector.stop()
        snap = store.current()
        return snap.state.generation, 3 in snap.state.topology.online_cpus

    generation, cpu3_online = asyncio.run(scenario())
    assert generation == 2
    assert not cpu3_online
