"""The extender's HTTP(S) server (aiohttp): the four verbs, /healthz, /readyz (leader only), /metrics.

kube-scheduler reads a reply body only with status 200, so verbs answer 200 with
the `Error` field for anything about the pod or the cluster; a body that is not
the extender v1 JSON at all gets 400 with the same typed body, and a body over
the size bound gets 413. Nothing answers with a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import queue
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from scheduler_extender.leader import AlwaysLeader, Leadership
from scheduler_extender.verb_metrics import VerbMetrics
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import (
    ExtenderArgs,
    WireError,
    decode_binding_args,
    decode_extender_args,
    decode_preemption_args,
    encode_binding_result,
    encode_filter_result,
)

log = structlog.get_logger("gedge.extender.http")
T = TypeVar("T")

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
            "Requests by verb and outcome (ok, error: an Error in the reply, bad_request: 4xx, standby: 503, "
            "aborted: the client hung up before its body arrived)",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.verbs = VerbMetrics(self.registry)
        self._latency: dict[str, Any] = {}
        self._outcomes: dict[tuple[str, str], Any] = {}

    def observe(self, verb: str, outcome: str, seconds: float) -> None:
        """One answered request: its latency and outcome, through children looked up once per label."""
        latency = self._latency.get(verb)
        if latency is None:
            latency = self._latency[verb] = self.latency.labels(verb)
        counter = self._outcomes.get((verb, outcome))
        if counter is None:
            counter = self._outcomes[verb, outcome] = self.outcomes.labels(verb, outcome)
        latency.observe(seconds)
        counter.inc()


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
"""The loop that waits, its future, the work."""


class Workers:
    """Threads that run verb work off the event loop and answer on it, in arrival order.

    Cheaper per call than `run_in_executor` (one queue put, one call_soon_threadsafe; no
    concurrent Future chained to an asyncio one). Threads start on demand, up to
    `max_workers`; `shutdown()` lets queued work finish, then joins them.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers, self.name = max_workers, name
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        """Threads waiting for work and not yet claimed by a `run`."""
        self._lock = threading.Lock()
        self._closed = False

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """`work()` in a worker thread; its result (or exception) on the calling event loop's future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: shut down")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._queue.put((loop, future, work))
        return future

    def _serve(self) -> None:
        get, lock = self._queue.get, self._lock
        while (item := get()) is not None:
            loop, future, work = item
            del item
            try:
                outcome: tuple[Callable[..., None], Any] = (_settle, work())
            except BaseException as exc:
                outcome = (_fail, exc)
            del work
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(outcome[0], future, outcome[1])
            del loop, future, outcome
            with lock:
                self._idle += 1

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # cancelled: the client went away
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


EXTENDER_KEY = web.AppKey("extender", Extender)
METRICS_KEY = web.AppKey("metrics", ExtenderMetrics)
POOL_KEY = web.AppKey("bind_pool", Workers)
PLACE_POOL_KEY = web.AppKey("place_pool", Workers)
MAX_BODY_KEY = web.AppKey("max_body", int)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
LEADERSHIP_KEY: web.AppKey[Leadership] = web.AppKey("leadership")
ALLOWED_CLIENTS_KEY = web.AppKey("allowed_clients", frozenset)
VERBS = frozenset({"/filter", "/prioritize", "/bind", "/preempt"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


_JSON_HEADERS = {"Content-Type": "application/json"}


def _reply(body: Any, status: int = 200) -> web.Response:
    data = body if isinstance(body, bytes) else _dumps(body)
    return web.Response(body=data, status=status, headers=_JSON_HEADERS)


MAX_JSON_DEPTH = 64
"""Deepest nesting a request body may have; a Node or Pod object is under 20 levels deep."""

_CONSTANTS = ("-Infinity", "Infinity", "NaN")
_CONTAINERS = frozenset({dict, list})
"""The container types orjson decodes to (exactly these, never subclasses)."""


def _not_json(exc: orjson.JSONDecodeError, max_depth: int) -> str:
    """Why orjson refused a body: its depth limit, a NaN or Infinity constant by name, or its own message."""
    message = str(exc)
    if message.startswith("depth limit exceeded"):
        return f"request body nests deeper than {max_depth} levels"
    doc = exc.doc
    for name in _CONSTANTS:
        # orjson points at the constant, or just past the sign of -Infinity.
        if doc.startswith(name, exc.pos) or doc.startswith(name, max(exc.pos - 1, 0)):
            return f"request body is not JSON: {name} is not a JSON value"
    return f"request body is not JSON: {message}"


def decode_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of a request body; WireError when it is not strict JSON or nests deeper than max_depth.

    Strict: NaN and Infinity are refused (orjson has no such constants). The depth is
    checked without recursion, so nothing that handles the value later can run out of stack.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(_not_json(exc, max_depth)) from None
    if type(value) not in _CONTAINERS:
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise WireError(f"request body nests deeper than {max_depth} levels")
        values = item.values() if type(item) is dict else item
        # One C-level pass skips a flat list (thousands of node names) without a Python step per item.
        if _CONTAINERS.isdisjoint(map(type, values)):
            continue
        stack.extend((v, depth + 1) for v in values if type(v) in _CONTAINERS)
    return value


class _WireArgs(msgspec.Struct):
    """ExtenderArgs as kube-scheduler spells it, each field left encoded (UNSET: the key is absent)."""

    pod: msgspec.Raw | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="Pod")
    nodes: msgspec.Raw | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="Nodes")
    node_names: msgspec.Raw | msgspec.UnsetType = msgspec.field(default=msgspec.UNSET, name="NodeNames")


_WIRE_ARGS = msgspec.json.Decoder(_WireArgs)
_NAMES = msgspec.json.Decoder(tuple[str, ...])


_NAMES_TAIL = b',"Nodes":null,"NodeNames":'
"""What comes between the pod and the names in a body as kube-scheduler's Go encoder writes it."""


class ArgsDecoder:
    """ExtenderArgs from a filter or prioritize body, the same list of names as the same tuple.

    kube-scheduler (nodeCacheCapable) sends `Pod`, `Nodes: null` and `NodeNames` spelt
    exactly, and the same thousands of names call after call. A body that ends with
    `,"Nodes":null,"NodeNames":<a names list met before>}` (byte for byte, the last
    `max_lists`) has only its pod decoded: the names are the tuple decoded then, and the
    extender keeps answers per tuple. Lists are compared by equality (a memcmp), never
    hashed. Any other body (other spellings, NodeList mode, anything malformed) is
    decoded by `decode_extender_args(decode_json(raw))`, with its errors.
    """

    def __init__(self, max_lists: int = 8, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.max_lists, self.max_bytes = max_lists, max_bytes
        self._lists: list[tuple[bytes, tuple[str, ...]]] = []
        """(encoded list, its names), the most recently used first."""
        self._pod: tuple[bytes, dict[str, Any]] | None = None
        """The last pod decoded: prioritize sends filter's pod again, byte for byte."""
        self._bytes = 0
        self._lock = threading.Lock()

    def decode(self, raw: bytes) -> ExtenderArgs:
        """WireError as decode_extender_args words it when the body is not ExtenderArgs."""
        fast = self._known_tail(raw)
        if fast is None:
            fast = self._split(raw)
        return fast if fast is not None else decode_extender_args(decode_json(raw))

    def _known_tail(self, raw: bytes) -> ExtenderArgs | None:
        """The body as `{"Pod":...` + _NAMES_TAIL + a known list + `}`: only the part before the tail
        is decoded (as an object with a pod and neither Nodes nor NodeNames), so the whole is JSON."""
        end = len(raw) - 1
        if end < 0 or raw[end] != 0x7D:  # "}"
            return None
        with self._lock:
            lists = list(self._lists)
        for position, (known, names) in enumerate(lists):
            start = end - len(known)
            if start < len(_NAMES_TAIL) or not raw.startswith(known, start):
                continue
            cut = start - len(_NAMES_TAIL)
            if not raw.startswith(_NAMES_TAIL, cut):
                return None
            try:
                head = _WIRE_ARGS.decode(raw[:cut] + b"}")
            except (msgspec.MsgspecError, RecursionError):
                return None
            if head.pod is msgspec.UNSET or head.nodes is not msgspec.UNSET:
                return None
            if head.node_names is not msgspec.UNSET:
                return None
            pod = self._pod_of(bytes(head.pod))
            if pod is None:
                return None
            if position:
                self._used(known)
            return ExtenderArgs(pod=pod, node_names=names, nodes=None)
        return None

    def _split(self, raw: bytes) -> ExtenderArgs | None:
        try:
            wire = _WIRE_ARGS.decode(raw)
        except (msgspec.MsgspecError, RecursionError):  # decode_json words the error
            return None
        if wire.pod is msgspec.UNSET or wire.nodes is msgspec.UNSET or wire.node_names is msgspec.UNSET:
            return None
        if bytes(wire.nodes) != b"null":
            return None
        names = self._names(bytes(wire.node_names))
        if names is None:
            return None
        pod = self._pod_of(bytes(wire.pod))
        if pod is None:
            return None
        return ExtenderArgs(pod=pod, node_names=names, nodes=None)

    def _pod_of(self, raw_pod: bytes) -> dict[str, Any] | None:
        """The pod object of its bytes (the last one again when the bytes are the same); None when it
        is not a JSON object within the depth bound (decode_json words the error then)."""
        last = self._pod
        if last is not None and last[0] == raw_pod:
            return last[1]
        try:
            # The pod sits one level below the body: the body's depth bound, less one.
            pod = decode_json(raw_pod, MAX_JSON_DEPTH - 1)
        except WireError:
            return None
        if type(pod) is not dict:
            return None
        self._pod = (raw_pod, pod)
        return pod

    def _names(self, raw: bytes) -> tuple[str, ...] | None:
        with self._lock:
            found = next((names for known, names in self._lists if known == raw), None)
        if found is not None:
            self._used(raw)
            return found
        try:
            names: tuple[str, ...] = _NAMES.decode(raw)
        except (msgspec.MsgspecError, RecursionError):  # decode_json words the error
            return None
        self.remember(raw, names)
        return names

    def _used(self, raw: bytes) -> None:
        """The list equal to `raw` moves to the front (the last used are kept)."""
        with self._lock:
            for i, entry in enumerate(self._lists):
                if entry[0] == raw:
                    if i:
                        del self._lists[i]
                        self._lists.insert(0, entry)
                    return

    def remember(self, raw: bytes, names: tuple[str, ...]) -> None:
        """Decode the JSON list `raw` as `names` from now on (`names` must be what `raw` holds)."""
        with self._lock:
            if len(raw) > self.max_bytes:
                return
            lists = self._lists
            for i, (known, _) in enumerate(lists):
                if known == raw:
                    del lists[i]
                    self._bytes -= len(known)
                    break
            lists.insert(0, (raw, names))
            self._bytes += len(raw)
            while len(lists) > self.max_lists or self._bytes > self.max_bytes:
                self._bytes -= len(lists.pop()[0])


ARGS_KEY = web.AppKey("args_decoder", ArgsDecoder)


class _Encoded(bytes):
    """A reply body encoded off the event loop; `error` says whether it carries an Error."""

    error: bool = False


def _encoded(body: Any) -> _Encoded:
    data = _Encoded(_dumps(body))
    data.error = bool(isinstance(body, dict) and body.get("Error"))
    return data


async def _off_loop(request: web.Request, work: Callable[[], Any]) -> Any:
    """Run decode, placement and encode in the placement thread: /healthz never waits behind them."""
    return await request.app[PLACE_POOL_KEY].run(work)


def _verb(name: str, on_error: Callable[[str], Any]) -> Callable[[Callable[..., Any]], Handler]:
    """Wraps a verb: bad input -> 400 with a typed error body; a fault -> 200 with the typed error."""

    def wrap(body_handler: Callable[[web.Request, Any], Awaitable[Any]]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            app = request.app
            if app[ALLOWED_CLIENTS_KEY]:
                refused = _refuse_client(request)
                if refused is not None:
                    return refused
            metrics = app[METRICS_KEY]
            started = time.perf_counter()
            outcome = "ok"
            try:
                if not app[LEADERSHIP_KEY].is_leader():
                    outcome = "standby"
                    message = f"{name}: this extender replica is a standby; ask the leader"
                    return _reply(on_error(message), status=503)
                if request.content.is_eof():
                    # The whole body is in already (kube-scheduler's are): nothing to wait for.
                    raw = await request.read()
                else:
                    raw = await asyncio.wait_for(request.read(), app[BODY_TIMEOUT_KEY])
                body = await body_handler(request, raw)
                if body.error if isinstance(body, _Encoded) else isinstance(body, dict) and body.get("Error"):
                    outcome = "error"
                # Placement verbs answer bytes encoded in the placement thread (a NodeList-mode
                # filter reply echoes megabytes of Node objects); bind's reply is a few fields.
                return _reply(body)
            except WireError as exc:
                outcome = "bad_request"
                log.info("bad_request", verb=name, error=str(exc))
                return _reply(on_error(f"{name}: {exc}"), status=400)
            except TimeoutError:
                outcome = "bad_request"
                message = f"{name}: request body not received within {request.app[BODY_TIMEOUT_KEY]} s"
                log.info("bad_request", verb=name, error=message)
                response = _reply(on_error(message), status=408)
                response.force_close()
                return response
            except ConnectionError as exc:
                # The client went away mid-request: its fault, not the verb's; nobody reads the answer.
                outcome = "aborted"
                log.info("client_aborted", verb=name, error=f"{type(exc).__name__}: {exc}")
                response = _reply(on_error(f"{name}: connection lost: {exc}"), status=400)
                response.force_close()
                return response
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
                metrics.observe(name, outcome, time.perf_counter() - started)

        return handler

    return wrap


@_verb("filter", lambda message: encode_filter_result(None, error=message))
async def _filter(request: web.Request, raw: bytes) -> Any:
    extender, metrics, decoder = request.app[EXTENDER_KEY], request.app[METRICS_KEY], request.app[ARGS_KEY]

    def work() -> _Encoded:
        reply = extender.filter_json(decoder.decode(raw))
        if reply.passed is not None:
            decoder.remember(*reply.passed)
        metrics.verbs.observe_filter_summary(reply.summary)
        data = _Encoded(reply.body)
        data.error = bool(reply.summary.error)
        return data

    return await _off_loop(request, work)


@_verb("prioritize", lambda message: {"Error": message})
async def _prioritize(request: web.Request, raw: bytes) -> Any:
    extender, args = request.app[EXTENDER_KEY], request.app[ARGS_KEY]
    return await _off_loop(request, lambda: _Encoded(extender.prioritize_json(args.decode(raw))))


@_verb("bind", encode_binding_result)
async def _bind(request: web.Request, raw: bytes) -> Any:
    # Decoded in the bind pool: a hostile body of megabytes never holds the event loop.
    extender, metrics = request.app[EXTENDER_KEY], request.app[METRICS_KEY].verbs

    def work() -> dict[str, Any]:
        args = decode_binding_args(decode_json(raw))
        if extender.cache.held_by(args.pod_uid) is not None:
            metrics.bind_retries.inc()
        body = extender.bind(args)
        # Counted here too, not on the event loop.
        allocation = None if body.get("Error") else extender.cache.held_by(args.pod_uid)
        view = extender.source.node(args.node) if allocation is not None else None
        metrics.observe_bind(body.get("Error") or "", allocation, view.state.topology if view else None)
        return body

    return await request.app[POOL_KEY].run(work)


@_verb("preempt", lambda message: {"NodeNameToMetaVictims": {}, "Error": message})
async def _preempt(request: web.Request, raw: bytes) -> Any:
    extender = request.app[EXTENDER_KEY]
    return await _off_loop(
        request, lambda: _encoded(extender.preempt(decode_preemption_args(decode_json(raw))))
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    """Ready only as the leader: the Service sends kube-scheduler to the leader alone."""
    if request.app[LEADERSHIP_KEY].is_leader():
        return web.Response(text="leader")
    return web.Response(text="standby", status=503)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def peer_names(request: web.Request) -> frozenset[str]:
    """Common name and DNS names of the verified client certificate; empty without one (or without TLS)."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return frozenset()
    names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names.update(value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    return frozenset(names)


def _refuse_client(request: web.Request) -> web.Response | None:
    """403 unless the client certificate names an allowed client (kube-scheduler's); verbs only.

    Checked by each verb's handler, not a middleware: the other routes and a server
    without allowed clients pay nothing for it."""
    allowed = request.app[ALLOWED_CLIENTS_KEY]
    names = peer_names(request)
    if names & allowed:
        return None
    message = (
        f"client certificate names {sorted(names)} are not among the allowed clients {sorted(allowed)}"
        if names
        else "a client certificate is required"
    )
    log.warning("client refused", path=request.path, peer=request.remote, peer_names=sorted(names))
    request.app[METRICS_KEY].outcomes.labels(request.path.strip("/"), "forbidden").inc()
    return _reply({"Error": message}, status=403)


def build_app(
    extender: Extender,
    *,
    max_body: int = MAX_BODY_BYTES,
    bind_workers: int = 8,
    body_timeout_s: float = 10.0,
    registry: CollectorRegistry | None = None,
    leadership: Leadership | None = None,
    allowed_clients: frozenset[str] = frozenset(),
) -> web.Application:
    """The verbs, /healthz, /readyz (the leader only) and /metrics; `body_timeout_s` bounds how long a
    request body may take to arrive. With `allowed_clients`, verbs answer 403 unless the TLS client
    certificate names one of them (serve it with `server_ssl_context(..., client_ca)`)."""
    app = web.Application(client_max_size=max_body)
    app[ALLOWED_CLIENTS_KEY] = frozenset(allowed_clients)
    app[MAX_BODY_KEY] = max_body
    app[BODY_TIMEOUT_KEY] = body_timeout_s
    app[LEADERSHIP_KEY] = leadership if leadership is not None else AlwaysLeader()
    app[LIMITS_KEY] = ClientLimits(MAX_CONNECTIONS_PER_CLIENT)
    app[EXTENDER_KEY] = extender
    app[ARGS_KEY] = ArgsDecoder(max_bytes=max_body)
    app[METRICS_KEY] = ExtenderMetrics(registry)
    app[METRICS_KEY].verbs.watch(extender)
    pool = Workers(bind_workers, "bind")
    app[POOL_KEY] = pool
    # One thread: placement is CPU work under the GIL, more threads would only interleave it.
    place_pool = Workers(1, "place")
    app[PLACE_POOL_KEY] = place_pool

    async def close_pool(app: web.Application) -> None:
        pool.shutdown()
        place_pool.shutdown()

    app.on_cleanup.append(close_pool)
    app.router.add_post("/filter", _filter)
    app.router.add_post("/prioritize", _prioritize)
    app.router.add_post("/bind", _bind)
    app.router.add_post("/preempt", _preempt)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
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


REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


async def _registry_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_metrics_app(registry: CollectorRegistry, leadership: Leadership | None = None) -> web.Application:
    """/metrics, /healthz and /readyz alone, on a plain port that Prometheus and kubelet's probes reach
    without a certificate."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[LEADERSHIP_KEY] = leadership if leadership is not None else AlwaysLeader()
    app[LIMITS_KEY] = ClientLimits(MAX_CONNECTIONS_PER_CLIENT)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _registry_metrics)
    return app


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """HTTPS for the extender; with `client_ca`, kube-scheduler must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ClientLimits:
    """At most `max_per_client` open connections from one client address; more are reset at once."""

    def __init__(self, max_per_client: int) -> None:
        if max_per_client < 1:
            raise ValueError(f"at most {max_per_client} connections per client would refuse every client")
        self.max_per_client = max_per_client
        self.open: dict[str, int] = {}
        self.refused = 0
        self._hosts: dict[object, str] = {}

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            if self.open.get(host, 0) >= self.max_per_client:
                self.refused += 1
                log.warning(
                    "connection_refused", client=host, open=self.open.get(host, 0), limit=self.max_per_client
                )
                # Not from inside connection_made: the handler's task must start before it is lost.
                asyncio.get_running_loop().call_soon(transport.abort)
                return
            self.open[host] = self.open.get(host, 0) + 1
            self._hosts[handler] = host

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            host = self._hosts.pop(handler, None)
            if host is not None:
                left = self.open[host] - 1
                if left:
                    self.open[host] = left
                else:
                    del self.open[host]

        # aiohttp offers no hook per connection: the server's own methods are wrapped in place
        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]


LIMITS_KEY = web.AppKey("client_limits", ClientLimits)

IDLE_TIMEOUT_S = 15.0
"""A connection with no complete request (idle between requests, or headers half-sent) closes after this."""
MAX_CONNECTIONS_PER_CLIENT = 512
"""kube-scheduler binds in parallel, one connection per bind in flight: at 5,000 nodes with a busy API
server it held more than 64 at once (bench/scheduling.py), and each one reset failed a bind."""
LINGER_S = 1.0
"""After an early answer (408, 413), how long the rest of an unread body is drained before closing."""


class ReloadingSslContext:
    """A server SSLContext whose certificate, key and client CA follow their files.

    `refresh()` loads replaced files into the same context (new handshakes use
    them, open connections keep theirs); a replacement that does not load leaves
    the old material in use. A replaced client CA is trusted beside the old one
    (clients move over during a CA rotation) until the next restart.
    """

    def __init__(
        self, cert: str, key: str, client_ca: str, on_error: Callable[[str], None] | None = None
    ) -> None:
        from gedge_model.tls import TlsFiles

        self.files = TlsFiles(cert, key, client_ca, on_error=on_error)
        self.context = server_ssl_context(cert, key, client_ca)

    def refresh(self) -> bool:
        """True when replaced files were loaded."""
        material = self.files.reload()
        if material is None:
            return False
        cert, key, _ = self.files.paths
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(cadata=material.ca_pem.decode())
        return True


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's per-connection logger: a malformed request (bad header, Content-Length: -5) is the
    client's fault, logged at warning with its reason and no traceback; anything else stays an error."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError | ConnectionError):
            reason = " ".join(str(exc_info).split())[:300]
            self.logger.warning("%s: %s", str(msg) % args if args else msg, reason)
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
) -> tuple[web.AppRunner, int]:
    """Start listening; returns the runner and the bound port (port 0 picks a free one).

    Bounds per client: `max_connections_per_client` open connections per address;
    a connection without a complete request for `idle_timeout_s` is closed; a body
    slower than the app's body timeout is answered 408 and the connection closed
    within LINGER_S.
    """
    if max_connections_per_client < 1:
        raise ValueError(f"max_connections_per_client must be at least 1, got {max_connections_per_client}")
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=idle_timeout_s,
        lingering_time=LINGER_S,
        logger=_ServerLog(logging.getLogger("aiohttp.server"), {}),
    )
    await runner.setup()
    assert runner.server is not None
    limits = app[LIMITS_KEY]
    limits.max_per_client = max_connections_per_client
    limits.install(runner.server)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])
