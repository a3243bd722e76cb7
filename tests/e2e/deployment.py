"""deploy/ applied as a user applies it: kustomize over an overlay, objects created through the API.

- kustomize and kube-proxy come from node/build_tools.sh (pinned, cached).
- The overlay names the repository's deploy/ as its base and changes only what a
  user changes: the project image (`images:`) and addresses (the extender's
  Service address and kube-scheduler's URL for it, see `overlay`).
- No cert-manager image exists here: CertManagerStandIn serves the cert-manager
  objects deploy/tls makes (its CRDs, schema-less; each Certificate's Secret, signed
  as its Issuer says) so the manifests apply unchanged.
- KubeProxy runs kube-proxy (iptables mode) on the real node as the node's
  system:kube-proxy, so pods reach the API server and the extender's Service.
"""

from __future__ import annotations

import base64
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from gedge_model.certs import create_ca, issue
from tests.e2e.cluster_objects import wait_for
from tests.e2e.control_plane import ControlPlane, kubeconfig_text
from tests.e2e.oci_image import ImageFile, write_archive
from tests.e2e.processes import HarnessError, ManagedProcess, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEPLOY = REPO / "deploy"
BUILD_SCRIPT = HERE / "node" / "build_tools.sh"
TOOLS = ("kustomize", "kube-proxy")
PROJECT_IMAGE = "ghcr.io/gedge-accel/gedge-accel"
"""The image name deploy/ uses for every gedge-accel workload."""
SCHEDULER_IMAGE_NAME = "registry.k8s.io/kube-scheduler"
EXTENDER_SERVICE_IP = "10.96.88.88"
"""The address the overlay gives the extender's Service (inside control_plane.SERVICE_CIDR)."""
CERT_MANAGER_GROUP = "cert-manager.io"


def tools_dir() -> Path:
    """build_tools.sh's cache directory for the pins ($GEDGE_E2E_TOOLS_DIR overrides)."""
    override = os.environ.get("GEDGE_E2E_TOOLS_DIR")
    if override:
        return Path(override)
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--print-dir"], check=True, capture_output=True, text=True, timeout=60
    )
    return Path(result.stdout.strip())


def missing_tools(directory: Path) -> list[str]:
    return [str(directory / n) for n in TOOLS if not os.access(directory / n, os.X_OK)]


def scheduler_image(path: Path, binary: Path, tag: str) -> tuple[Path, str]:
    """An image of the pinned kube-scheduler binary named as deploy/ names it: (archive, reference)."""
    reference = f"{SCHEDULER_IMAGE_NAME}:{tag}"
    archive = write_archive(path, reference, [ImageFile("/bin/kube-scheduler", binary)])
    return archive, reference


def overlay(directory: Path, image: str, extender_ip: str = EXTENDER_SERVICE_IP) -> Path:
    """Write a kustomization in `directory` over the repository's deploy/ with `image` (name:tag) as
    the project image, the extender's Service at `extender_ip` and kube-scheduler calling it there.

    kube-scheduler's URL names the address (no cluster DNS here) and its tlsConfig.serverName the
    Service's DNS name, which the extender's certificate carries. Returns `directory`.
    """
    name, _, tag = image.rpartition(":")
    source = yaml.safe_load((DEPLOY / "scheduler" / "gedge-scheduler-config.yaml").read_text())
    configuration = yaml.safe_load(source["data"]["config.yaml"])
    for extender in configuration["extenders"]:
        host = extender["urlPrefix"].split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        port = host[1] if len(host) == 2 else "443"
        extender["urlPrefix"] = f"https://{extender_ip}:{port}"
        extender.setdefault("tlsConfig", {})["serverName"] = host[0]
    directory.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, directory)],
        "images": [{"name": PROJECT_IMAGE, "newName": name, "newTag": tag}],
        "patches": [
            {
                "target": {"kind": "ConfigMap", "name": "gedge-scheduler-config"},
                "patch": yaml.safe_dump(
                    [
                        {
                            "op": "replace",
                            "path": "/data/config.yaml",
                            "value": yaml.safe_dump(configuration, sort_keys=False),
                        }
                    ]
                ),
            },
            {
                "target": {"kind": "Service", "name": "gedge-extender"},
                "patch": yaml.safe_dump([{"op": "add", "path": "/spec/clusterIP", "value": extender_ip}]),
            },
        ],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


def render(kustomize: Path, directory: Path) -> list[dict[str, Any]]:
    """`kustomize build DIRECTORY`: the documents a user would apply."""
    result = subprocess.run(
        [str(kustomize), "build", str(directory)], capture_output=True, text=True, timeout=120
    )
    if result.returncode:
        raise HarnessError(f"kustomize build {directory} failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def apply(api: k8s.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Create each document through the API in order (what `kubectl create -f` does)."""
    client = dynamic.DynamicClient(api)
    for doc in docs:
        resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace") if resource.namespaced else None
        try:
            resource.create(body=doc, namespace=namespace)
        except ApiException as exc:
            raise HarnessError(
                f"creating {doc['kind']} {doc['metadata']['name']} failed: {exc.status} {exc.body}"
            ) from None


def _established(api: k8s.ApiClient, name: str) -> None:
    extensions = k8s.ApiextensionsV1Api(api)
    wait_for(
        lambda: extensions.read_custom_resource_definition(name).status,
        lambda status: any(
            c.type == "Established" and c.status == "True" for c in (status and status.conditions) or ()
        ),
    )


class CertManagerStandIn:
    """cert-manager's part in deploy/tls: its Issuer and Certificate kinds, and each Certificate's
    Secret (tls.crt, tls.key, ca.crt) signed as its Issuer says (selfSigned, or ca from a Secret)."""

    KINDS = (("Issuer", "issuers"), ("Certificate", "certificates"))

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)

    def install(self) -> None:
        """Create the Issuer and Certificate CRDs (v1, namespaced, fields kept as given)."""
        extensions = k8s.ApiextensionsV1Api(self.api)
        for kind, plural in self.KINDS:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            extensions.create_custom_resource_definition(
                {
                    "apiVersion": "apiextensions.k8s.io/v1",
                    "kind": "CustomResourceDefinition",
                    "metadata": {"name": f"{plural}.{CERT_MANAGER_GROUP}"},
                    "spec": {
                        "group": CERT_MANAGER_GROUP,
                        "scope": "Namespaced",
                        "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                        "versions": [
                            {
                                "name": "v1",
                                "served": True,
                                "storage": True,
                                "schema": {"openAPIV3Schema": schema},
                            }
                        ],
                    },
                }
            )
        for _, plural in self.KINDS:
            _established(self.api, f"{plural}.{CERT_MANAGER_GROUP}")

    def issue_all(self, namespace: str) -> list[str]:
        """Make the Secret of every Certificate in `namespace` (CA certificates first); their names."""
        certificates = self.custom.list_namespaced_custom_object(
            CERT_MANAGER_GROUP, "v1", namespace, "certificates"
        )["items"]
        made = []
        for certificate in sorted(certificates, key=lambda c: not c["spec"].get("isCA")):
            spec = certificate["spec"]
            issuer = self.custom.get_namespaced_custom_object(
                CERT_MANAGER_GROUP, "v1", namespace, "issuers", spec["issuerRef"]["name"]
            )["spec"]
            if spec.get("isCA") and "selfSigned" in issuer:
                cert, key = create_ca(spec["commonName"])
                ca = cert
            elif "ca" in issuer:
                ca_secret = self.core.read_namespaced_secret(issuer["ca"]["secretName"], namespace)
                ca_cert, ca_key = (_decoded(ca_secret, k) for k in ("tls.crt", "tls.key"))
                cert, key = issue(ca_cert, ca_key, spec["commonName"], dns=spec.get("dnsNames") or ())
                ca = ca_cert
            else:
                raise HarnessError(f"Certificate {spec['secretName']}: issuer {issuer} is not served here")
            self.core.create_namespaced_secret(
                namespace,
                k8s.V1Secret(
                    metadata=k8s.V1ObjectMeta(name=spec["secretName"]),
                    type="kubernetes.io/tls",
                    string_data={"tls.crt": cert.decode(), "tls.key": key.decode(), "ca.crt": ca.decode()},
                ),
            )
            made.append(spec["secretName"])
        return made

    def ca(self, namespace: str, secret: str = "gedge-ca") -> tuple[bytes, bytes]:
        """The CA's (certificate, key) PEM from its Secret."""
        found = self.core.read_namespaced_secret(secret, namespace)
        return _decoded(found, "tls.crt"), _decoded(found, "tls.key")


def _decoded(secret: k8s.V1Secret, key: str) -> bytes:
    return base64.b64decode(secret.data[key])


class KubeProxy:
    """kube-proxy (iptables mode) on the real node as system:kube-proxy; its chains are the node's
    to remove (real_node.HostState drops chains that were not there before)."""

    def __init__(self, plane: ControlPlane, binary: Path, node_name: str, cluster_cidr: str, workdir: Path):
        assert plane.ca is not None
        workdir.mkdir(parents=True, exist_ok=True)
        client = plane.ca.issue("system:kube-proxy", client=True)
        kubeconfig = workdir / "kube-proxy.kubeconfig"
        kubeconfig.write_text(kubeconfig_text(plane.server, plane.ca.cert, client, "system:kube-proxy"))
        self.healthz_port = free_port()
        configuration = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": node_name,
            "clusterCIDR": cluster_cidr,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{self.healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # Leave the host's conntrack table sizes and timeouts as they are.
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        config = workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(configuration, sort_keys=False))
        self.process = ManagedProcess(
            "kube-proxy", [str(binary), f"--config={config}", "--v=1"], plane.log_dir / "kube-proxy.log"
        )

    def start(self) -> KubeProxy:
        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=5) as r:
                return r.status == 200

        self.process.start()
        self.process.wait_until(healthy, 120.0, "answered /healthz")
        return self

    def stop(self) -> None:
        self.process.stop()
