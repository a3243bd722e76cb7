"""The agent's plain HTTP port: Prometheus /metrics, /readyz (can this agent do its job now?) and /healthz.

kubelet's gRPC probe cannot speak TLS, so the DaemonSet probes this port instead:
/readyz answers 200 `ok` while nothing holds the agent back, and 503 with one line
per reason (`apply: CgroupDriverUnknown: ...`, `certificate: waiting for ...`)
otherwise. /healthz answers 200 while the process serves HTTP (liveness).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


class ReadyState:
    """Named reasons that keep the agent from being ready; ready when there are none. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def set(self, name: str, reason: str | None) -> None:
        """`reason` None clears `name` (that part is ready)."""
        with self._lock:
            if reason is None:
                self._reasons.pop(name, None)
            else:
                self._reasons[name] = reason

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(sorted(self._reasons.items()))

    @property
    def ready(self) -> bool:
        with self._lock:
            return not self._reasons


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds: no access log."""


def make_app(registry: CollectorRegistry, state: ReadyState) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/readyz":
            reasons = state.reasons()
            if not reasons:
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b"ok\n"]
            body = "".join(f"{name}: {reason}\n" for name, reason in reasons.items()).encode()
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [body]
        if path == "/metrics":
            return metrics(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; this port serves /metrics, /readyz and /healthz\n"]

    return app


def start_http(host: str, port: int, registry: CollectorRegistry, state: ReadyState) -> WSGIServer:
    """Serve /metrics, /readyz and /healthz on host:port from a daemon thread; OSError when it cannot bind.

    Stop with `server.shutdown(); server.server_close()`; `server.server_port` is the bound port."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(_Server):
        address_family = family

    server = make_server(host, port, make_app(registry, state), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
