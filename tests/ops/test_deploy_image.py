"""deploy/ names the project image once: every gedge-accel workload runs it, and the kustomization's
`images:` entry (what `kustomize edit set image` writes) is the one place a user changes it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROJECT_IMAGE = "ghcr.io/gedge-accel/gedge-accel"
UPSTREAM_IMAGES = {"registry.k8s.io/kube-scheduler"}
"""Images of other projects that deploy/ runs as they are (the second scheduler)."""


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc["spec"]
    if kind in {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}:
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def _workload_images() -> list[tuple[str, str, str]]:
    """(resource file, container name, image) of every container the kustomization applies."""
    found = []
    for resource in _kustomization()["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / resource).read_text()):
            spec = _pod_spec(doc or {})
            if spec is None:
                continue
            for container in spec.get("initContainers", []) + spec["containers"]:
                found.append((resource, container["name"], container["image"]))
    return found


def _name_and_tag(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if "/" not in tag else (image, "")


def test_every_project_workload_runs_the_one_project_image() -> None:
    images = _workload_images()
    assert {resource for resource, _, _ in images} >= {
        "agent/daemonset.yaml",
        "scheduler/extender.yaml",
        "workflow/controller.yaml",
    }
    for resource, container, image in images:
        name, _ = _name_and_tag(image)
        assert name == PROJECT_IMAGE or name in UPSTREAM_IMAGES, (
            f"{resource}: container {container} runs {image}, "
            f"neither {PROJECT_IMAGE} nor a known upstream image"
        )


def test_the_kustomization_images_entry_is_the_one_place_to_change_it() -> None:
    entries = {entry["name"]: entry for entry in _kustomization()["images"]}
    assert PROJECT_IMAGE in entries, "deploy/kustomization.yaml images: has no entry for the project image"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert entries[PROJECT_IMAGE]["newTag"] == version, (
        "the image tag follows the project version (make image)"
    )
    for resource, container, image in _workload_images():
        name, tag = _name_and_tag(image)
        if name == PROJECT_IMAGE:
            assert tag == version, f"{resource}: container {container} runs {image}, not tag {version}"
