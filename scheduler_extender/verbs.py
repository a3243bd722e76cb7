"""The extender's four verbs over the node cache, the assume cache and the placement engine.

Decisions only: the HTTP layer decodes the wire types and calls these; the
binder does the I/O of a bind. Filter and prioritize of one pod look at up to
thousands of nodes, so the outcome of placing a pod shape on a node is
memoized until the node's report or its held allocations change.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from typing import Any, NamedTuple, cast

import orjson
import structlog

from gedge_model import Allocation, NodeState
from gedge_model.driver import ANNOTATION_MIN_DRIVER, DriverVersionError, parse_driver_version
from scheduler_extender.bind.assume import AssumeCache, AssumeConflict
from scheduler_extender.bind.binder import Binder, BindError
from scheduler_extender.node_source import NodeSource, NodeView, ObservableNodeSource
from scheduler_extender.placement.engine import (
    Placement,
    PlacementConfig,
    PlanMemo,
    Refusal,
    place,
    score_nodes,
)
from scheduler_extender.placement.request import PodRequest, RequestError, parse_pod_request
from scheduler_extender.verb_metrics import FilterSummary, cached_refusal_class, filter_summary
from scheduler_extender.wire import (
    MAX_EXTENDER_PRIORITY,
    MIN_EXTENDER_PRIORITY,
    BindingArgs,
    ExtenderArgs,
    NodeVictims,
    PreemptionArgs,
    encode_binding_result,
    encode_filter_result,
    encode_host_priorities,
    encode_preemption_result,
)

log = structlog.get_logger("gedge.extender")

Outcome = Placement | Refusal

# Why a node is unresolvable. Reasons never name the node: kube-scheduler keys them by node and
# counts equal reasons in its FailedScheduling message ("0/5000 nodes are available: 4990 ...").
NO_AGENT = "no gedge agent reports this node"
STALE_REPORT = "agent report is stale"

PodReader = Callable[[str, str], dict[str, Any]]
"""(namespace, name) -> the pod as the API server serializes it."""
Warner = Callable[[dict[str, Any], str, str], None]
"""(pod, reason, message): a Kubernetes Event on the pod, where there is a cluster."""


def _pod_identity(pod: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or ""), str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def driver_refusal(state: NodeState, min_driver: str) -> Refusal | None:
    """Why the NVIDIA driver this node's agent reports cannot run a pod that needs `min_driver`, or None."""
    reported = state.topology.driver_version
    needed = f"{min_driver} required by {ANNOTATION_MIN_DRIVER}"
    if reported is None:
        return Refusal(f"no NVIDIA driver reported, {needed}")
    try:
        version = parse_driver_version(reported)
    except DriverVersionError:
        return Refusal(f"node driver {reported!r} is not a version, {needed}")
    if version < parse_driver_version(min_driver):
        return Refusal(f"node driver {reported.strip()} < {needed}")
    return None


def _checks_nodes(request: PodRequest) -> bool:
    """Whether the verbs decide anything per node for this pod: devices to place or a driver to check."""
    return request.wants_placement() or request.min_driver is not None


def _memo_key(request: PodRequest) -> tuple[Any, ...]:
    return (request.shape, request.min_driver)


class RememberedRequests:
    """What filter learnt of each pod that a later bind needs (its parsed request), bounded in count,
    bytes and time: the oldest go first past `max_pods` or `max_bytes`, any older than `ttl_s` on
    access. The pod itself (up to megabytes of JSON) is never kept."""

    def __init__(
        self,
        max_pods: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_pods, self.max_bytes, self.ttl_s = max_pods, max_bytes, ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[PodRequest, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    @staticmethod
    def size(request: PodRequest) -> int:
        """Bytes an entry is counted as: its strings plus a fixed overhead."""
        strings = (request.namespace, request.name, request.uid, request.min_driver or "", *request.runtime)
        return 512 + sum(len(text) for text in strings)

    def put(self, request: PodRequest) -> None:
        size = self.size(request)
        with self._lock:
            self._drop(request.uid)
            if size > self.max_bytes:
                return
            self._entries[request.uid] = (request, size, self._clock() + self.ttl_s)
            self.bytes += size
            while len(self._entries) > self.max_pods or self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def get(self, uid: str) -> PodRequest | None:
        with self._lock:
            now = self._clock()
            while self._entries:
                oldest = next(iter(self._entries))
                if self._entries[oldest][2] > now:
                    break
                self._drop(oldest)
            entry = self._entries.get(uid)
            return entry[0] if entry else None

    def pop(self, uid: str) -> None:
        with self._lock:
            self._drop(uid)

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, uid: str) -> None:
        entry = self._entries.pop(uid, None)
        if entry is not None:
            self.bytes -= entry[1]


_MemoEntry = tuple[NodeState, int, Outcome]
"""(the node state placed on, the assume-cache version of the node then, the outcome)."""


_ScoreKey = tuple[object, ...]
"""What score_nodes reads of a placement (Placement.score_key)."""


def _score_key(placement: Placement) -> _ScoreKey:
    return placement.score_key


def _host_prefix(name: str) -> bytes:
    """A HostPriority of `name` up to its score: `{"Host":"<name>","Score":`."""
    return b'{"Host":%s,"Score":' % orjson.dumps(name)


class _SameAs:
    """Whether a set still holds exactly the names of the candidates tuple last checked against it.

    kube-scheduler sends the same names again and again (the HTTP layer hands the same
    list as the same tuple): once checked, a tuple is known to match until the set
    gains a name it did not have then, or loses one without getting it back.
    """

    __slots__ = ("gone", "names")

    def __init__(self) -> None:
        self.names: tuple[str, ...] | None = None
        self.gone: set[str] = set()

    def holds(self, names: tuple[str, ...]) -> bool:
        return names is self.names and not self.gone

    def checked(self, names: tuple[str, ...]) -> None:
        """`names` matches the set now."""
        self.names, self.gone = names, set()

    def added(self, name: str) -> None:
        if self.names is not None:
            if name in self.gone:
                self.gone.discard(name)
            else:
                self.names = None

    def removed(self, name: str) -> None:
        if self.names is not None:
            self.gone.add(name)


class _Pieces:
    """A reply's encoded entries by node, in insertion order (a node set again keeps its place), joined
    block by block: a changed entry costs the join of its block of up to BLOCK entries, and the whole
    join is one join over the blocks, not one over thousands of entries."""

    BLOCK = 64

    __slots__ = ("_block_names", "_blocks", "_joined", "_where", "_whole")

    def __init__(self) -> None:
        self._blocks: list[dict[str, bytes]] = []
        self._joined: list[bytes | None] = []
        """Per block its entries joined with commas (None: changed since)."""
        self._block_names: list[tuple[str, ...] | None] = []
        """Per block its nodes in order (None: changed since)."""
        self._where: dict[str, int] = {}
        """Node -> its block."""
        self._whole: bytes | None = b""

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __getitem__(self, name: str) -> bytes:
        return self._blocks[self._where[name]][name]

    def __setitem__(self, name: str, piece: bytes) -> None:
        block = self._where.get(name)
        if block is None:
            blocks = self._blocks
            if not blocks or len(blocks[-1]) >= self.BLOCK:
                if len(blocks) > 4 and len(blocks) * self.BLOCK > 2 * len(self._where) + 4 * self.BLOCK:
                    self._compact()
                    blocks = self._blocks
                if not blocks or len(blocks[-1]) >= self.BLOCK:
                    blocks.append({})
                    self._joined.append(None)
                    self._block_names.append(None)
            block = self._where[name] = len(blocks) - 1
            self._block_names[block] = None
        self._blocks[block][name] = piece
        self._joined[block] = None
        self._whole = None

    def __delitem__(self, name: str) -> None:
        block = self._where.pop(name)
        del self._blocks[block][name]
        self._joined[block] = None
        self._block_names[block] = None
        self._whole = None

    def pop(self, name: str, default: bytes | None = None) -> bytes | None:
        if name not in self._where:
            return default
        piece = self[name]
        del self[name]
        return piece

    def names(self) -> list[str]:
        """The nodes in reply order."""
        return [name for block in self._blocks for name in block]

    def names_tuple(self) -> tuple[str, ...]:
        """The nodes in reply order, from per-block tuples: a changed entry costs its block's tuple, and
        the whole is one pass over tuples (a pass over a dict's keys costs several times more)."""
        parts, blocks = self._block_names, self._blocks
        names: list[str] = []
        for i, part in enumerate(parts):
            if part is None:
                part = parts[i] = tuple(blocks[i])
            names += part
        return tuple(names)

    def joined(self) -> bytes:
        """Every entry, in order, joined with commas."""
        whole = self._whole
        if whole is None:
            joined, blocks = self._joined, self._blocks
            for i, part in enumerate(joined):
                if part is None:
                    joined[i] = b",".join(blocks[i].values())
            whole = self._whole = b",".join([part for part in joined if part])
        return whole

    def _compact(self) -> None:
        """Blocks thinned by removals packed again (entries keep their order)."""
        entries = [item for block in self._blocks for item in block.items()]
        self._blocks, self._joined, self._block_names, self._where = [], [], [], {}
        for start in range(0, len(entries), self.BLOCK):
            chunk = dict(entries[start : start + self.BLOCK])
            index = len(self._blocks)
            self._blocks.append(chunk)
            self._joined.append(None)
            self._block_names.append(None)
            self._where.update(dict.fromkeys(chunk, index))
        self._whole = None


class _ShapeTable:
    """Every answer for one pod shape, kept across requests and brought up to date by the nodes that
    changed since (source listener, assume cache log), so a request costs set operations over its
    names, not a placement per node.

    `covered`: nodes whose answer is in `passed`, `failed` or `unknown` and stays right until the
    node changes. Nodes whose view can turn stale by time alone are never covered: each request
    looks at them afresh.
    """

    __slots__ = (
        "assume_seq",
        "classes",
        "covered",
        "dirty",
        "entries",
        "exact",
        "failed",
        "failed_json",
        "key_label",
        "key_names",
        "key_rep",
        "keys",
        "labels",
        "parts",
        "passed",
        "passed_json",
        "passed_list",
        "priorities",
        "score_of",
        "source_pos",
        "stale",
        "unknown",
        "unknown_json",
        "whole",
    )

    def __init__(self, source_pos: int, assume_seq: int) -> None:
        self.entries: dict[str, _MemoEntry] = {}
        self.passed: dict[str, Placement] = {}
        self.keys: dict[str, _ScoreKey] = {}
        self.key_names: dict[_ScoreKey, dict[str, bytes]] = {}
        """Per distinct score key its passed nodes, each with its `_host_prefix`."""
        self.key_rep: dict[_ScoreKey, Placement] = {}
        self.key_label: dict[_ScoreKey, str] = {}
        """Per distinct score key held its name in score_nodes' input, given once (not its repr per call)."""
        self.labels = itertools.count()
        """One placement per distinct score key held: what score_nodes is run over."""
        self.score_of: dict[_ScoreKey, int] | None = None
        """score_nodes over every passed node, by score key (None: not built yet)."""
        self.stale = False
        """The distinct score keys changed since `score_of` was built."""
        self.parts: dict[_ScoreKey, bytes] = {}
        """Per score key the encoded HostPriorities of its nodes under `score_of`, joined: the whole-table
        reply is the join of these (nodes grouped by key: kube-scheduler reads the list by host)."""
        self.dirty: set[_ScoreKey] = set()
        """Keys whose part waits to be joined again (a node came or went, or the key's score changed)."""
        self.priorities: bytes | None = None
        """The whole-table reply as it stands (None: changed since)."""
        self.failed: dict[str, str] = {}
        self.unknown: dict[str, str] = {}
        self.covered: set[str] = set()
        self.passed_json = _Pieces()
        self.passed_list: tuple[bytes, tuple[str, ...]] | None = None
        """`passed`'s names encoded as a JSON list and as a tuple (None: the passed set changed since)."""
        self.failed_json = _Pieces()
        self.unknown_json = _Pieces()
        """Per node its encoded entry of the filter reply (a name; name: reason): the reply is their join."""
        self.classes: collections.Counter[str] = collections.Counter()
        """Refusal classes of `failed`, for the metrics."""
        self.whole = _SameAs()
        """Tracks a candidates tuple that is exactly `covered`."""
        self.exact = _SameAs()
        """Tracks a candidates tuple that is exactly `passed`."""
        self.source_pos = source_pos
        self.assume_seq = assume_seq

    def reset(self, source_pos: int, assume_seq: int) -> None:
        # one list of fields for a new and a reset table; mypy refuses __init__ on an instance
        self.__init__(source_pos, assume_seq)  # type: ignore[misc]

    def priorities_json(self, config: PlacementConfig) -> bytes:
        """The HostPriorityList of every passed node, encoded.

        Scores come from score_nodes over one placement per distinct score key; a key's part is
        joined again (one C-level join over its nodes' prefixes) only when one of its nodes came or
        went or its score changed.
        """
        if self.score_of is None or self.stale:
            labels = self.key_label
            reps = {labels[key]: p for key, p in self.key_rep.items()}
            key_of = {label: key for key, label in labels.items()}
            low, high = MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY
            fresh = {
                key_of[label]: min(high, max(low, score))
                for label, score in (score_nodes(reps, config) if reps else {}).items()
            }
            old = self.score_of or {}
            changed = {key for key, score in fresh.items() if old.get(key) != score}
            self.score_of, self.stale = fresh, False
            self.dirty.update(changed)
        if self.dirty:
            score_of, parts, key_names = self.score_of, self.parts, self.key_names
            for key in self.dirty:
                holders = key_names.get(key)
                if holders:
                    tail = b"%d}" % score_of[key]
                    parts[key] = (tail + b",").join(holders.values()) + tail
                else:
                    parts.pop(key, None)
            self.dirty.clear()
            self.priorities = None
        if self.priorities is None:
            joined = list(self.parts.values())
            if joined:
                # One copy of the reply: "[", the parts with "," between them, "]".
                pieces = [b","] * (2 * len(joined) + 1)
                pieces[1::2] = joined
                pieces[0], pieces[-1] = b"[", b"]"
                self.priorities = b"".join(pieces)
            else:
                self.priorities = b"[]"
        return self.priorities

    def _hold(self, name: str, key: _ScoreKey, outcome: Placement) -> None:
        """`name` passes with score key `key`."""
        self.keys[name] = key
        holders = self.key_names.get(key)
        if holders is None:
            holders = self.key_names[key] = {}
            self.key_rep[key] = outcome
            self.key_label[key] = str(next(self.labels))
            self.stale = True
        holders[name] = _host_prefix(name)
        self.dirty.add(key)

    def _release(self, name: str, key: _ScoreKey) -> None:
        """`name` no longer passes with score key `key`."""
        holders = self.key_names[key]
        del holders[name]
        self.dirty.add(key)
        if not holders:
            del self.key_names[key]
            del self.key_rep[key]
            del self.key_label[key]
            self.stale = True

    def filter_json(self, names_json: bytes) -> bytes:
        """ExtenderFilterResult (NodeNames mode) over every covered node, as orjson encodes it;
        `names_json`: `passed_names()[0]`."""
        return b"".join(
            (
                b'{"Nodes":null,"NodeNames":',
                names_json,
                b',"FailedNodes":{',
                self.failed_json.joined(),
                b'},"FailedAndUnresolvableNodes":{',
                self.unknown_json.joined(),
                b'},"Error":""}',
            )
        )

    def passed_names(self) -> tuple[bytes, tuple[str, ...]]:
        """The names of `passed`, in its order, as a JSON list and as a tuple: the same objects while
        the set of passed nodes stays the same."""
        kept = self.passed_list
        if kept is None:
            pieces = self.passed_json
            kept = self.passed_list = (b"".join((b"[", pieces.joined(), b"]")), pieces.names_tuple())
        return kept

    def summary(self) -> FilterSummary:
        """What the metrics count of `filter_json()`."""
        refusals = dict(self.classes)
        if self.unknown:
            refusals["unknown-node"] = refusals.get("unknown-node", 0) + len(self.unknown)
        return FilterSummary("", refusals, bool(self.passed))

    def add_unknown(self, name: str, reason: str) -> None:
        if name in self.covered:
            if self.unknown.get(name) == reason:
                return
            self.forget((name,))
        self.covered.add(name)
        self.whole.added(name)
        self.unknown[name] = reason
        self.unknown_json[name] = orjson.dumps(name) + b":" + orjson.dumps(reason)

    def add(self, name: str, outcome: Outcome) -> None:
        """The node's answer; a node judged again keeps its place in the reply where its answer keeps
        its kind, so the joined pieces of the others stay as they are."""
        if name in self.covered:
            if self._update(name, outcome):
                return
            self.forget((name,))
        self.covered.add(name)
        self.whole.added(name)
        if outcome.__class__ is Placement:
            self.passed[name] = outcome
            self.passed_list = None
            self.exact.added(name)
            self.passed_json[name] = orjson.dumps(name)
            self._hold(name, _score_key(outcome), outcome)
        else:
            reason: str = outcome.reason  # type: ignore[union-attr]
            self.failed[name] = reason
            self.failed_json[name] = orjson.dumps(name) + b":" + orjson.dumps(reason)
            self.classes[cached_refusal_class(reason)] += 1

    def _update(self, name: str, outcome: Outcome) -> bool:
        """Replace a covered node's answer in place when it passes again or is refused again; False
        when it turns from one to the other (the caller forgets it and adds it)."""
        if outcome.__class__ is Placement:
            old = self.passed.get(name)
            if old is None:
                return False
            self.passed[name] = outcome
            key, old_key = _score_key(outcome), self.keys[name]
            if key == old_key:
                return True
            self._release(name, old_key)
            self._hold(name, key, outcome)
            return True
        old_reason = self.failed.get(name)
        if old_reason is None:
            return False
        reason: str = outcome.reason  # type: ignore[union-attr]
        if reason != old_reason:
            self.failed[name] = reason
            self.failed_json[name] = orjson.dumps(name) + b":" + orjson.dumps(reason)
            old_cls, cls = cached_refusal_class(old_reason), cached_refusal_class(reason)
            if cls != old_cls:
                self.classes[old_cls] -= 1
                if not self.classes[old_cls]:
                    del self.classes[old_cls]
                self.classes[cls] += 1
        return True

    def forget(self, names: Iterable[str]) -> None:
        covered = self.covered
        for name in names:
            if name not in covered:
                continue
            covered.discard(name)
            self.whole.removed(name)
            if self.passed.pop(name, None) is not None:
                self.passed_list = None
                self.exact.removed(name)
                del self.passed_json[name]
                self._release(name, self.keys.pop(name))
            reason = self.failed.pop(name, None)
            if reason is not None:
                del self.failed_json[name]
                cls = cached_refusal_class(reason)
                self.classes[cls] -= 1
                if not self.classes[cls]:
                    del self.classes[cls]
            if self.unknown.pop(name, None) is not None:
                del self.unknown_json[name]


@dataclasses.dataclass(slots=True)
class _Answer:
    """One request's outcomes, from a table (`table`) plus nodes looked at afresh (`extra_*`)."""

    names: Set[str]
    table: _ShapeTable | None
    extra_passed: dict[str, Placement]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    whole: bool = False
    """The candidates are exactly the nodes the table covers: its answers are the reply as is."""
    exact: bool = False
    """The candidates are exactly the nodes that passed in the table."""

    def passed_names(self, candidates: Sequence[str]) -> list[str]:
        """The candidates that passed, in the caller's order (the table's, when `whole`)."""
        known = self.table.passed if self.table is not None else {}
        if self.whole:
            return list(known)
        extra = self.extra_passed
        if extra:
            return [n for n in candidates if n in known or n in extra]
        return list(filter(known.__contains__, candidates))

    def placements(self, candidates: Sequence[str]) -> dict[str, Placement]:
        known = {**self.table.passed, **self.extra_passed} if self.table is not None else self.extra_passed
        return {n: known[n] for n in candidates if n in known}


class FilterReply(NamedTuple):
    """A filter reply encoded, and what the metrics count of it."""

    body: bytes
    summary: FilterSummary
    passed: tuple[bytes, tuple[str, ...]] | None = None
    """The reply's NodeNames, encoded and as a tuple, where the pod's shape table answered: the list
    kube-scheduler sends back in prioritize, which the table then knows to be exactly its passed nodes."""


class Extender:
    """Thread-safe: the HTTP layer runs filter/prioritize on its loop and bind in worker threads."""

    MAX_SHAPES = 64
    """Pod shapes whose per-node outcomes are kept (least recently used dropped first)."""
    MAX_FILTERED_PODS = 256

    def __init__(
        self,
        source: NodeSource,
        binder: Binder,
        *,
        cache: AssumeCache | None = None,
        config: PlacementConfig | None = None,
        pod_reader: PodReader | None = None,
        warn: Warner | None = None,
        remembered: RememberedRequests | None = None,
    ) -> None:
        self.source = source
        self.binder = binder
        self.cache = cache or AssumeCache()
        self.config = config or PlacementConfig()
        self.plans = PlanMemo()
        self._pod_reader = pod_reader
        self._warn = warn
        self._memo: OrderedDict[tuple[Any, ...], dict[str, _MemoEntry]] = OrderedDict()
        self._filtered: OrderedDict[str, tuple[tuple[Any, ...], int, dict[str, Outcome]]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self.remembered = remembered if remembered is not None else RememberedRequests()
        self._tables: OrderedDict[tuple[Any, ...], _ShapeTable] = OrderedDict()
        self._tables_lock = threading.Lock()
        self._node_log: list[str] = []
        self._node_log_base = 0
        self._node_log_lock = threading.Lock()
        self._observed = isinstance(source, ObservableNodeSource)
        self._last_parsed: tuple[dict[str, Any], PodRequest] | None = None
        if self._observed:
            source.add_listener(self._node_changed)  # type: ignore[attr-defined]
        add_listener = getattr(source, "add_listener", None)
        if add_listener is not None:
            add_listener(self._on_report)

    def _on_report(self, node: str, view: NodeView | None) -> None:
        """Each node report settles the binds it now accounts for, at once, whether or not a filter
        looks at the node: a pod released there soon after stops counting then, not after bound_ttl."""
        if view is not None and view.state is not None:
            self.cache.settle(node, {a.pod_uid for a in view.state.allocations})

    # -- filter / prioritize ------------------------------------------------------------------

    def filter(self, args: ExtenderArgs) -> dict[str, Any]:
        body = self._filter(args, encoded=False)
        assert isinstance(body, dict)
        return body

    def filter_json(self, args: ExtenderArgs) -> FilterReply:
        """`filter`, encoded, and what the metrics count of it. When the candidates are every node the
        pod's shape table covers (kube-scheduler sending every name), the reply is joined from
        per-node pieces kept in the table and its refusal classes are counted there."""
        body = self._filter(args, encoded=True)
        if isinstance(body, FilterReply):
            return body
        return FilterReply(orjson.dumps(body), filter_summary(body))

    def _filter(self, args: ExtenderArgs, encoded: bool) -> dict[str, Any] | FilterReply:
        request = self._request(args.pod)
        if isinstance(request, str):
            return encode_filter_result(args, error=request)
        candidates = args.candidates
        if request.uid:
            self.remembered.put(request)
        if not _checks_nodes(request):
            return encode_filter_result(args, passed=candidates)
        if self._observed:
            with self._tables_lock:
                answer = self._answer(candidates, request)
                table = answer.table
                if encoded and answer.whole and table is not None and args.nodes is None:
                    names_json, names = table.passed_names()
                    table.exact.checked(names)
                    reply = FilterReply(table.filter_json(names_json), table.summary(), (names_json, names))
                    if not names:
                        log.info("filter_refused", pod=args.pod_label, nodes=len(candidates))
                    return reply
                passed = answer.passed_names(candidates)
            if not passed:
                log.info("filter_refused", pod=args.pod_label, nodes=len(candidates))
            return encode_filter_result(
                args, passed=passed, failed=answer.failed, unresolvable=answer.unresolvable
            )
        seq = self.cache.sequence()
        outcomes, unresolvable = self._evaluate(candidates, request)
        passed = [name for name, outcome in outcomes.items() if outcome.__class__ is Placement]
        failed = {name: outcome.reason for name, outcome in outcomes.items() if outcome.__class__ is Refusal}
        if request.uid:
            with self._memo_lock:
                self._filtered[request.uid] = (_memo_key(request), seq, outcomes)
                while len(self._filtered) > self.MAX_FILTERED_PODS:
                    self._filtered.popitem(last=False)
        if not passed:
            log.info("filter_refused", pod=args.pod_label, nodes=len(candidates))
        return encode_filter_result(args, passed=passed, failed=failed, unresolvable=unresolvable)

    def prioritize(self, args: ExtenderArgs) -> list[dict[str, Any]]:
        """Scores 0..10 by each node's best allocation; nodes we cannot place on score 0."""
        candidates = args.candidates
        try:
            request = self._parse(args.pod)
        except RequestError:
            return encode_host_priorities(dict.fromkeys(candidates, 0))
        if not request.wants_placement():
            return encode_host_priorities(dict.fromkeys(candidates, 0))
        if self._observed:
            with self._tables_lock:
                return self._priorities(self._answer(candidates, request), candidates)
        outcomes = self._filtered_outcomes(request)
        if outcomes is None or not outcomes.keys() >= frozenset(candidates):
            outcomes, _ = self._evaluate(candidates, request)
        placements = {name: o for name in candidates if (o := outcomes.get(name)).__class__ is Placement}
        scores = score_nodes(placements, self.config) if placements else {}
        return encode_host_priorities({name: scores.get(name, 0) for name in candidates})

    def prioritize_json(self, args: ExtenderArgs) -> bytes:
        """`prioritize`, encoded. When the candidates are exactly the nodes the pod's shape passes
        (kube-scheduler scoring every node), the reply is the shape table's, in its order."""
        candidates = args.candidates
        if self._observed:
            try:
                request = self._parse(args.pod)
            except RequestError:
                request = None
            if request is not None and request.wants_placement():
                with self._tables_lock:
                    answer = self._answer(candidates, request)
                    table = answer.table
                    if table is not None and (
                        answer.exact or (answer.whole and len(table.passed) == len(table.covered))
                    ):
                        return table.priorities_json(self.config)
        return orjson.dumps(self.prioritize(args))

    def _filtered_outcomes(self, request: PodRequest) -> dict[str, Outcome] | None:
        """What filter found for this pod moments ago, if no bind changed any node since."""
        with self._memo_lock:
            found = self._filtered.pop(request.uid, None)
        if found is None:
            return None
        shape, seq, outcomes = found
        if shape != _memo_key(request) or seq != self.cache.sequence():
            return None
        return outcomes

    def _parse(self, pod: dict[str, Any]) -> PodRequest:
        """parse_pod_request, once per pod object: prioritize gets filter's pod object again where the
        HTTP layer decoded the same bytes (RequestError as parse_pod_request raises it)."""
        last = self._last_parsed
        if last is not None and last[0] is pod:
            return last[1]
        request = parse_pod_request(pod)
        self._last_parsed = (pod, request)
        return request

    def _request(self, pod: dict[str, Any]) -> PodRequest | str:
        """The parsed request, or the error message naming pod and field (with an Event)."""
        try:
            return self._parse(pod)
        except RequestError as exc:
            message = str(exc)
            if self._warn is not None:
                self._warn(pod, "InvalidAccelerationRequest", message)
            return message

    # -- per-shape tables (sources that announce changes) ----------------------------------------

    LOG_LIMIT = 100_000
    """Node changes kept for the tables; a table further behind starts over."""

    def _node_changed(self, name: str, view: NodeView | None) -> None:
        with self._node_log_lock:
            self._node_log.append(name)
            if len(self._node_log) > self.LOG_LIMIT:
                drop = len(self._node_log) // 2
                del self._node_log[:drop]
                self._node_log_base += drop

    def _node_log_position(self) -> int:
        with self._node_log_lock:
            return self._node_log_base + len(self._node_log)

    def _sync(self, table: _ShapeTable) -> list[str]:
        """The covered nodes changed since the table was last used: the caller judges each again."""
        with self._node_log_lock:
            base, end = self._node_log_base, self._node_log_base + len(self._node_log)
            changed = None if table.source_pos < base else self._node_log[table.source_pos - base :]
        assumed = self.cache.changes_since(table.assume_seq)
        if changed is None or assumed is None:
            table.reset(end, self.cache.sequence())
            return []
        nodes, table.assume_seq = assumed
        table.source_pos = end
        if not changed and not nodes:
            return []
        # Judged again by the caller, which replaces or forgets each one's answer.
        return [name for name in {*changed, *nodes} if name in table.covered]

    def _table(self, request: PodRequest) -> _ShapeTable:
        shape = _memo_key(request)
        table = self._tables.get(shape)
        if table is None:
            table = self._tables[shape] = _ShapeTable(self._node_log_position(), self.cache.sequence())
            while len(self._tables) > self.MAX_SHAPES:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(shape)
        return table

    def _answer(self, candidates: tuple[str, ...], request: PodRequest) -> _Answer:
        """Outcomes on `candidates` from the shape's table, placing only on nodes new to it or changed.

        Holds the table lock until the caller is done reading the answer: call within `_tables_lock`.
        """
        own = self.cache.held_by(request.uid) if request.uid else None
        if own is not None:
            names = set(candidates)
            # A pod that holds devices already: its own hold must not count against it (see _evaluate).
            outcomes, unresolved = self._evaluate(candidates, request)
            passed = {n: o for n, o in outcomes.items() if o.__class__ is Placement}
            refused = {n: o.reason for n, o in outcomes.items() if o.__class__ is Refusal}
            return _Answer(names, None, passed, refused, unresolved)
        table = self._table(request)
        extra_passed: dict[str, Placement] = {}
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        # Nodes that changed since are judged again at once (a bind changes one), so that a
        # request for every node still finds the table whole.
        judged = self._sync(table)
        for name in judged:
            self._judge(table, name, request, extra_passed, failed, unresolvable)
        covered, passed = table.covered, table.passed
        clean = not extra_passed and not failed and not unresolvable
        if clean and (
            table.whole.holds(candidates)
            or (len(candidates) == len(covered) and covered.issuperset(candidates))
        ):
            # Every node the table covers, as kube-scheduler asks with percentageOfNodesToScore 100:
            # no set of the candidates is built, the table's answers are the reply. The same names
            # tuple next time is known to match without a look at its names.
            table.whole.checked(candidates)
            return _Answer(covered, table, {}, table.failed, dict(table.unknown), whole=True)
        if clean and (
            table.exact.holds(candidates)
            or (len(candidates) == len(passed) and all(map(passed.__contains__, candidates)))
        ):
            # Exactly the nodes that passed, as kube-scheduler's prioritize after a whole filter.
            table.exact.checked(candidates)
            return _Answer(passed.keys(), table, {}, {}, {}, exact=True)
        names = set(candidates)
        for name in names - covered - set(judged):
            self._judge(table, name, request, extra_passed, failed, unresolvable)
        extra_passed = {n: p for n, p in extra_passed.items() if n in names}
        failed = {n: r for n, r in failed.items() if n in names}
        unresolvable = {n: r for n, r in unresolvable.items() if n in names}
        refused, unknown = table.failed, table.unknown
        # Loops over the request's names (a few hundred), not over the table's thousands.
        if refused:
            hit = list(filter(refused.__contains__, names))
            failed.update(zip(hit, map(refused.__getitem__, hit), strict=True))
        if unknown:
            hit = list(filter(unknown.__contains__, names))
            unresolvable.update(zip(hit, map(unknown.__getitem__, hit), strict=True))
        return _Answer(names, table, extra_passed, failed, unresolvable)

    def _judge(
        self,
        table: _ShapeTable,
        name: str,
        request: PodRequest,
        extra_passed: dict[str, Placement],
        failed: dict[str, str],
        unresolvable: dict[str, str],
    ) -> None:
        """Judge one node: into the table when its view can only change by announcement, else into
        this request's own answers."""
        view = self.source.node(name)
        if view is None:
            table.add_unknown(name, NO_AGENT)
            return
        if not view.fresh:
            table.forget((name,))
            unresolvable[name] = view.reason or STALE_REPORT
            return
        outcome = self._memo_place(table, name, view, request)
        if view.fresh_until is None:
            table.add(name, outcome)
            return
        table.forget((name,))
        if outcome.__class__ is Placement:
            extra_passed[name] = outcome
        else:
            failed[name] = cast(Refusal, outcome).reason

    def _memo_place(self, table: _ShapeTable, name: str, view: NodeView, request: PodRequest) -> Outcome:
        state, version = view.state, self.cache.version(name)
        entry = table.entries.get(name)
        if entry is not None and entry[0] is state and entry[1] == version:
            return entry[2]
        outcome = self._place(view, request, self._reserved(view))
        table.entries[name] = (state, self.cache.version(name), outcome)
        return outcome

    def _priorities(self, answer: _Answer, candidates: tuple[str, ...]) -> list[dict[str, Any]]:
        """HostPriorityList over `candidates`: score_nodes of the passed ones, 0 for the rest.

        score_nodes reads a placement's cost, stranded and leftover only, and compares nodes by
        extremes, so it runs over one placement per distinct (cost, stranded, leftover) the table
        holds, not one per node.
        """
        table = answer.table
        if table is None:
            placements = answer.placements(candidates)
            scores = score_nodes(placements, self.config) if placements else {}
            return encode_host_priorities({name: scores.get(name, 0) for name in candidates})
        keys: Mapping[str, _ScoreKey] = table.keys
        reps = table.key_rep
        if answer.extra_passed:
            extra = {n: _score_key(p) for n, p in answer.extra_passed.items()}
            keys = {**keys, **extra}
            reps = {**reps, **{_score_key(p): p for p in answer.extra_passed.values()}}
        # C-level passes over the candidates (hundreds per call as kube-scheduler asks by default).
        key_list = list(map(keys.get, candidates))
        distinct: set[_ScoreKey] = set(filter(None, key_list))
        labelled = {repr(key): reps[key] for key in distinct}
        low, high = MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY
        score_of: dict[_ScoreKey | None, int] = {
            _score_key(labelled[label]): min(high, max(low, score))
            for label, score in (score_nodes(labelled, self.config) if labelled else {}).items()
        }
        by_name = map(score_of.get, key_list, itertools.repeat(0))
        return [{"Host": n, "Score": score} for n, score in zip(candidates, by_name, strict=True)]

    def _evaluate(
        self, candidates: Iterable[str], request: PodRequest
    ) -> tuple[dict[str, Outcome], dict[str, str]]:
        """Each candidate's outcome, and the nodes no preemption can help (unknown or stale).

        The hot loop of the extender (thousands of nodes per call): an outcome is
        reused while the node's reported state is the same object and the assume
        cache holds the same allocations on it.
        """
        shape = _memo_key(request)
        versions = self.cache.versions()
        with self._memo_lock:
            table = self._memo.get(shape)
            if table is None:
                table = self._memo[shape] = {}
                while len(self._memo) > self.MAX_SHAPES:
                    self._memo.popitem(last=False)
            else:
                self._memo.move_to_end(shape)
        outcomes: dict[str, Outcome] = {}
        unresolvable: dict[str, str] = {}
        # One lookup per candidate: kube-scheduler usually sends a few hundred of thousands of
        # nodes, and a live cache builds each node's view on request.
        get_view, get_version, get_entry = self.source.node, versions.get, table.get
        for name in candidates:
            view = get_view(name)
            if view is None:
                unresolvable[name] = NO_AGENT
                continue
            if not view.fresh:
                unresolvable[name] = view.reason or STALE_REPORT
                continue
            state = view.state
            version = get_version(name, 0)
            entry = get_entry(name)
            if entry is not None and entry[0] is state and entry[1] == version:
                outcomes[name] = entry[2]
                continue
            outcome = self._place(view, request, self._reserved(view))
            table[name] = (state, version, outcome)
            outcomes[name] = outcome
        own = self.cache.held_by(request.uid) if request.uid else None
        if own is not None and own.node in outcomes:
            # A pod asked about again while it holds devices (a bind kube-scheduler gave up on):
            # its own reservation does not count against it. Not memoized: it is about this pod only.
            view = get_view(own.node)
            assert view is not None
            outcomes[own.node] = self._place(
                view, request, self._reserved(view, without=frozenset({request.uid}))
            )
        return outcomes, unresolvable

    def _place(self, view: NodeView, request: PodRequest, reserved: tuple[Allocation, ...]) -> Outcome:
        state = view.state
        if request.min_driver is not None:
            refusal = driver_refusal(state, request.min_driver)
            if refusal is not None:
                return refusal
        if not request.wants_placement():
            return Placement(Allocation(request.uid, request.namespace, request.name, state.node_name), 0.0)
        try:
            return place(view.state, request, self.config, reserved, self.plans)
        except Exception as exc:  # one node's odd report must not fail the whole filter
            log.exception("placement_failed", node=view.state.node_name)
            return Refusal(f"placement failed: {exc}")

    def _reserved(self, view: NodeView, *, without: frozenset[str] = frozenset()) -> tuple[Allocation, ...]:
        """Allocations held here that the node's own report does not include yet."""
        reported = {a.pod_uid for a in view.state.allocations}
        self.cache.settle(view.state.node_name, reported)
        return tuple(
            a
            for a in self.cache.held(view.state.node_name)
            if a.pod_uid not in reported and a.pod_uid not in without
        )

    # -- bind ---------------------------------------------------------------------------------

    def _request_for(self, args: BindingArgs) -> PodRequest | str:
        """The request filter parsed for this pod, else the pod read from the API server and parsed."""
        request = self.remembered.get(args.pod_uid)
        if request is not None:
            return request
        if self._pod_reader is None:
            return f"pod {args.pod_label} ({args.pod_uid}): never seen in filter, and no API server to ask"
        try:
            pod = self._pod_reader(args.pod_namespace, args.pod_name)
        except Exception as exc:
            return f"pod {args.pod_label}: cannot read it from the API server: {exc}"
        if _pod_identity(pod)[0] != args.pod_uid:
            return f"pod {args.pod_label}: UID is {_pod_identity(pod)[0]}, bind asked for {args.pod_uid}"
        return self._request(pod)

    def choose(self, args: BindingArgs) -> Allocation | str:
        """Pick the devices on args.node and reserve them, as one step; an error message if none fit.

        A pod held on another node (bound again elsewhere) gives that up first, here and, where
        the binder can take a bind back, at that node's agent."""
        held = self.cache.held_by(args.pod_uid)
        if held is not None and held.node == args.node:
            return held
        request = self._request_for(args)
        if isinstance(request, str):
            return request
        moved: Allocation | None = None
        try:
            with self.cache.lock:
                held = self.cache.held_by(args.pod_uid)
                if held is not None and held.node == args.node:
                    return held
                if held is not None:
                    self.cache.release(args.pod_uid)
                    moved = held
                return self._choose_locked(args, request)
        finally:
            unbind = getattr(self.binder, "unbind", None)
            if moved is not None and unbind is not None:
                unbind(moved)

    def _choose_locked(self, args: BindingArgs, request: PodRequest) -> Allocation | str:
        if not _checks_nodes(request):
            allocation = Allocation(args.pod_uid, args.pod_namespace, args.pod_name, args.node)
        else:
            view = self.source.node(args.node)
            if view is None:
                return f"pod {args.pod_label}: node {args.node}: {NO_AGENT}"
            if not view.fresh:
                return f"pod {args.pod_label}: node {args.node}: {view.reason or STALE_REPORT}"
            reserved = self._reserved(view)
            outcome = self._known_outcome(view, request) or self._place(view, request, reserved)
            if isinstance(outcome, Refusal):
                return f"pod {args.pod_label}: node {args.node}: {outcome.reason}"
            allocation = dataclasses.replace(
                outcome.allocation,
                pod_uid=args.pod_uid,
                namespace=args.pod_namespace,
                name=args.pod_name,
                node=args.node,
            )
        try:
            self.cache.reserve(allocation)
        except AssumeConflict as exc:
            return f"pod {args.pod_label}: {exc}"
        return allocation

    def _known_outcome(self, view: NodeView, request: PodRequest) -> Outcome | None:
        """What placing a pod of this shape on the node gave in a filter, while the node's reported state
        and assume-cache version are still those it was placed on (after `_reserved`, which settles):
        kube-scheduler binds where the filter just looked, so the bind need not place again."""
        name, shape = view.state.node_name, _memo_key(request)
        table = self._tables.get(shape)
        entries = table.entries if table is not None else self._memo.get(shape)
        entry = entries.get(name) if entries is not None else None
        if entry is not None and entry[0] is view.state and entry[1] == self.cache.version(name):
            return entry[2]
        return None

    def bind(self, args: BindingArgs) -> dict[str, Any]:
        allocation = self.choose(args)
        if isinstance(allocation, str):
            log.info("bind_refused", pod=args.pod_label, node=args.node, error=allocation)
            return encode_binding_result(allocation)
        try:
            self.binder.bind(allocation)
        except BindError as exc:
            self.cache.release(args.pod_uid)
            log.warning("bind_failed", pod=args.pod_label, node=args.node, error=str(exc))
            return encode_binding_result(str(exc))
        except Exception as exc:
            self.cache.release(args.pod_uid)
            log.exception("bind_failed", pod=args.pod_label, node=args.node)
            return encode_binding_result(f"pod {args.pod_label}: bind failed: {type(exc).__name__}: {exc}")
        self.cache.commit(args.pod_uid)
        self.remembered.pop(args.pod_uid)
        log.info(
            "bound",
            pod=args.pod_label,
            node=args.node,
            devices=[d.id for d in allocation.devices],
            cpus=list(allocation.cpus),
            cost=allocation.cost,
        )
        return encode_binding_result()

    # -- preempt ------------------------------------------------------------------------------

    def preempt(self, args: PreemptionArgs) -> dict[str, Any]:
        """Keep the nodes where evicting kube-scheduler's victims frees what the pod needs from us."""
        try:
            request = parse_pod_request(args.pod)
        except RequestError as exc:
            log.info("preempt_refused", error=str(exc))
            return encode_preemption_result({})
        if not _checks_nodes(request):
            return encode_preemption_result(args.victims)
        kept: dict[str, NodeVictims] = {}
        for node, victims in args.victims.items():
            view = self.source.node(node)
            if view is None or not view.fresh:
                continue
            gone = frozenset(victims.pod_uids)
            state = dataclasses.replace(
                view.state, allocations=tuple(a for a in view.state.allocations if a.pod_uid not in gone)
            )
            trial = NodeView(state, view.fresh, view.reason, view.address)
            if isinstance(self._place(trial, request, self._reserved(view, without=gone)), Placement):
                kept[node] = victims
        return encode_preemption_result(kept)
