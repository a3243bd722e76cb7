"""A loopback HTTP server answering the few Kubernetes API calls the extender makes, as the API server does.

Pods and Nodes in memory; PATCH is JSON merge patch; a Binding answers with a
Status (which the python client cannot deserialize as a Binding); list calls
with watch=true hold the stream open without events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web


class FakeApiServer:
    """Pods in memory; PATCH is JSON merge patch, a Binding answers with a Status as the real server does."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []

    def add_pod(self, namespace: str, name: str, uid: str, **extra: Any) -> dict[str, Any]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": {}},
            "spec": {"containers": [{"name": "main", "image": "x"}], **extra.get("spec", {})},
            "status": extra.get("status", {"phase": "Pending"}),
        }
        self.pods[(namespace, name)] = pod
        return pod

    def app(self) -> web.Application:
        self._closing = asyncio.Event()
        app = web.Application()
        app.on_shutdown.append(self._close_watches)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get)
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/binding", self._bind)
        app.router.add_post("/api/v1/namespaces/{ns}/events", self._event)
        app.router.add_get("/api/v1/pods", self._list)
        app.router.add_get("/api/v1/nodes", self._nodes)
        return app

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
        }
        return web.json_response({**body, "code": code}, status=code)

    async def _get(self, request: web.Request) -> web.Response:
        pod = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if pod is None:
            return self._status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(pod)

    async def _bind(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("POST", request.path, json.dumps(body, sort_keys=True)))
        if body["metadata"]["name"] != request.match_info["name"]:
            return self._status(400, "BadRequest", "name in URL does not match name in Binding object")
        pod = self.pods.get((request.match_info["ns"], body["metadata"]["name"]))
        if pod is None:
            return self._status(404, "NotFound", "pod not found")
        if body["metadata"].get("uid") not in (None, pod["metadata"]["uid"]):
            return self._status(409, "Conflict", "Precondition failed: UID in precondition")
        if pod["spec"].get("nodeName"):
            return self._status(
                409, "Conflict", f"pod {body['metadata']['name']} is already assigned to node"
            )
        # as kube-apiserver's BindingREST: the node and the Binding's annotations in one update
        pod["spec"]["nodeName"] = body["target"]["name"]
        pod["metadata"]["annotations"].update(body["metadata"].get("annotations") or {})
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}, status=201
        )

    async def _event(self, request: web.Request) -> web.Response:
        event = await request.json()
        self.events.append(event)
        return web.json_response({**event, "metadata": {**event["metadata"], "name": "e1"}}, status=201)

    async def _hold_watch(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        timeout = min(float(request.query.get("timeoutSeconds", "300")), 300.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout)
        return response

    async def _close_watches(self, app: web.Application) -> None:
        self._closing.set()

    async def _nodes(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            return await self._hold_watch(request)
        return web.json_response(
            {"kind": "NodeList", "metadata": {"resourceVersion": "7"}, "items": self.nodes}
        )

    async def _list(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            return await self._hold_watch(request)
        selector = request.query.get("fieldSelector", "")
        items = [p for p in self.pods.values() if selector != "spec.nodeName!=" or p["spec"].get("nodeName")]
        return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "42"}, "items": items})
