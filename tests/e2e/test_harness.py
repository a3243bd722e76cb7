"""The harness's own contracts: the pins agree with each other, deploy/'s configuration is used as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.e2e.control_plane import ControlPlane
from tests.e2e.controlplane.pin import staging_version
from tests.e2e.edge_cluster import DEPLOY, SCHEDULER_CONFIG, deploy_scheduler_configuration, manifests

CONTROLPLANE = Path(__file__).parent / "controlplane"


def _requires(gomod: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\S+) (v\S+)(?: // indirect)?$", gomod, re.MULTILINE))


def _replaces(gomod: str) -> dict[str, tuple[str, str]]:
    return {m[0]: (m[1], m[2]) for m in re.findall(r"^\s+(\S+) => (\S+) (v\S+)$", gomod, re.MULTILINE)}


def test_every_k8s_module_is_replaced_by_the_staging_release_of_the_pinned_kubernetes() -> None:
    gomod = (CONTROLPLANE / "kube" / "go.mod").read_text()
    kubernetes = _requires(gomod)["k8s.io/kubernetes"]
    staged = staging_version(kubernetes)
    replaces = _replaces(gomod)
    required_staging = {m for m, v in _requires(gomod).items() if m.startswith("k8s.io/") and v == "v0.0.0"}
    assert required_staging, "k8s.io/kubernetes requires its staging modules at v0.0.0"
    assert required_staging <= set(replaces)
    assert {target for target, _ in replaces.values()} == set(replaces), "each module replaced by itself"
    assert {version for _, version in replaces.values()} == {staged}


def test_staging_version_follows_the_kubernetes_minor_and_patch() -> None:
    assert staging_version("v1.33.13") == "v0.33.13"
    with pytest.raises(SystemExit, match=r"v1\.MINOR\.PATCH"):
        staging_version("1.33")


def test_deploy_scheduler_configuration_changes_only_the_extender_url() -> None:
    configmap = next(d for d in manifests(SCHEDULER_CONFIG) if d["kind"] == "ConfigMap")
    (text,) = configmap["data"].values()
    original = yaml.safe_load(text)
    loaded = deploy_scheduler_configuration("http://127.0.0.1:4242")
    assert [e["urlPrefix"] for e in loaded["extenders"]] == ["http://127.0.0.1:4242"] * len(
        original["extenders"]
    )
    for extender in original["extenders"]:
        extender["urlPrefix"] = "http://127.0.0.1:4242"
    assert loaded == original


def scheduler_configurations() -> list[Path]:
    return sorted(
        path
        for path in (DEPLOY / "scheduler").glob("*.yaml")
        if "KubeSchedulerConfiguration" in path.read_text()
    )


@pytest.mark.parametrize("source", scheduler_configurations(), ids=lambda p: p.name)
def test_real_kube_scheduler_accepts_each_deploy_configuration(
    control_plane: ControlPlane, source: Path
) -> None:
    configuration = deploy_scheduler_configuration("http://127.0.0.1:9", source)
    configuration["leaderElection"] = {"leaderElect": False}
    for profile in configuration.get("profiles") or []:
        profile["schedulerName"] = f"validate-{source.stem}"
    scheduler = control_plane.start_scheduler(configuration, name=f"validate-{source.stem}")
    try:
        assert scheduler.running
    finally:
        control_plane.stop_scheduler(scheduler)
