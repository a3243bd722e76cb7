"""Runtime catalog and composer: volumes, mounts, env order, the driver restriction, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gedge_model.driver import DriverVersionError, driver_code
from scheduler_extender.workflow.catalog import (
    CatalogError,
    catalog_from_dict,
    load_catalog_configmap,
    load_catalog_file,
)
from scheduler_extender.workflow.composer import (
    LABEL_DRIVER_CODE,
    CompositionError,
    compose,
    node_satisfies,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "runtime-catalog" / "runtime-catalog.yaml"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog_file(str(SHIPPED))


def test_issue_example_composes_into_mounts_env_and_affinity(catalog):
    result = compose(catalog, ["cuda-11.2", "cudnn-8.2.1", "tf2-py38"])
    assert [v["persistentVolumeClaim"]["claimName"] for v in result.volumes] == [
        "gedge-runtime-python",
        "gedge-runtime-libs",
        "gedge-runtime-cuda",
    ]
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in result.volumes)
    mounts = {m["mountPath"]: m["subPath"] for m in result.volume_mounts}
    assert mounts == {
        "/opt/gedge/python": "envs/tf2-py38",
        "/opt/gedge/cudnn": "cudnn-8.2.1-cuda11",
        "/opt/gedge/cuda": "cuda-11.2",
    }
    env = {e["name"]: e["value"] for e in result.env}
    assert env["PATH"] == "/opt/gedge/python/bin:/opt/gedge/cuda/bin:" + catalog.base_path
    assert env["LD_LIBRARY_PATH"] == (
        "/opt/gedge/cudnn/lib64:/opt/gedge/cuda/lib64:/opt/gedge/cuda/extras/CUPTI/lib64"
    )
    assert env["CUDA_HOME"] == "/opt/gedge/cuda" and env["VIRTUAL_ENV"] == "/opt/gedge/python"
    assert result.min_driver == "460.27.03"
    assert result.node_selector_requirements == (
        {"key": LABEL_DRIVER_CODE, "operator": "Gt", "values": ["460027002"]},
    )
    assert result.annotations == {
        "gedge.io/runtime": "cuda-11.2,cudnn-8.2.1,tf2-py38-2.11",
        "gedge.io/min-nvidia-driver": "460.27.03",
    }


def test_env_order_does_not_depend_on_how_the_runtime_is_listed(catalog):
    one = compose(catalog, ["tf2-py38", "cuda-11.2", "cudnn-8.2.1"])
    two = compose(catalog, ["cudnn-8.2.1", "cuda-11.2", "tf2-py38"])
    assert one.env == two.env
    assert one.volume_mounts == two.volume_mounts


def test_runtime_parts_go_before_the_steps_own_path(catalog):
    result = compose(
        catalog, ["cuda-12.2"], container_env={"PATH": "/app/bin:/usr/bin", "LD_LIBRARY_PATH": "/app/lib"}
    )
    env = {e["name"]: e["value"] for e in result.env}
    assert env["PATH"] == "/opt/gedge/cuda/bin:/app/bin:/usr/bin"
    assert env["LD_LIBRARY_PATH"].endswith(":/app/lib")


@pytest.mark.parametrize(
    "runtime",
    [
        ["cuda-11.2", "cudnn-8.2.1", "tf2-py38"],
        ["cuda-12.2", "cudnn-8.9", "torch2-py310"],
        ["cuda-11.8", "cudnn-8.9", "tensorrt-8.6", "torch2-py310"],
        ["cuda-11.8", "torch2-py310-2.1"],
    ],
)
def test_shipped_catalog_composes_the_documented_stacks(catalog, runtime):
    result = compose(catalog, runtime)
    assert len(result.components) == len(runtime)
    assert result.min_driver is not None


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (["cuda-12.2", "cudnn-8.2.1"], "cudnn-8.2.1 requires cuda>=11.0,<12, but the runtime has cuda-12.2"),
        (["cudnn-8.2.1"], "cudnn-8.2.1 requires cuda>=11.0,<12, but the runtime has no cuda"),
        (["cuda-11.2", "cuda-12.2"], "cuda-11.2 conflicts with cuda-12.2: one version of cuda"),
        (["cuda-11.8", "tf2-py38", "torch2-py310"], "tf2-py38-2.11 conflicts with torch2-py310-2.1"),
        (
            ["cuda-12.2", "cudnn-8.9", "tensorrt-8.6"],
            "tensorrt-8.6 requires cuda>=11.8,<12.2, but the runtime has cuda-12.2",
        ),
        (["cuda-11.8", "tensorrt-8.6"], "tensorrt-8.6 requires cudnn>=8.9,<9, but the runtime has no cudnn"),
        (["cuda-11.4"], "the catalog has cuda 11.2, 11.8, 12.2, not 11.4"),
        (["pytorch"], "runtime 'pytorch': unknown component"),
        (["cuda"], "runtime 'cuda': say which version (cuda-11.2, cuda-11.8, cuda-12.2)"),
    ],
)
def test_refusals_name_both_sides(catalog, runtime, message):
    with pytest.raises(CompositionError) as info:
        compose(catalog, runtime)
    assert message in str(info.value)


def _catalog(*components: dict, **top) -> dict:
    base = {"name": "x", "version": "1.0", "kind": "tool", "volume": "pvc", "mountPath": "/opt/x"}
    return {"components": [{**base, **c} for c in components], **top}


def test_explicit_conflict_with_a_version_range():
    raw = _catalog(
        {"name": "a", "mountPath": "/opt/a", "conflicts": ["b<2"]},
        {"name": "b", "version": "1.5", "mountPath": "/opt/b"},
        {"name": "b", "version": "2.1", "mountPath": "/opt/b"},
    )
    catalog = catalog_from_dict(raw)
    with pytest.raises(CompositionError, match=r"a-1\.0 conflicts with b-1\.5 \(b<2\)"):
        compose(catalog, ["a", "b-1.5"])
    assert len(compose(catalog, ["a", "b-2.1"]).components) == 2


def test_overlapping_mounts_and_clashing_variables_are_refused():
    catalog = catalog_from_dict(
        _catalog(
            {"name": "a", "mountPath": "/opt/a", "env": {"vars": {"HOME_X": "/a"}}},
            {"name": "b", "mountPath": "/opt/a/sub"},
            {"name": "c", "mountPath": "/opt/c", "env": {"vars": {"HOME_X": "/c"}}},
        )
    )
    with pytest.raises(CompositionError, match=r"a-1\.0 and b-1\.0 both mount at /opt/a / /opt/a/sub"):
        compose(catalog, ["a", "b"])
    with pytest.raises(CompositionError, match=r"a-1\.0 sets HOME_X=/a but c-1\.0 sets HOME_X=/c"):
        compose(catalog, ["a", "c"])


def test_components_on_one_claim_share_one_pod_volume():
    catalog = catalog_from_dict(
        _catalog(
            {"name": "a", "mountPath": "/opt/a", "subPath": "a"},
            {"name": "b", "mountPath": "/opt/b", "subPath": "b"},
        )
    )
    result = compose(catalog, ["a", "b"])
    assert len(result.volumes) == 1
    assert {m["name"] for m in result.volume_mounts} == {result.volumes[0]["name"]}
    assert result.node_selector_requirements == ()
    assert "gedge.io/min-nvidia-driver" not in result.annotations


def test_highest_minimum_driver_wins():
    catalog = catalog_from_dict(
        _catalog(
            {"name": "a", "mountPath": "/opt/a", "minDriver": "525.60.13"},
            {"name": "b", "mountPath": "/opt/b", "minDriver": "535.54.03"},
            {"name": "c", "mountPath": "/opt/c", "minDriver": "470.57.02"},
        )
    )
    assert compose(catalog, ["c", "a", "b"]).min_driver == "535.54.03"


@pytest.mark.parametrize(
    ("version", "code"),
    [("535.54.03", 535054003), ("460.27.03", 460027003), ("550.54", 550054000), ("1000.1.1", 1000001001)],
)
def test_driver_code(version, code):
    assert driver_code(version) == code


@pytest.mark.parametrize("version", ["535", "535.54.03.1", "r535", "535.5400.1", ""])
def test_driver_code_refuses_other_text(version):
    with pytest.raises(DriverVersionError):
        driver_code(version)


@pytest.mark.parametrize(
    ("label", "allowed"),
    [
        ("460.27.03", True),
        ("460.27.02", False),
        ("460.32.03", True),
        ("455.45.01", False),
        ("535.54.03", True),
    ],
)
def test_gt_affinity_and_the_reason_agree(catalog, label, allowed):
    result = compose(catalog, ["cuda-11.2"])
    requirement = result.node_selector_requirements[0]
    labels = {"gedge.io/nvidia-driver": label, LABEL_DRIVER_CODE: str(driver_code(label))}
    # what kube-scheduler's Gt does with an integer label
    assert (int(labels[requirement["key"]]) > int(requirement["values"][0])) is allowed
    ok, reason = node_satisfies(result, labels)
    assert ok is allowed
    if not allowed:
        assert f"NVIDIA driver {label} is older than 460.27.03" in reason


def test_node_without_driver_label_is_refused(catalog):
    ok, reason = node_satisfies(compose(catalog, ["cuda-12.2"]), {})
    assert not ok and "no gedge.io/nvidia-driver-code label" in reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "eleven"}, "version: 'eleven' is not a version"),
        ({"requires": ["cuda >>> 11"]}, "not a requirement like"),
        ({"requires": ["cuda[extra]>=11"]}, "only a name and version specifiers"),
        ({"mountPath": "opt/x"}, "mountPath: an absolute path is required"),
        ({"subPath": "../etc"}, "subPath: must be a relative path"),
        ({"minDriver": "new"}, "minDriver: 'new' is not an NVIDIA driver version"),
        ({"volume": None}, "volume: a PersistentVolumeClaim name is required"),
        ({"env": {"vars": {"PATH": "/x"}}}, "PATH parts go in env.path"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"name": "Bad Name"}, "name: 'Bad Name'"),
    ],
)
def test_catalog_errors_name_the_component_and_field(change, message):
    with pytest.raises(CatalogError) as info:
        catalog_from_dict(_catalog(change))
    assert message in str(info.value)


def test_catalog_refuses_duplicates_and_double_defaults():
    with pytest.raises(CatalogError, match=r"x-1\.0\.0 is listed twice \(first as x-1\.0\)"):
        catalog_from_dict(_catalog({}, {"version": "1.0.0"}))
    with pytest.raises(CatalogError, match="more than one default"):
        catalog_from_dict(_catalog({"default": True}, {"version": "2.0", "default": True}))


def test_catalog_from_a_configmap_as_the_api_returns_it():
    configmap = yaml.safe_load(SHIPPED.read_text())
    assert configmap["kind"] == "ConfigMap"
    catalog = load_catalog_configmap(configmap)
    assert {c.id for c in catalog.components} >= {
        "cuda-11.2",
        "cuda-11.8",
        "cuda-12.2",
        "cudnn-8.2.1",
        "cudnn-8.9",
    }
    with pytest.raises(
        CatalogError, match=r"configmap gedge-system/gedge-runtime-catalog: no data key 'other.yaml'"
    ):
        load_catalog_configmap(configmap, key="other.yaml")


def test_plain_catalog_document_loads_the_same(tmp_path):
    plain = tmp_path / "catalog.yaml"
    plain.write_text(yaml.safe_load(SHIPPED.read_text())["data"]["catalog.yaml"])
    assert load_catalog_file(str(plain)) == load_catalog_file(str(SHIPPED))


def test_shipped_minimum_drivers_are_nvidias_published_ones(catalog):
    assert {c.id: c.min_driver for c in catalog.components if c.kind == "cuda"} == {
        "cuda-11.2": "460.27.03",
        "cuda-11.8": "520.61.05",
        "cuda-12.2": "535.54.03",
    }
