"""The few Kubernetes calls the workflow controller makes, behind one narrow interface.

`KubernetesWorkflowApi` is the implementation over the official client
(CustomObjectsApi for Workflows and their status subresource, CoreV1Api for
pods, logs, the catalog ConfigMap, serve Services and workspace claims;
AppsV1Api for serve Deployments). Objects cross the interface as plain
dicts in the API server's camelCase JSON form.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, cast

from scheduler_extender.workflow.spec import API_GROUP, PLURAL

API_VERSION_ONLY = "v1alpha1"


class ApiError(RuntimeError):
    """The API server refused a call; `status` is its HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class AlreadyExists(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class WatchExpired(ApiError):
    """The resourceVersion a watch started from is too old (410 Gone): list again."""

    def __init__(self, message: str) -> None:
        super().__init__(410, message)


class WorkflowApi(Protocol):
    def get_workflow(self, namespace: str, name: str) -> dict[str, Any]: ...

    def create_workflow(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def list_workflows(self, namespace: str) -> list[dict[str, Any]]: ...

    def delete_workflow(self, namespace: str, name: str) -> None: ...

    def patch_workflow_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]: ...

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods and the list's resourceVersion, to watch from."""
        ...

    def delete_pod(self, namespace: str, name: str) -> None: ...

    def watch_pods(
        self, namespace: str, selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(ADDED|MODIFIED|DELETED, pod) after `resource_version`, until the timeout; WatchExpired on 410."""
        ...

    def read_pod_log(self, namespace: str, name: str, container: str | None = None) -> str: ...

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any]: ...

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]: ...

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...

    def replace_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT: `body` carries the resourceVersion it replaces (409 if the object moved on)."""
        ...

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        """Merge annotations into a Deployment or Service (`kind`); None removes one."""
        ...

    def delete_deployment(self, namespace: str, name: str) -> None: ...

    def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get_service(self, namespace: str, name: str) -> dict[str, Any]: ...

    def replace_service(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete_service(self, namespace: str, name: str) -> None: ...

    def create_claim(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]: ...

    def delete_claim(self, namespace: str, name: str) -> None: ...


def _json_object(raw: object) -> dict[str, Any]:
    """The custom-objects API answers the decoded JSON object but is annotated `object`."""
    return cast(dict[str, Any], raw)


def _translate(exc: Exception) -> Exception:
    """The client's exception as ours; a body the client itself refuses (ValueError) reads as a 422."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ValueError | TypeError):
        return ApiError(422, f"refused before sending: {str(exc)[:500]}")
    if not isinstance(exc, ApiException):
        return exc
    message = exc.reason or ""
    body = getattr(exc, "body", None)
    if body:
        try:
            import json

            message = json.loads(body).get("message", message)
        except (ValueError, AttributeError):
            message = str(body)[:500]
    if exc.status == 404:
        return NotFound(message)
    if exc.status == 409:
        return AlreadyExists(message)
    if exc.status == 410:
        return WatchExpired(message)
    return ApiError(exc.status or 0, message)


class KubernetesWorkflowApi:
    """WorkflowApi over the official `kubernetes` client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubernetesWorkflowApi:
        """A kubeconfig file (or in-cluster config when none is given and we run in a pod).

        NoCluster (scheduler_extender.commands.cluster_access) when the config does not load.
        """
        from kubernetes import client

        from scheduler_extender.commands.cluster_access import load_config

        configuration = client.Configuration()
        in_cluster = path is None and _in_cluster()
        load_config(path, in_cluster=in_cluster, context=context, client_configuration=configuration)
        return cls(client.ApiClient(configuration))

    def _plain(self, obj: Any) -> dict[str, Any]:
        return self._client.sanitize_for_serialization(obj)

    def get_workflow(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return _json_object(
                self._custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION_ONLY, namespace, PLURAL, name
                )
            )
        except Exception as exc:
            raise _translate(exc) from None

    def create_workflow(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return _json_object(
                self._custom.create_namespaced_custom_object(
                    API_GROUP, API_VERSION_ONLY, namespace, PLURAL, body
                )
            )
        except Exception as exc:
            raise _translate(exc) from None

    def list_workflows(self, namespace: str) -> list[dict[str, Any]]:
        try:
            out = _json_object(
                self._custom.list_namespaced_custom_object(API_GROUP, API_VERSION_ONLY, namespace, PLURAL)
            )
        except Exception as exc:
            raise _translate(exc) from None
        return list(out.get("items", []))

    def delete_workflow(self, namespace: str, name: str) -> None:
        from kubernetes import client

        try:
            self._custom.delete_namespaced_custom_object(
                API_GROUP,
                API_VERSION_ONLY,
                namespace,
                PLURAL,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except Exception as exc:
            raise _translate(exc) from None

    def patch_workflow_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Replaces the whole status (a JSON patch): a field the controller no longer writes goes away."""
        try:
            return _json_object(
                self._custom.patch_namespaced_custom_object_status(
                    API_GROUP,
                    API_VERSION_ONLY,
                    namespace,
                    PLURAL,
                    name,
                    [{"op": "add", "path": "/status", "value": status}],
                    _content_type="application/json-patch+json",
                )
            )
        except Exception as exc:
            raise _translate(exc) from None

    def create_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            # the client serializes a plain dict body as it does a V1Pod; its annotations name V1Pod only
            return self._plain(self._core.create_namespaced_pod(namespace, body))  # type: ignore[arg-type]
        except Exception as exc:
            raise _translate(exc) from None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._plain(self._core.read_namespaced_pod(name, namespace))
        except Exception as exc:
            raise _translate(exc) from None

    def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        try:
            listed = self._core.list_namespaced_pod(namespace, label_selector=selector)
        except Exception as exc:
            raise _translate(exc) from None
        version = listed.metadata.resource_version if listed.metadata is not None else None
        return [self._plain(p) for p in listed.items], version or ""

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self._core.delete_namespaced_pod(name, namespace)
        except Exception as exc:
            error = _translate(exc)
            if not isinstance(error, NotFound):
                raise error from None

    def watch_pods(
        self, namespace: str, selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        stream = watch.Watch()
        try:
            for event in stream.stream(
                self._core.list_namespaced_pod,
                namespace,
                label_selector=selector,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
                allow_watch_bookmarks=False,
            ):
                kind = event["type"]
                raw = event.get("raw_object") or {}
                if kind == "ERROR":
                    if raw.get("code") == 410:
                        raise WatchExpired(str(raw.get("message", "")))
                    raise ApiError(int(raw.get("code") or 0), str(raw.get("message", "")))
                yield kind, raw
        except ApiError:
            raise
        except Exception as exc:
            raise _translate(exc) from None
        finally:
            stream.stop()

    def read_pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        try:
            return self._core.read_namespaced_pod_log(name, namespace, container=container)
        except Exception as exc:
            raise _translate(exc) from None

    def get_config_map(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._plain(self._core.read_namespaced_config_map(name, namespace))
        except Exception as exc:
            raise _translate(exc) from None

    def _call(self, method: Any, *args: Any, ignore_missing: bool = False, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            error = _translate(exc)
            if ignore_missing and isinstance(error, NotFound):
                return None
            raise error from None
        return None if result is None else self._plain(result)

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._apps.create_namespaced_deployment, namespace, body)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(self._apps.read_namespaced_deployment, name, namespace)

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = self._call(self._apps.list_namespaced_deployment, namespace, label_selector=selector)
        return list(listed.get("items") or [])

    def replace_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._apps.replace_namespaced_deployment, name, namespace, body)

    def annotate(self, kind: str, namespace: str, name: str, annotations: dict[str, str | None]) -> None:
        method = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "Service": self._core.patch_namespaced_service,
        }[kind]
        self._call(
            method,
            name,
            namespace,
            {"metadata": {"annotations": annotations}},
            _content_type="application/merge-patch+json",
        )

    def delete_deployment(self, namespace: str, name: str) -> None:
        self._call(self._apps.delete_namespaced_deployment, name, namespace, ignore_missing=True)

    def create_service(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._core.create_namespaced_service, namespace, body)

    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(self._core.read_namespaced_service, name, namespace)

    def replace_service(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._core.replace_namespaced_service, name, namespace, body)

    def delete_service(self, namespace: str, name: str) -> None:
        self._call(self._core.delete_namespaced_service, name, namespace, ignore_missing=True)

    def create_claim(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(self._core.create_namespaced_persistent_volume_claim, namespace, body)

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(self._core.read_namespaced_persistent_volume_claim, name, namespace)

    def delete_claim(self, namespace: str, name: str) -> None:
        self._call(self._core.delete_namespaced_persistent_volume_claim, name, namespace, ignore_missing=True)


def _in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
