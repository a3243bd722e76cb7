"""The extender of the e2e cluster takes its verbs only from kube-scheduler's client certificate.

tests/e2e/test_scheduling.py shows the real kube-scheduler reaching it over
HTTPS with the certificate its tlsConfig names; here the refusals.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.e2e.edge_cluster import EdgeCluster

pytestmark = pytest.mark.e2e


def _filter(edge_cluster: EdgeCluster, context: ssl.SSLContext) -> tuple[int, dict]:
    body = {"Pod": {"metadata": {"name": "p", "namespace": "default", "uid": "u"}}, "NodeNames": []}
    request = urllib.request.Request(
        f"{edge_cluster.extender_url}/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_verbs_refuse_callers_without_kube_schedulers_certificate(edge_cluster: EdgeCluster) -> None:
    assert _filter(edge_cluster, edge_cluster.scheduler_context())[0] == 200
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _filter(edge_cluster, edge_cluster.scheduler_context(client=None))
    node = edge_cluster.node_names()[0]
    status, body = _filter(edge_cluster, edge_cluster.scheduler_context(client=node))
    assert status == 403
    assert body["Error"] == (
        f"client certificate names ['{node}'] are not among the allowed clients ['kube-scheduler']"
    )
