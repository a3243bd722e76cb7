"""Agents for tests and the cache benchmark: in-process agents on one loop, or real `gedge-agent serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.apply.contract import AllocationApplier
from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from agent.service.server import AgentRuntime, default_discover
from gedge_model import NodeTopology
from tests.entry_points import entry_point

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class AgentHost:
    """One background event loop hosting any number of in-process agents."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agent-host", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_agent(
        self,
        root: str | Path,
        node_name: str,
        *,
        applier: AllocationApplier | None = None,
        discover: Callable[[], NodeTopology] | None = None,
        **settings: Any,
    ) -> AgentRuntime:
        settings.setdefault("listen", "127.0.0.1:0")
        settings.setdefault("metrics_listen", "")
        settings.setdefault("netlink", False)
        settings.setdefault("shutdown_grace_s", 0.5)
        # Plaintext unless the test gives TLS files (loopback only).
        settings.setdefault("insecure", not settings.get("tls_cert"))
        config = AgentConfig(root=str(root), node_name=node_name, **settings).validate()
        runtime = AgentRuntime(
            config=config,
            applier=applier,
            discover=discover or default_discover(config),
            metrics=AgentMetrics(),
        )
        self.call(runtime.start())
        return runtime

    def restart_agent(self, runtime: AgentRuntime, port: int) -> AgentRuntime:
        """The same agent again on the same port (a restarted daemon)."""
        config = AgentConfig(**{**runtime.config.__dict__, "listen": f"127.0.0.1:{port}"})
        fresh = AgentRuntime(config=config, applier=runtime.applier, discover=runtime.discover)
        self.call(fresh.start())
        return fresh

    def stop_agent(self, runtime: AgentRuntime, grace: float = 0.0) -> None:
        self.call(runtime.stop(grace))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass
class AgentProcess:
    """A real `gedge-agent serve` subprocess; `port` and `metrics_port` are read from its JSON log."""

    process: subprocess.Popen[str]
    port: int
    metrics_port: int | None
    log_lines: list[str]

    def terminate(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


ISOLATED = {"GEDGE_AGENT_NRI_SOCKET": "", "GEDGE_AGENT_POD_RESOURCES_SOCKET": ""}


def applying_args(cgroup_root: Path, state_dir: Path) -> list[str]:
    """`gedge-agent serve` flags of an agent that applies onto a test cgroup tree (cgroupfs driver), with
    its checkpoint in `state_dir` and no netlink."""
    return [
        "--cgroup-root",
        str(cgroup_root),
        "--cgroup-driver",
        "cgroupfs",
        "--checkpoint",
        str(state_dir / "checkpoint.json"),
        "--no-netlink",
    ]


def spawn_agent(
    root: str | Path,
    node_name: str,
    *extra: str,
    listen: str = "127.0.0.1:0",
    metrics_listen: str = "127.0.0.1:0",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 90.0,
) -> AgentProcess:
    """Start `gedge-agent serve` as documented and wait for its 'agent serving' log line.

    Without --tls-* flags (or the environment's GEDGE_AGENT_TLS_CERT) it is started with --insecure."""
    plain = not any(arg.startswith("--tls-") or arg == "--insecure" for arg in extra) and not any(
        key.startswith("GEDGE_AGENT_TLS_") or key == "GEDGE_AGENT_INSECURE" for key in (env or {})
    )
    if plain:
        extra = (*extra, "--insecure")
    command = [
        *(prefix or []),
        entry_point("gedge-agent"),
        "serve",
        "--root",
        str(root),
        "--node-name",
        node_name,
        "--listen",
        listen,
        "--metrics-listen",
        metrics_listen,
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a test agent never joins the machine's container runtime or kubelet unless told to
        env={**os.environ, **ISOLATED, **(env or {})},
    )
    lines: list[str] = []
    port: int | None = None
    metrics_port: int | None = None
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "agent serving":
            port = record["port"]
        if record.get("event") == "metrics serving":
            metrics_port = record["port"]
        if port is not None and (metrics_port is not None or not metrics_listen):
            break
    if port is None:
        process.kill()
        rest = process.stderr.read() if process.poll() is not None else ""
        raise RuntimeError(f"agent {node_name} did not start: {''.join(lines)}{rest}")
    threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
    return AgentProcess(process, port, metrics_port, lines)


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)


def python() -> str:
    return sys.executable
