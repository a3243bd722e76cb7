"""What a client can send never stalls, crashes or answers "internal error": real HTTP on loopback.

Each kind of fault found by probing the running extender is one test here: quantities
that cost unbounded arithmetic or are not numbers, non-JSON constants, deep nesting in
the body or in an annotation, slow and idle connections, and too many connections from
one client. Refusals about the pod name the pod and the field; malformed bodies are 400.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from gedge_model import NodeState
from scheduler_extender.http.app import build_app, decode_json
from scheduler_extender.node_source import NodeView, StaticNodeSource
from scheduler_extender.placement.request import RequestError, parse_pod_request, parse_quantity
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import WireError
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post
from tests.support.synthetic import edge_box

NODES = ["edge-1", "edge-2"]


@pytest.fixture
def server() -> Iterator[ServerThread]:
    source = StaticNodeSource({n: NodeState(edge_box(n)) for n in NODES})
    app = build_app(Extender(source, RecordingBinder()), body_timeout_s=0.5)
    with ServerThread(app, idle_timeout_s=0.5, max_connections_per_client=4) as running:
        yield running


def filter_body(pod_json: dict[str, Any]) -> dict[str, Any]:
    return {"Pod": pod_json, "Nodes": None, "NodeNames": NODES}


HOSTILE_QUANTITIES = [
    "1e999999",
    "1E999999",
    "1e99999",
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "inf",
    "1e31",
    "9" * 30,
    "1" + "0" * 70,
    "1.5.5",
    "1Ki1",
    "0x10",
    "\uff11",
    "",
    " ",
    "1e",
    "e3",
    "1e-99999",
]


@pytest.mark.parametrize("value", HOSTILE_QUANTITIES)
def test_a_hostile_quantity_is_refused_naming_pod_and_resource(server: ServerThread, value: str) -> None:
    status, body = post(f"{server.url}/filter", filter_body(pod("q", limits={"gedge.io/gpu": value})))
    assert status == 200
    assert body["NodeNames"] is None
    assert body["Error"].startswith("pod ml/q: gedge.io/gpu: container main: bad quantity")
    assert "internal error" not in body["Error"]


@pytest.mark.parametrize("value", ["1e999999", "NaN", "Infinity", "1e99999", "9" * 40])
def test_hostile_quantities_on_any_resource_are_refused_in_every_verb(
    server: ServerThread, value: str
) -> None:
    hostile = pod("mem", limits={"gedge.io/gpu": "1", "memory": value})
    status, body = post(f"{server.url}/filter", filter_body(hostile))
    assert status == 200 and body["Error"].startswith("pod ml/mem: memory: ")
    status, scores = post(f"{server.url}/prioritize", filter_body(hostile))
    assert status == 200 and scores == [{"Host": n, "Score": 0} for n in NODES]
    status, body = post(
        f"{server.url}/preempt", {"Pod": hostile, "NodeNameToMetaVictims": {"edge-1": {"Pods": []}}}
    )
    assert status == 200 and body == {"NodeNameToMetaVictims": {}}


def test_quantities_in_range_still_parse_exactly() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1.5Gi") == 1.5 * 2**30
    assert parse_quantity("1e3") == 1000 and parse_quantity("1E-3") == parse_quantity("1m")
    assert parse_quantity("+2") == 2 and parse_quantity(".5") == parse_quantity("500m")
    assert parse_quantity(4) == 4
    assert parse_quantity("999Ei") == 999 * 2**60
    for value in (float("nan"), float("inf"), True, None, [1], {"a": 1}, 10**30):
        with pytest.raises(ValueError):
            parse_quantity(value)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"Pod": {"metadata": {"name": NaN}}, "NodeNames": []}', "NaN is not a JSON value"),
        (b'{"Pod": {}, "NodeNames": [Infinity]}', "Infinity is not a JSON value"),
        (b'{"Pod": {}, "NodeNames": [-Infinity]}', "-Infinity is not a JSON value"),
        (b'{"Pod": ' + b"[" * 1000 + b"]" * 1000 + b', "NodeNames": []}', "nests deeper than 64"),
        (b'{"Pod": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests deeper than 64"),
        (b'{"Pod": ' + b'{"a":' * 65 + b"1" + b"}" * 65 + b', "NodeNames": []}', "nests deeper than 64"),
        (b"\xff\xfe{}", "not JSON"),
    ],
)
def test_a_malformed_body_is_400_in_every_verb(server: ServerThread, raw: bytes, reason: str) -> None:
    for verb in ("filter", "prioritize", "bind", "preempt"):
        status, body = post(f"{server.url}/{verb}", None, raw=raw)
        assert status == 400, verb
        assert reason in body["Error"] and body["Error"].startswith(f"{verb}: "), body["Error"]


def test_nesting_within_the_bound_is_fine() -> None:
    assert decode_json(b'{"a":' * 63 + b"1" + b"}" * 63) is not None
    with pytest.raises(WireError):
        decode_json(b"[" * 65 + b"]" * 65)


def test_a_deep_value_after_many_flat_ones_is_found() -> None:
    names = b",".join(b'"node-%d"' % i for i in range(1000))
    deep = b"[" * 64 + b"]" * 64
    assert decode_json(b'{"NodeNames": [' + names + b"]}")["NodeNames"][-1] == "node-999"
    for raw in (
        b'{"NodeNames": [' + names + b"," + deep + b"]}",
        b'{"a": 1, "b": "x", "c": null, "d": ' + deep + b"}",
        b"[1, 2.5, true, {}, []," + deep + b"]",
    ):
        with pytest.raises(WireError, match="nests deeper than 64"):
            decode_json(raw)


def test_a_deep_annotation_names_the_pod_and_the_annotation(server: ServerThread) -> None:
    deep = "[" * 1500 + "]" * 1500
    for key in ("gedge.io/communication", "gedge.io/compute"):
        status, body = post(
            f"{server.url}/filter",
            filter_body(pod("deep", limits={"gedge.io/gpu": "1"}, annotations={key: deep[:4000]})),
        )
        assert status == 200
        assert body["Error"] == f"pod ml/deep: {key}: expected a flat JSON list of strings"
    with pytest.raises(RequestError, match=re.escape("gedge.io/communication: expected a flat")):
        parse_pod_request(pod("x", annotations={"gedge.io/communication": "[NaN]"}))


def test_too_many_containers_are_refused() -> None:
    many = pod("many")
    many["spec"]["containers"] = [{"name": f"c{i}"} for i in range(257)]
    with pytest.raises(RequestError, match=re.escape("spec.containers: more than 256 containers")):
        parse_pod_request(many)


class BlockingSource(StaticNodeSource):
    """A node source whose lookups wait until released: a filter that takes as long as the test says."""

    def __init__(self) -> None:
        super().__init__({n: NodeState(edge_box(n)) for n in NODES})
        self.entered = threading.Event()
        self.release = threading.Event()

    def node(self, name: str) -> NodeView | None:
        self.entered.set()
        assert self.release.wait(60)
        return super().node(name)


def test_healthz_answers_while_a_filter_is_computing() -> None:
    """Verb work runs off the event loop: a long filter does not hold /healthz (or anything else)."""
    import urllib.request

    source = BlockingSource()
    with ServerThread(build_app(Extender(source, RecordingBinder()))) as running:
        result: list[Any] = []
        worker = threading.Thread(
            target=lambda: result.append(
                post(f"{running.url}/filter", filter_body(pod("slow", limits={"gedge.io/gpu": "1"})))
            )
        )
        worker.start()
        try:
            assert source.entered.wait(30)
            with urllib.request.urlopen(f"{running.url}/healthz", timeout=30) as response:
                assert response.read() == b"ok"
            assert not result, "the filter is still blocked while /healthz answered"
        finally:
            source.release.set()
            worker.join(30)
        status, body = result[0]
        assert status == 200 and sorted(body["NodeNames"]) == NODES


def _http(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    return sock.recv(65536)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) the connection; waits up to the socket's timeout."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_one_client_holds_a_bounded_number_of_connections(server: ServerThread) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
    try:
        for sock in held:
            assert _http(sock, HEALTHZ).startswith(b"HTTP/1.1 200")
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        try:
            assert _closed(extra)
        finally:
            extra.close()
        held.pop().close()
        # The closed one gives its place back once the server has seen it go.
        for _ in range(100):
            again = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            try:
                again.sendall(HEALTHZ)
                reply = again.recv(65536)
            except ConnectionResetError:
                reply = b""
            again.close()
            if reply:
                break
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_idle_and_half_sent_connections_are_closed(server: ServerThread) -> None:
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    half_headers = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    after_request = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        half_headers.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert _http(after_request, HEALTHZ).startswith(b"HTTP/1.1 200")
        assert _closed(idle)
        assert _closed(half_headers)
        assert _closed(after_request)
    finally:
        for sock in (idle, half_headers, after_request):
            sock.close()


def test_a_body_that_stops_arriving_is_answered_408(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + json.dumps({"Pod": {}}).encode()[:5]
        )
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408")
        assert b"filter: request body not received within 0.5 s" in reply


def _loop_errors(server: ServerThread) -> list[dict[str, Any]]:
    """What the server loop's exception handler is given from now on (e.g. a task's unretrieved error)."""
    seen: list[dict[str, Any]] = []
    server._loop.set_exception_handler(lambda loop, context: seen.append(context))
    return seen


def _settle(server: ServerThread) -> None:
    """Let the server loop run what is queued, then collect dropped tasks (their errors surface here)."""
    import asyncio
    import gc

    async def collect() -> None:
        await asyncio.sleep(0)
        gc.collect()

    for _ in range(3):
        asyncio.run_coroutine_threadsafe(collect(), server._loop).result(timeout=10)


def test_a_connection_over_the_limit_is_closed_without_a_task_error(server: ServerThread) -> None:
    errors = _loop_errors(server)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
    try:
        for sock in held:
            assert _http(sock, HEALTHZ).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as extra:
            assert _closed(extra)
        _settle(server)
        assert errors == []
    finally:
        for sock in held:
            sock.close()


def test_a_client_hanging_up_mid_body_counts_as_aborted_not_error(caplog: pytest.LogCaptureFixture) -> None:
    from scheduler_extender.http.app import METRICS_KEY
    from tests.extender.test_agents_mode import wait_for

    source = StaticNodeSource({n: NodeState(edge_box(n)) for n in NODES})
    app = build_app(Extender(source, RecordingBinder()), body_timeout_s=30)
    registry = app[METRICS_KEY].registry

    def count(outcome: str) -> float:
        labels = {"verb": "filter", "outcome": outcome}
        return registry.get_sample_value("gedge_extender_requests_total", labels) or 0.0

    with ServerThread(app, idle_timeout_s=30) as running:
        with socket.create_connection(("127.0.0.1", running.port), timeout=30) as sock:
            head = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
            # 100 Continue: the verb is now reading the body, which never ends (the socket is reset)
            assert _http(sock, head).startswith(b"HTTP/1.1 100")
            sock.sendall(b'{"Pod":')
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        wait_for(lambda: count("aborted") == 1, "the hang-up to be counted")
        _settle(running)
    assert count("error") == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


def test_a_negative_content_length_is_a_warning_without_traceback(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reply = _http(sock, b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400")
    _settle(server)
    faults = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert faults and all(r.levelname == "WARNING" and not r.exc_info for r in faults)
    assert "Content-Length" in faults[0].getMessage()
