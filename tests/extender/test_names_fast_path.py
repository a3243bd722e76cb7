"""The same names list decoded once and answered from the shape table: the encoded replies equal
what placing afresh gives, through binds, new reports, added and dropped nodes, reordered lists
and other pod shapes."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from gedge_model import NodeState
from scheduler_extender.http.app import ArgsDecoder, build_app, decode_json
from scheduler_extender.node_source import NodeView, StaticNodeSource
from scheduler_extender.verb_metrics import filter_summary
from scheduler_extender.verbs import Extender
from scheduler_extender.wire import BindingArgs, WireError, decode_extender_args
from tests.extender.conftest import RecordingBinder, pod
from tests.extender.servers import ServerThread, post
from tests.extender.test_answer_tables import SHAPES, PlainSource, mixed_states
from tests.support.synthetic import dgx_like, edge_box


def body(spec: dict[str, Any], names: list[str] | tuple[str, ...]) -> bytes:
    """ExtenderArgs as kube-scheduler's Go encoder writes it: compact, in field order."""
    return orjson.dumps({"Pod": spec, "Nodes": None, "NodeNames": list(names)})


def by_host(scores: list[dict[str, Any]]) -> dict[str, int]:
    return {s["Host"]: s["Score"] for s in scores}


def refusals(summary_refusals: Any) -> dict[str, int]:
    return {cls: count for cls, count in summary_refusals.items() if count}


class Pair:
    """The extender under test (table answers, encoded replies, the names decoder) beside one that
    places afresh on every request."""

    def __init__(self, states: dict[str, NodeState]) -> None:
        self.source = StaticNodeSource(states)
        self.kept = Extender(self.source, RecordingBinder())
        self.fresh_source = PlainSource(states)
        self.fresh = Extender(self.fresh_source, RecordingBinder())
        self.decoder = ArgsDecoder()

    def put(self, state: NodeState) -> None:
        self.source.put(NodeView(state))
        self.fresh_source.views[state.node_name] = NodeView(state)

    def drop(self, name: str) -> None:
        self.source.drop(name)
        del self.fresh_source.views[name]

    def check(self, spec: dict[str, Any], names: list[str]) -> list[str]:
        """Filter, then prioritize the passed nodes, on both; asserts they agree; returns the passed."""
        reply = self.kept.filter_json(self.decoder.decode(body(spec, names)))
        if reply.passed is not None:
            self.decoder.remember(*reply.passed)
        got = orjson.loads(reply.body)
        expected = self.fresh.filter(decode_extender_args(orjson.loads(body(spec, names))))
        assert sorted(got["NodeNames"]) == sorted(expected["NodeNames"])
        assert {**got, "NodeNames": None} == {**expected, "NodeNames": None}
        assert refusals(reply.summary.refusals) == refusals(filter_summary(expected).refusals)
        assert reply.summary.passed_any == bool(expected["NodeNames"])
        passed = got["NodeNames"]
        if passed:
            args = self.decoder.decode(body(spec, passed))
            if reply.passed is not None:
                # kube-scheduler sends the filter's list back: it is known, not decoded again.
                assert args.node_names is reply.passed[1]
            scores = orjson.loads(self.kept.prioritize_json(args))
            fresh_args = decode_extender_args(orjson.loads(body(spec, passed)))
            # The whole table's reply lists hosts in its own order.
            assert by_host(scores) == by_host(self.fresh.prioritize(fresh_args))
            assert len(scores) == len(passed)
        return passed

    def bind(self, spec: dict[str, Any], node: str) -> None:
        meta = spec["metadata"]
        for extender in (self.kept, self.fresh):
            extender.filter(decode_extender_args(orjson.loads(body(spec, [node]))))
            answer = extender.bind(BindingArgs(meta["name"], meta["namespace"], meta["uid"], node))
            assert answer == {"Error": ""}


def test_the_same_names_bytes_give_the_same_tuple_and_other_bytes_decode_afresh() -> None:
    decoder = ArgsDecoder(max_lists=2)
    spec = pod("p", limits={"gedge.io/gpu": "1"})
    first = decoder.decode(body(spec, ["a", "b"]))
    assert first.node_names == ("a", "b") and first.nodes is None and first.pod == spec
    other = decoder.decode(body(pod("q"), ["a", "b"]))
    assert other.node_names is first.node_names and other.pod == pod("q")
    # The same pod bytes again (prioritize after filter) give the same pod object.
    assert decoder.decode(body(pod("q"), ["a"])).pod is other.pod
    assert decoder.decode(body(spec, ["a"])).pod == spec
    spaced = b'{"Pod": {}, "Nodes": null, "NodeNames": ["a",  "b"]}'
    assert decoder.decode(spaced).node_names == ("a", "b")
    decoder.decode(body(spec, ["c"]))
    decoder.decode(body(spec, ["d"]))
    # Two lists kept: the first is decoded again, equal but a new tuple.
    again = decoder.decode(body(spec, ["a", "b"])).node_names
    assert again == ("a", "b") and again is not first.node_names


@pytest.mark.parametrize(
    "raw",
    [
        b'{"pod": {"metadata": {"name": "p"}}, "nodes": null, "nodenames": ["a"]}',
        b'{"Pod": {"metadata": {"name": "p"}}, "NodeNames": ["a"]}',
        b'{"Pod": {"metadata": {"name": "p"}}, "Nodes": {"items": [{"metadata": {"name": "a"}}]}, '
        b'"NodeNames": null}',
        b'{"Pod": {"metadata": {"name": "p"}}, "Nodes": null, "NodeNames": ["a", "a"]}',
    ],
)
def test_other_spellings_and_modes_decode_as_the_plain_decoder_does(raw: bytes) -> None:
    assert ArgsDecoder().decode(raw) == decode_extender_args(orjson.loads(raw))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"Pod": {}, "Nodes": null, "NodeNames": ["a", 7]}', r"NodeNames\[1\]: expected a string"),
        (b'{"Pod": [], "Nodes": null, "NodeNames": ["a"]}', "ExtenderArgs.Pod: expected an object"),
        (b'{"Pod": {}, "Nodes": null, "NodeNames": "a"}', "NodeNames: expected a list"),
        (b'{"Pod": ' + b"[" * 70 + b"]" * 70 + b', "Nodes": null, "NodeNames": []}', "deeper than 64"),
        (b'{"Pod": {}, "Nodes": null, "NodeNames": ["a"', "not JSON"),
        (b'["Pod"]', "expected an object"),
    ],
)
def test_bad_bodies_get_the_plain_decoders_errors(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        ArgsDecoder().decode(raw)


def test_encoded_answers_equal_fresh_placement_through_every_kind_of_change() -> None:
    states = mixed_states()
    pair = Pair(states)
    names = sorted(states)
    for i in range(12):
        limits, notes = SHAPES[i % len(SHAPES)]
        spec = pod(f"p-{i}", limits=limits, annotations=notes)
        passed = pair.check(spec, names)
        if passed:
            pair.bind(spec, passed[i % len(passed)])
    spec = pod("probe", limits={"gedge.io/gpu": "1"})
    pair.check(spec, names)
    # A new report of a node in the list: a pod now holds all of its GPUs.
    edge = states["edge-1"]
    taken = Extender(StaticNodeSource({"edge-1": edge}), RecordingBinder())
    for k in range(2):
        other = pod(f"other-{k}", limits={"gedge.io/gpu": "1"})
        taken.filter(decode_extender_args(orjson.loads(body(other, ["edge-1"]))))
        meta = other["metadata"]
        taken.bind(BindingArgs(meta["name"], meta["namespace"], meta["uid"], "edge-1"))
    pair.put(dataclasses.replace(edge, allocations=taken.cache.held("edge-1"), generation=2))
    assert "edge-1" not in pair.check(spec, names)
    # A node added to the cluster: first not in the list, then in it.
    pair.put(NodeState(edge_box("edge-9", gpus=1)))
    assert "edge-9" not in pair.check(spec, names)
    assert "edge-9" in pair.check(spec, [*names, "edge-9"])
    assert "edge-9" not in pair.check(spec, names)
    # A node dropped: still in the list (unknown to the extender), then not.
    pair.drop("dgx-0")
    pair.check(spec, [*names, "edge-9"])
    listed = [n for n in names if n != "dgx-0"]
    pair.check(spec, listed)
    # The same names in another order, and another pod shape over the same list.
    pair.check(spec, listed[::-1])
    pair.check(pod("pair", limits={"gedge.io/gpu": "2"}), listed)
    pair.check(pod("shared", limits={"gedge.io/gpu-shared": "1"}), listed)
    # A node replaced by a larger one under the same name.
    four = pod("four", limits={"gedge.io/gpu": "4"})
    assert "edge-0" not in pair.check(four, listed)
    # A bind on a refused node: refused again, for a reason that names what is free now.
    pair.put(NodeState(edge_box("edge-0", gpus=2)))
    before = orjson.loads(pair.kept.filter_json(pair.decoder.decode(body(four, listed))).body)
    pair.bind(pod("one", limits={"gedge.io/gpu": "1"}), "edge-0")
    assert "edge-0" not in pair.check(four, listed)
    after = orjson.loads(pair.kept.filter_json(pair.decoder.decode(body(four, listed))).body)
    assert after["FailedNodes"]["edge-0"] != before["FailedNodes"]["edge-0"]
    pair.put(NodeState(dgx_like("edge-0")))
    assert "edge-0" in pair.check(four, listed)


def test_over_http_filter_and_prioritize_of_every_name_equal_fresh_placement() -> None:
    states = mixed_states()
    names = sorted(states)
    fresh = Extender(PlainSource(states), RecordingBinder())
    with ServerThread(build_app(Extender(StaticNodeSource(states), RecordingBinder()))) as server:
        for i in range(8):
            limits, notes = SHAPES[i % len(SHAPES)]
            spec = pod(f"h-{i}", limits=limits, annotations=notes)
            status, got = post(f"{server.url}/filter", None, raw=body(spec, names))
            expected = fresh.filter(decode_extender_args(orjson.loads(body(spec, names))))
            assert status == 200 and sorted(got["NodeNames"]) == sorted(expected["NodeNames"])
            assert got["FailedNodes"] == expected["FailedNodes"]
            if not got["NodeNames"]:
                continue
            status, scores = post(f"{server.url}/prioritize", None, raw=body(spec, got["NodeNames"]))
            assert status == 200
            fresh_args = decode_extender_args(orjson.loads(body(spec, got["NodeNames"])))
            assert by_host(scores) == by_host(fresh.prioritize(fresh_args))
            assert len(scores) == len(got["NodeNames"])
            best = max(scores, key=lambda s: (s["Score"], s["Host"]))["Host"]
            meta = spec["metadata"]
            bind = {"PodName": meta["name"], "PodNamespace": "ml", "PodUID": meta["uid"], "Node": best}
            assert post(f"{server.url}/bind", bind) == (200, {"Error": ""})
            fresh.filter(decode_extender_args(orjson.loads(body(spec, [best]))))
            fresh.bind(BindingArgs(meta["name"], "ml", meta["uid"], best))


@pytest.mark.parametrize(
    "head",
    [
        b'{"Pod":{"metadata":{"name":"p"}}',
        b'{"Pod": {"metadata": {"name": "p"}}, "other": [1, {"NodeNames": 2}] ',
        b'{"Pod":{},"NodeNames":["x"]',
        b'{"Pod":{},"Nodes":{"items":[]}',
        b'{"Pod":{},"Nodes":null',
        b'{"Pod":[]',
        b'{"Pod":{},',
        b"{",
        b'{"Pod":{"a":NaN}',
        b'{"Pod":{"a":"',
        b'["Pod"',
        b'{"Pod":' + b"[" * 70 + b"]" * 70,
    ],
)
def test_a_known_names_list_after_any_head_decodes_as_the_plain_decoder_does(head: bytes) -> None:
    """Only the part before a known list is decoded: whatever it holds, the answer (or the error) is the
    plain decoder's for the whole body."""
    known = orjson.dumps(["a", "b"])
    raw = head + b',"Nodes":null,"NodeNames":' + known + b"}"
    try:
        expected: Any = decode_extender_args(decode_json(raw))
    except WireError as exc:
        expected = str(exc)
    decoder = ArgsDecoder()
    decoder.remember(known, ("a", "b"))
    try:
        got: Any = decoder.decode(raw)
    except WireError as exc:
        got = str(exc)
    assert got == expected


def test_a_known_names_list_is_found_among_others_and_the_last_used_are_kept() -> None:
    decoder = ArgsDecoder(max_lists=3)
    lists = [tuple(f"n{i}" for i in range(k)) for k in (1, 2, 3, 4)]
    for names in lists[:3]:
        decoder.remember(orjson.dumps(names), names)
    spec = pod("p")
    assert decoder.decode(body(spec, lists[0])).node_names is lists[0], "the oldest, found by its bytes"
    decoder.remember(orjson.dumps(lists[3]), lists[3])
    # lists[1] was the least recently used: dropped; lists[0] was used since: kept.
    assert decoder.decode(body(spec, lists[0])).node_names is lists[0]
    again = decoder.decode(body(spec, lists[1])).node_names
    assert again == lists[1] and again is not lists[1]
