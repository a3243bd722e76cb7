"""The extender v1 wire types, with Pods and Nodes as the kubernetes client serializes them."""

from __future__ import annotations

import pytest
from kubernetes.client import (
    ApiClient,
    V1Container,
    V1Node,
    V1NodeList,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
    V1ResourceRequirements,
)

from scheduler_extender.wire import (
    MAX_EXTENDER_PRIORITY,
    NodeVictims,
    WireError,
    decode_binding_args,
    decode_extender_args,
    decode_preemption_args,
    encode_filter_result,
    encode_host_priorities,
    encode_preemption_result,
)

SERIALIZE = ApiClient().sanitize_for_serialization


def pod_json(name: str = "trainer", uid: str = "uid-1") -> dict:
    pod = V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=V1ObjectMeta(name=name, namespace="ml", uid=uid),
        spec=V1PodSpec(
            containers=[
                V1Container(
                    name="main", image="train", resources=V1ResourceRequirements(limits={"gedge.io/gpu": "1"})
                )
            ]
        ),
    )
    return SERIALIZE(pod)


def node_list_json(*names: str) -> dict:
    return SERIALIZE(V1NodeList(items=[V1Node(metadata=V1ObjectMeta(name=n)) for n in names]))


def test_node_names_mode_as_kube_scheduler_sends_it() -> None:
    args = decode_extender_args({"Pod": pod_json(), "Nodes": None, "NodeNames": ["a", "b"]})
    assert args.node_names == ("a", "b")
    assert args.nodes is None
    assert args.candidates == ("a", "b")
    assert args.pod_label == "ml/trainer"


def test_full_node_list_mode() -> None:
    args = decode_extender_args({"Pod": pod_json(), "Nodes": node_list_json("a", "b"), "NodeNames": None})
    assert args.node_names is None
    assert args.candidates == ("a", "b")


def test_field_names_match_ignoring_case_as_go_does() -> None:
    args = decode_extender_args({"pod": pod_json(), "NODENAMES": ["x"]})
    assert args.candidates == ("x",)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"NodeNames": ["a"]}, "ExtenderArgs.Pod: missing"),
        ({"Pod": [], "NodeNames": ["a"]}, "ExtenderArgs.Pod: expected an object"),
        ({"Pod": {}, "NodeNames": "a"}, "ExtenderArgs.NodeNames: expected a list"),
        ({"Pod": {}, "NodeNames": ["a", 3]}, "ExtenderArgs.NodeNames[1]"),
        ({"Pod": {}, "Nodes": None, "NodeNames": None}, "neither NodeNames nor Nodes"),
        ({"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}, "ExtenderArgs.Nodes.items[0].metadata.name"),
        ([1, 2], "ExtenderArgs: expected an object"),
    ],
)
def test_bad_extender_args_name_the_field(body: object, names: str) -> None:
    with pytest.raises(WireError, match=__import__("re").escape(names)):
        decode_extender_args(body)


def test_filter_result_mirrors_the_request_mode() -> None:
    by_name = decode_extender_args({"Pod": pod_json(), "NodeNames": ["a", "b", "c"]})
    result = encode_filter_result(by_name, passed=["b"], failed={"a": "no GPU"}, unresolvable={"c": "stale"})
    assert result == {
        "Nodes": None,
        "NodeNames": ["b"],
        "FailedNodes": {"a": "no GPU"},
        "FailedAndUnresolvableNodes": {"c": "stale"},
        "Error": "",
    }
    full = decode_extender_args({"Pod": pod_json(), "Nodes": node_list_json("a", "b", "c")})
    result = encode_filter_result(full, passed=["c", "a"])
    assert result["NodeNames"] is None
    assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["a", "c"]


def test_filter_error_carries_no_nodes() -> None:
    result = encode_filter_result(None, error="pod ml/x: bad annotation")
    assert result["Error"] == "pod ml/x: bad annotation"
    assert result["Nodes"] is None and result["NodeNames"] is None


def test_host_priorities_are_a_bare_list_clamped_to_extender_range() -> None:
    assert encode_host_priorities({"a": 14, "b": -1, "c": 7}) == [
        {"Host": "a", "Score": MAX_EXTENDER_PRIORITY},
        {"Host": "b", "Score": 0},
        {"Host": "c", "Score": 7},
    ]


def test_binding_args() -> None:
    args = decode_binding_args({"PodName": "p", "PodNamespace": "ml", "PodUID": "u", "Node": "n1"})
    assert (args.pod_label, args.pod_uid, args.node) == ("ml/p", "u", "n1")
    with pytest.raises(WireError, match=r"ExtenderBindingArgs\.PodUID: expected a string"):
        decode_binding_args({"PodName": "p", "PodNamespace": "ml", "Node": "n1"})
    with pytest.raises(WireError, match=r"ExtenderBindingArgs\.Node: empty"):
        decode_binding_args({"PodName": "p", "PodNamespace": "ml", "PodUID": "u", "Node": ""})


def test_preemption_args_in_both_modes() -> None:
    meta = decode_preemption_args(
        {
            "Pod": pod_json(),
            "NodeNameToVictims": None,
            "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "v1"}, {"UID": "v2"}], "NumPDBViolations": 1}},
        }
    )
    assert meta.victims == {"n1": NodeVictims(("v1", "v2"), 1)}
    full = decode_preemption_args(
        {
            "Pod": pod_json(),
            "NodeNameToVictims": {"n2": {"Pods": [pod_json("victim", "v3")], "NumPDBViolations": 0}},
            "NodeNameToMetaVictims": None,
        }
    )
    assert full.victims == {"n2": NodeVictims(("v3",), 0)}
    assert encode_preemption_result(full.victims) == {
        "NodeNameToMetaVictims": {"n2": {"Pods": [{"UID": "v3"}], "NumPDBViolations": 0}}
    }
    with pytest.raises(WireError, match=r"NodeNameToMetaVictims\.n1\.Pods\[0\]\.UID"):
        decode_preemption_args({"Pod": {}, "NodeNameToMetaVictims": {"n1": {"Pods": [{}]}}})
