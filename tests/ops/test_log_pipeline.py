"""Every log line of every command is one JSON object with level, timestamp and logger.

structlog events and stdlib records (gRPC, aiohttp, the kubernetes client and the
device plugins log through `logging`) share one handler, so lines written by many
threads at once never tear and never come out as plain text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.grpc.agents import REPO, spawn_agent

WRITERS = textwrap.dedent(
    """
    import logging, threading
    import structlog
    from gedge_common.cli import configure_logging

    configure_logging("debug")
    events = structlog.get_logger("gedge.test.structlog")
    records = logging.getLogger("gedge.test.stdlib")
    big = "x" * 20000

    def write(i):
        for j in range(200):
            events.info("structlog event", writer=i, line=j, payload=big if j % 50 == 0 else "")
            records.warning("stdlib record %s/%s %s", i, j, big if j % 50 == 1 else "")
        try:
            raise ValueError("boom")
        except ValueError:
            records.exception("stdlib failure %s", i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def _records(text: str) -> list[dict]:
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"line {number} is not one JSON object: {line[:200]!r}") from None
        assert isinstance(record, dict), line[:200]
        assert {"level", "timestamp", "logger", "event"} <= record.keys(), line[:200]
        records.append(record)
    return records


def test_concurrent_structlog_and_stdlib_writers_give_whole_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITERS], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    records = _records(done.stderr)
    by_logger = {}
    for record in records:
        by_logger[record["logger"]] = by_logger.get(record["logger"], 0) + 1
    assert by_logger == {"gedge.test.structlog": 1600, "gedge.test.stdlib": 1608}
    failures = [r for r in records if r["event"].startswith("stdlib failure")]
    assert len(failures) == 8 and all("ValueError: boom" in r["exception"] for r in failures)
    assert {r["level"] for r in records} == {"info", "warning", "error"}


def test_the_agent_daemon_writes_only_json_lines(tmp_path: Path) -> None:
    agent = spawn_agent(tmp_path, "edge-logs", "--no-apply", "--log-level", "debug", metrics_listen="")
    assert agent.terminate() == 0
    records = _records("".join(agent.log_lines))
    assert any(r["event"] == "agent serving" for r in records)
    assert any(r["logger"].startswith("gedge.agent") for r in records)
