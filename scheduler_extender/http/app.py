"""The extender's HTTP(S) server (aiohttp): /filter, /prioritize, /bind, /preempt, /healthz, /metrics.

kube-scheduler reads a reply body only with status 200, so verbs answer 200 with
the `Error` field for anything about the pod or the cluster; a body that is not
the extender v1 JSON at all gets 400 with the same typed body, and a body over
the size bound gets 413. Nothing answers with a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from scheduler_extender.verb_metrics import VerbMetrics
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import (
    WireError,
    decode_binding_args,
    decode_extender_args,
    decode_preemption_args,
    encode_binding_result,
    encode_filter_result,
)

log = structlog.get_logger("gedge.extender.http")

MAX_BODY_BYTES = 32 * 1024 * 1024
"""A full NodeList of 5,000 nodes is ~20 MiB; NodeNames mode is far smaller."""


class ExtenderMetrics:
    """Per-verb latency and outcomes, on the registry the cluster cache's metrics live in."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "gedge_extender_request_seconds",
            "Time to answer kube-scheduler, by verb",
            ["verb"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.outcomes = Counter(
            "gedge_extender_requests_total",
            "Requests by verb and outcome (ok, error: an Error in the reply, bad_request: 4xx)",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.verbs = VerbMetrics(self.registry)


EXTENDER_KEY = web.AppKey("extender", Extender)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)
POOL_KEY = web.AppKey("bind_pool", ThreadPoolExecutor)
PLACE_POOL_KEY = web.AppKey("place_pool", ThreadPoolExecutor)
MAX_BODY_KEY = web.AppKey("max_body", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _reply(body: Any, status: int = 200) -> web.Response:
    data = body if isinstance(body, bytes) else _dumps(body)
    return web.Response(body=data, status=status, content_type="application/json")


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"request body is not JSON: {exc}") from None


class _Encoded(bytes):
    """A reply body encoded off the event loop; `error` says whether it carries an Error."""

    error: bool = False


def _encoded(body: Any) -> _Encoded:
    data = _Encoded(_dumps(body))
    data.error = bool(isinstance(body, dict) and body.get("Error"))
    return data


async def _off_loop(request: web.Request, work: Callable[[], Any]) -> Any:
    """Run decode, placement and encode in the placement thread: /healthz never waits behind them."""
    return await asyncio.get_running_loop().run_in_executor(request.app[PLACE_POOL_KEY], work)


def _verb(name: str, on_error: Callable[[str], Any]) -> Callable[[Callable[..., Any]], Handler]:
    """Wraps a verb: bad input -> 400 with a typed error body; a fault -> 200 with the typed error."""

    def wrap(body_handler: Callable[[web.Request, Any], Awaitable[Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            metrics = request.app[METRICS_KEY]
            started = time.perf_counter()
            outcome = "ok"
            try:
                raw = await request.read()
                body = await body_handler(request, raw)
                if body.error if isinstance(body, _Encoded) else isinstance(body, dict) and body.get("Error"):
                    outcome = "error"
                return _reply(body)
            except WireError as exc:
                outcome = "bad_request"
                log.info("bad_request", verb=name, error=str(exc))
                return _reply(on_error(f"{name}: {exc}"), status=400)
            except web.HTTPRequestEntityTooLarge:
                outcome = "bad_request"
                message = f"{name}: request body is larger than {request.app[MAX_BODY_KEY]} bytes"
                log.info("bad_request", verb=name, error=message)
                return _reply(on_error(message), status=413)
            except Exception as exc:
                outcome = "error"
                with contextlib.suppress(Exception):
                    log.exception("verb_failed", verb=name)
                return _reply(on_error(f"{name}: internal error: {type(exc).__name__}: {exc}"))
            finally:
                metrics.latency.labels(name).observe(time.perf_counter() - started)
                metrics.outcomes.labels(name, outcome).inc()

        return handler

    return wrap


@_verb("filter", lambda message: encode_filter_result(None, error=message))
async def _filter(request: web.Request, raw: bytes) -> Any:
    extender, metrics = request.app[EXTENDER_KEY], request.app[METRICS_KEY]

    def work() -> _Encoded:
        body = extender.filter(decode_extender_args(_loads(raw)))
        metrics.verbs.observe_filter(body)
        return _encoded(body)

    return await _off_loop(request, work)


@_verb("prioritize", lambda message: {"Error": message})
async def _prioritize(request: web.Request, raw: bytes) -> Any:
    extender = request.app[EXTENDER_KEY]
    return await _off_loop(
        request, lambda: _Encoded(extender.prioritize_json(decode_extender_args(_loads(raw))))
    )


@_verb("bind", encode_binding_result)
async def _bind(request: web.Request, raw: bytes) -> Any:
    args = decode_binding_args(_loads(raw))
    extender, metrics = request.app[EXTENDER_KEY], request.app[METRICS_KEY].verbs
    if extender.cache.held_by(args.pod_uid) is not None:
        metrics.bind_retries.inc()
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(request.app[POOL_KEY], extender.bind, args)
    allocation = None if body.get("Error") else extender.cache.held_by(args.pod_uid)
    view = extender.source.node(args.node) if allocation is not None else None
    metrics.observe_bind(body.get("Error") or "", allocation, view.state.topology if view else None)
    return body


@_verb("preempt", lambda message: {"NodeNameToMetaVictims": {}, "Error": message})
async def _preempt(request: web.Request, raw: bytes) -> Any:
    extender = request.app[EXTENDER_KEY]
    return await _off_loop(request, lambda: _encoded(extender.preempt(decode_preemption_args(_loads(raw)))))


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    extender: Extender,
    *,
    max_body: int = MAX_BODY_BYTES,
    bind_workers: int = 8,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    app = web.Application(client_max_size=max_body)
    app[MAX_BODY_KEY] = max_body
    app[EXTENDER_KEY] = extender
    app[METRICS_KEY] = ExtenderMetrics(registry)
    app[METRICS_KEY].verbs.watch(extender)
    pool = ThreadPoolExecutor(max_workers=bind_workers, thread_name_prefix="bind")
    app[POOL_KEY] = pool
    # One thread: placement is CPU work under the GIL, more threads would only interleave it.
    place_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="place")
    app[PLACE_POOL_KEY] = place_pool

    async def close_pool(app: web.Application) -> None:
        pool.shutdown(wait=True, cancel_futures=False)
        place_pool.shutdown(wait=True, cancel_futures=False)

    app.on_cleanup.append(close_pool)
    app.router.add_post("/filter", _filter)
    app.router.add_post("/prioritize", _prioritize)
    app.router.add_post("/bind", _bind)
    app.router.add_post("/preempt", _preempt)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


def tune_gc() -> None:
    """Move what is alive now (thousands of node topologies) out of the collector's sight.

    A full collection walks every object; over a large cluster's topologies that
    is a pause of 100 ms or more in the middle of a filter. Frozen objects are
    skipped, and a higher first threshold makes collections rarer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """HTTPS for the extender; with `client_ca`, kube-scheduler must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_server(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner and the bound port (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])
