"""KubernetesWorkflowApi on the wire (the official client over real HTTP to a recording server):
the status is replaced by a JSON patch, so a field the controller stops writing goes away, and
serve annotations are merge patches."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client

from scheduler_extender.workflow.kube import KubernetesWorkflowApi


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str, object]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("PATCH", self.path, self.headers["Content-Type"], body))
        obj: dict[str, object] = {"metadata": {"name": "x"}}
        if "/deployments/" in self.path:
            obj.update(apiVersion="apps/v1", kind="Deployment", spec={"selector": {}, "template": {}})
        elif "/services/" in self.path:
            obj.update(apiVersion="v1", kind="Service", spec={})
        reply = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[KubernetesWorkflowApi]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api_client = client.ApiClient(configuration)
    try:
        yield KubernetesWorkflowApi(api_client)
    finally:
        api_client.close()
        server.shutdown()
        server.server_close()


def test_the_status_is_replaced_whole_not_merged(api):
    api.patch_workflow_status("ml", "wf", {"phase": "Running", "tasks": {"a": {"phase": "Succeeded"}}})
    method, path, content_type, body = _Recorder.seen[-1]
    assert (method, path) == ("PATCH", "/apis/gedge.io/v1alpha1/namespaces/ml/workflows/wf/status")
    assert content_type == "application/json-patch+json"
    assert body == [
        {
            "op": "add",
            "path": "/status",
            "value": {"phase": "Running", "tasks": {"a": {"phase": "Succeeded"}}},
        }
    ]


def test_serve_expiry_is_a_merge_patch_of_annotations(api):
    api.annotate("Deployment", "ml", "resnet", {"gedge.io/expires-at": "2026-01-01T00:00:00Z"})
    api.annotate("Service", "ml", "resnet", {"gedge.io/expires-at": None})
    deployment, service = _Recorder.seen[-2:]
    assert deployment[1] == "/apis/apps/v1/namespaces/ml/deployments/resnet"
    assert deployment[2] == "application/merge-patch+json"
    assert deployment[3] == {"metadata": {"annotations": {"gedge.io/expires-at": "2026-01-01T00:00:00Z"}}}
    assert service[1] == "/api/v1/namespaces/ml/services/resnet"
    assert service[3] == {"metadata": {"annotations": {"gedge.io/expires-at": None}}}
