"""How the agent reaches the Kubernetes API: in a pod its service account, else a kubeconfig if given."""

from __future__ import annotations

import os

from kubernetes import client as k8s
from kubernetes import config as k8s_config


def core_api(kubeconfig: str | None = None) -> k8s.CoreV1Api | None:
    """A CoreV1Api, or None when the agent runs without Kubernetes (no service account, no kubeconfig)."""
    if kubeconfig:
        return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kubeconfig))
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s.CoreV1Api(k8s.ApiClient(configuration))
    return None
