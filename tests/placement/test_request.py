"""parse_pod_request over Pod JSON made by the kubernetes client's own serializer."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import (
    ApiClient,
    V1Container,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1ResourceRequirements,
)

from scheduler_extender.placement.request import PodRequest, RequestError, parse_pod_request


def container(name: str = "main", requests=None, limits=None, restart_policy=None) -> V1Container:
    return V1Container(
        name=name,
        image="busybox",
        resources=V1ResourceRequirements(requests=requests, limits=limits),
        restart_policy=restart_policy,
    )


def pod(
    containers: list[V1Container] | None = None,
    init: list[V1Container] | None = None,
    annotations: dict[str, str] | None = None,
    overhead: dict[str, str] | None = None,
) -> dict[str, Any]:
    body = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name="train", namespace="ml", uid="uid-1", annotations=annotations),
        spec=V1PodSpec(containers=containers or [container()], init_containers=init, overhead=overhead),
    )
    return ApiClient().sanitize_for_serialization(body)


def test_serializer_gives_camel_case_and_the_parser_reads_it():
    raw = pod(
        [container(limits={"gedge.io/gpu": "2", "gedge.io/sriov-vf": "1", "gedge.io/rdma": "1"})],
        annotations={
            "gedge.io/topology-aware": "true",
            "gedge.io/topology-policy": "single-numa",
            "gedge.io/communication": '["SRIOV", "RDMA"]',
            "gedge.io/compute": '["GPU"]',
            "gedge.io/runtime": "cuda-11.2,cudnn-8.2.1,tf2-py38",
        },
    )
    assert "initContainers" not in raw["spec"] and "containers" in raw["spec"]
    request = parse_pod_request(raw)
    assert request == PodRequest(
        namespace="ml",
        name="train",
        uid="uid-1",
        gpus=2,
        sriov_vfs=1,
        rdma=1,
        topology_aware=True,
        policy="single-numa",
        communication=("RDMA", "SRIOV"),
        compute=("GPU",),
        runtime=("cuda-11.2", "cudnn-8.2.1", "tf2-py38"),
    )
    assert request.wants_placement()


def test_plain_pod_wants_nothing():
    request = parse_pod_request(pod([container(requests={"cpu": "500m", "memory": "1Gi"})]))
    assert not request.wants_placement()
    assert request.cpus == 0 and request.topology_aware and request.policy == "best-effort"


def test_alignment_is_the_default_and_a_pod_opts_out_with_false():
    gpus = [container(limits={"gedge.io/gpu": "2"})]
    assert parse_pod_request(pod(gpus)).topology_aware
    opted_out = parse_pod_request(pod(gpus, annotations={"gedge.io/topology-aware": "false"}))
    assert not opted_out.topology_aware and opted_out.policy == "best-effort"


@pytest.mark.parametrize("spelling", ["single-numa-node", "single-numa"])
def test_kubelets_policy_name_and_the_short_alias_mean_one_policy(spelling):
    raw = pod([container(limits={"gedge.io/gpu": "1"})], annotations={"gedge.io/topology-policy": spelling})
    request = parse_pod_request(raw)
    assert request.topology_aware and request.policy == "single-numa"
    with pytest.raises(RequestError, match="single-numa-node"):
        parse_pod_request(
            pod([container(limits={"gedge.io/gpu": "1"})], annotations={"gedge.io/topology-policy": "numa"})
        )


def test_app_containers_sum_and_init_containers_take_the_maximum():
    raw = pod(
        [container("a", limits={"gedge.io/gpu": "1"}), container("b", limits={"gedge.io/gpu": "2"})],
        init=[container("setup", limits={"gedge.io/gpu": "4", "gedge.io/sriov-vf": "1"})],
    )
    request = parse_pod_request(raw)
    assert request.gpus == 4
    assert request.sriov_vfs == 1


def test_restartable_sidecars_add_to_the_app_sum_and_to_later_init_peaks():
    raw = pod(
        [container("app", limits={"gedge.io/gpu": "2"})],
        init=[
            container("sidecar", limits={"gedge.io/gpu": "1"}, restart_policy="Always"),
            container("warmup", limits={"gedge.io/gpu": "2"}),
        ],
    )
    # app 2 + sidecar 1 = 3 running; warmup peak = 2 + sidecar 1 = 3.
    assert parse_pod_request(raw).gpus == 3
    raw = pod(
        [container("app", limits={"gedge.io/gpu": "1"})],
        init=[
            container("sidecar", limits={"gedge.io/gpu": "1"}, restart_policy="Always"),
            container("warmup", limits={"gedge.io/gpu": "3"}),
        ],
    )
    # running: 1 + 1 = 2; warmup peak: 3 + 1 = 4.
    assert parse_pod_request(raw).gpus == 4


def test_limits_stand_in_for_requests_and_mig_profiles_are_collected():
    raw = pod(
        [
            container("a", requests={"gedge.io/mig-1g.10gb": "1"}),
            container("b", limits={"gedge.io/mig-1g.10gb": "2", "gedge.io/mig-3g.40gb": "1"}),
            container("c", requests={"gedge.io/gpu-shared": "1"}, limits={"gedge.io/gpu-shared": "1"}),
        ]
    )
    request = parse_pod_request(raw)
    assert request.mig == (("1g.10gb", 3), ("3g.40gb", 1))
    assert request.gpu_shared == 1


def test_pinned_cpus_count_whole_cpus_equal_in_requests_and_limits():
    raw = pod(
        [
            container("a", requests={"cpu": "2000m"}, limits={"cpu": "2", "gedge.io/gpu": "1"}),
            container("b", limits={"cpu": "2"}),
        ],
        annotations={"gedge.io/cpu-pinning": "true"},
        overhead={"cpu": "250m"},
    )
    request = parse_pod_request(raw)
    assert request.cpu_pinning and request.cpus == 4


@pytest.mark.parametrize(
    ("requests", "limits", "words"),
    [
        ({"cpu": "1500m"}, {"cpu": "1500m"}, "not a whole number"),
        ({"cpu": "1"}, {"cpu": "2"}, "differ"),
        ({"cpu": "2"}, None, "no cpu limit"),
    ],
)
def test_pinning_needs_guaranteed_integer_cpus(requests, limits, words):
    raw = pod([container(requests=requests, limits=limits)], annotations={"gedge.io/cpu-pinning": "true"})
    with pytest.raises(RequestError) as err:
        parse_pod_request(raw)
    assert err.value.field == "gedge.io/cpu-pinning"
    assert "ml/train" in str(err.value) and words in str(err.value)


@pytest.mark.parametrize(
    ("annotations", "field", "words"),
    [
        ({"gedge.io/topology-aware": "yes"}, "gedge.io/topology-aware", '"true" or "false"'),
        ({"gedge.io/topology-policy": "tight"}, "gedge.io/topology-policy", "not one of"),
        (
            {"gedge.io/topology-aware": "false", "gedge.io/topology-policy": "restricted"},
            "gedge.io/topology-policy",
            "needs gedge.io/topology-aware",
        ),
        ({"gedge.io/communication": "SRIOV"}, "gedge.io/communication", "not a JSON list"),
        ({"gedge.io/communication": '{"a": 1}'}, "gedge.io/communication", "JSON list of strings"),
        ({"gedge.io/communication": '["SRIOV", "IB"]'}, "gedge.io/communication", "'IB'"),
        ({"gedge.io/compute": '["TPU"]'}, "gedge.io/compute", "'TPU'"),
        ({"gedge.io/compute": '["GPU"]'}, "gedge.io/compute", "requests none of"),
        ({"gedge.io/runtime": "cuda-11.2,,tf2"}, "gedge.io/runtime", "empty component"),
        ({"gedge.io/runtime": "cuda 11"}, "gedge.io/runtime", "bad component"),
        ({"gedge.io/cpu-pinning": "1"}, "gedge.io/cpu-pinning", '"true" or "false"'),
    ],
)
def test_malformed_annotations_name_pod_and_field(annotations, field, words):
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod(annotations=annotations))
    assert err.value.field == field
    assert str(err.value).startswith(f"pod ml/train: {field}:")
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("limits", "requests", "field", "words"),
    [
        ({"gedge.io/tpu": "1"}, None, "gedge.io/tpu", "unknown gedge.io resource"),
        ({"gedge.io/mig-huge": "1"}, None, "gedge.io/mig-huge", "unknown gedge.io resource"),
        ({"gedge.io/gpu": "1500m"}, None, "gedge.io/gpu", "whole number"),
        ({"gedge.io/gpu": "2"}, {"gedge.io/gpu": "1"}, "gedge.io/gpu", "must be equal"),
        ({"gedge.io/gpu": "lots"}, None, "gedge.io/gpu", "bad quantity"),
    ],
)
def test_bad_gedge_resources_are_errors(limits, requests, field, words):
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod([container(requests=requests, limits=limits)]))
    assert err.value.field == field and words in str(err.value)


def test_policy_alone_implies_topology_aware_and_foreign_annotations_are_ignored():
    raw = pod(
        [container(limits={"gedge.io/gpu": "1"})],
        annotations={"gedge.io/topology-policy": "restricted", "gedge.io/allocated-gpu": "x", "other/x": "y"},
    )
    request = parse_pod_request(raw)
    assert request.topology_aware and request.policy == "restricted"


def test_not_an_object_is_an_error():
    with pytest.raises(RequestError):
        parse_pod_request({"metadata": {"name": "x"}, "spec": {"containers": "nope"}})
    with pytest.raises(RequestError):
        parse_pod_request(["not", "a", "pod"])  # type: ignore[arg-type]


def test_mig_profiles_with_media_extensions_use_the_legal_resource_name():
    request = parse_pod_request(pod([container(limits={"gedge.io/mig-1g.10gb.me": "1"})]))
    assert request.mig == (("1g.10gb+me", 1),)


def test_oversized_annotation_and_device_counts_are_refused():
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod(annotations={"gedge.io/runtime": "a" * 5000}))
    assert err.value.field == "gedge.io/runtime" and "longer than" in str(err.value)
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod([container(limits={"gedge.io/gpu": "100000"})]))
    assert err.value.field == "gedge.io/gpu" and "more than" in str(err.value)


def test_non_string_annotation_values_are_errors():
    raw = pod()
    raw["metadata"]["annotations"] = {"gedge.io/topology-aware": True}
    with pytest.raises(RequestError) as err:
        parse_pod_request(raw)
    assert err.value.field == "gedge.io/topology-aware" and "expected a string" in str(err.value)


def test_min_driver_is_read_trimmed_and_optional():
    assert parse_pod_request(pod(annotations={"gedge.io/min-nvidia-driver": " 535.54.03 "})).min_driver == (
        "535.54.03"
    )
    assert parse_pod_request(pod(annotations={"gedge.io/min-nvidia-driver": "550.54"})).min_driver == "550.54"
    request = parse_pod_request(pod())
    assert request.min_driver is None and not request.wants_placement()


@pytest.mark.parametrize("value", ["r535", "535", "", "535.54.03,550.54"])
def test_malformed_min_driver_names_pod_and_annotation(value: str):
    with pytest.raises(RequestError) as err:
        parse_pod_request(pod(annotations={"gedge.io/min-nvidia-driver": value}))
    assert err.value.field == "gedge.io/min-nvidia-driver"
    assert str(err.value).startswith(
        f"pod {err.value.pod}: gedge.io/min-nvidia-driver: {value.strip()!r} is not"
    )
