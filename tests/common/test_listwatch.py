"""List-then-watch through the real Kubernetes client against a loopback API server: 410 Gone lists
again, other errors back off, a resumed watch starts from the last version seen, stop() ends it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from gedge_common.backoff import Backoff
from gedge_common.listwatch import ListWatch, event_version


def node(name: str, version: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": version}}


class Script:
    """What the server answers, call by call: lists return the next version; watches follow `plan`."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.lists = iter(["5", "7", "9"])
        self.holding = threading.Event()
        self.release = threading.Event()


def serve(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            if query.get("watch") != ["true"]:
                version = next(script.lists)
                script.requests.append(f"list->{version}")
                self._json(200, {"kind": "NodeList", "metadata": {"resourceVersion": version}, "items": []})
                return
            version = query["resourceVersion"][0]
            script.requests.append(f"watch@{version}")
            if version == "8":
                self._json(500, {"kind": "Status", "code": 500, "message": "etcd is away"})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if version == "5":
                gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
                self.wfile.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            elif version == "7":
                self.wfile.write(json.dumps({"type": "ADDED", "object": node("n2", "8")}).encode() + b"\n")
            else:
                script.holding.set()
                script.release.wait(30)
            self.wfile.flush()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_expired_relists_errors_back_off_and_resume_follows_the_last_version() -> None:
    script = Script()
    server = serve(script)
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    api = client.CoreV1Api(client.ApiClient(config))
    events: list[tuple[str, str]] = []
    errors: list[tuple[int, float]] = []
    expired: list[bool] = []

    def relist() -> str:
        return api.list_node().metadata.resource_version

    loop = ListWatch(
        relist=relist,
        watch_call=api.list_node,
        watch_args={"timeout_seconds": 60, "deserialize": False},
        handle=lambda e: events.append((e["type"], e["object"]["metadata"]["name"])),
        backoff=Backoff(0.01, 0.04),
        on_error=lambda exc, delay: errors.append((exc.status, delay)),
        on_expired=lambda: expired.append(True),
        resume=True,
    )
    loop.start("test-list-watch")
    try:
        assert script.holding.wait(30)
    finally:
        loop.stopping.set()
        script.release.set()
        loop.stop(timeout=30)
        server.shutdown()
    assert script.requests == ["list->5", "watch@5", "list->7", "watch@7", "watch@8", "list->9", "watch@9"]
    assert expired == [True]
    assert events == [("ADDED", "n2")]
    assert errors == [(500, 0.01)]


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_jitter_spreads_each_delay() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    backoff = Backoff(1.0, 10.0, jitter=0.2, uniform=uniform)
    assert backoff.next_delay() == pytest.approx(1.2)
    assert backoff.next_delay() == pytest.approx(2.4)
    assert asked == [(0.8, 1.2), (0.8, 1.2)]


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_backoff_refuses_a_bad_range(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, cap)


def test_event_version_reads_raw_and_typed_objects() -> None:
    assert event_version({"object": node("a", "12")}) == "12"
    typed = client.V1Node(metadata=client.V1ObjectMeta(name="a", resource_version="13"))
    assert event_version({"object": typed}) == "13"
    assert event_version({"object": {}}) is None
