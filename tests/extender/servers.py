"""Real aiohttp servers on loopback, each in its own thread and event loop, for tests that speak HTTP."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from scheduler_extender.http.app import LIMITS_KEY, start_server


class ServerThread:
    def __init__(
        self, app: web.Application, ssl_context: ssl.SSLContext | None = None, **server_options: Any
    ) -> None:
        """The extender's app is served through its own start_server (its client bounds included)."""
        self._server_options = server_options
        self._app = app
        self._ssl = ssl_context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> ServerThread:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self._runner, self.port = future.result(timeout=10)
        return self

    async def _start(self) -> tuple[web.AppRunner, int]:
        if LIMITS_KEY in self._app:
            return await start_server(self._app, "127.0.0.1", 0, self._ssl, **self._server_options)
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl).start()
        return runner, int(runner.addresses[0][1])

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"


def post(
    url: str, body: Any, *, raw: bytes | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, Any]:
    """POST JSON as kube-scheduler does; returns (status, decoded JSON body)."""
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
