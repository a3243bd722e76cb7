"""What place() is configured with and what it answers: PlacementConfig, Placement, Refusal."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gedge_model import DEFAULT_WEIGHTS, Allocation, Level
from scheduler_extender.placement.index import LEVELS

STRATEGIES = ("pack", "spread")


@dataclass(frozen=True)
class PlacementConfig:
    weights: Mapping[Level, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    timeslice_strategy: str = "pack"
    """pack: fill GPUs that already run time-sliced pods; spread: prefer the least shared GPU."""
    node_strategy: str = "pack"
    """score_nodes tie-break: pack prefers nodes left with fewer free units, spread with more."""
    same_switch_level: Level = Level.PXB
    """The farthest GPU<->network-device level `same-switch` accepts."""
    max_exhaustive: int = 256
    """Largest number of GPU combinations tried exhaustively; beyond it, greedy growth from every seed."""
    packing: float = 8.0
    """score_nodes' weight of packing against distance, in cost units: a node ranks by its cost plus
    `packing` times the share of the pod's main resource it would have left free (0: cost alone)."""
    stranding: float = 32.0
    """score_nodes' weight, in cost units, of the share of a node's CPUs its free whole GPUs would
    lack after the pod (`cpus_per_gpu` each; 0: off): CPU pods go where they leave no GPU without CPUs."""
    cpus_per_gpu: float = 2.0
    """Pinned CPUs a free whole GPU is expected to need, for `stranding` (0: no stranding)."""

    def __post_init__(self) -> None:
        for label, value in (
            ("timeslice_strategy", self.timeslice_strategy),
            ("node_strategy", self.node_strategy),
        ):
            if value not in STRATEGIES:
                raise ValueError(f"{label} must be pack or spread, not {value!r}")
        missing = [level.value for level in Level if level not in self.weights]
        if missing:
            raise ValueError(f"weights lack level(s) {', '.join(missing)}")
        if any(not math.isfinite(w) or w < 0 for w in self.weights.values()):
            raise ValueError("weights must be finite and non-negative")
        for label, number in (
            ("packing", self.packing),
            ("stranding", self.stranding),
            ("cpus_per_gpu", self.cpus_per_gpu),
        ):
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"{label} must be a finite number >= 0, not {number!r}")
        if self.max_exhaustive < 1:
            raise ValueError("max_exhaustive must be at least 1")
        by_ordinal = tuple(float(self.weights[level]) for level in LEVELS)
        object.__setattr__(self, "_by_ordinal", by_ordinal)
        memo = (
            by_ordinal,
            self.timeslice_strategy,
            self.same_switch_level,
            self.max_exhaustive,
            self.cpus_per_gpu,
        )
        object.__setattr__(self, "_memo_key", memo)

    @property
    def weight_by_ordinal(self) -> tuple[float, ...]:
        return self._by_ordinal  # type: ignore[attr-defined]

    @property
    def memo_key(self) -> tuple[object, ...]:
        """What of the configuration place() depends on (node_strategy only matters to score_nodes)."""
        return self._memo_key  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Placement:
    allocation: Allocation
    cost: float
    leftover: int = 0
    """Free units of the pod's main resource left on the node afterwards (score_nodes' tie-break)."""
    stranded: int = 0
    """Free accelerators (GPUs, MIG instances, RDMA devices) of kinds the pod does not use: a pod
    taking CPUs or VFs on such a node may leave them unusable, so packing prefers nodes with fewer."""
    level_cost: float | None = None
    """The cost with every NVLink pair at the plain NV weight, whatever its link count: what
    score_nodes ranks nodes by (None: `cost`), so link counts choose GPUs inside a node but do not
    pull pods off a node that packing would fill."""

    free_share: float = 0.0
    """The share (0..1) of the node's units of the pod's main resource left free afterwards: packing
    prefers nodes it fills."""
    at_best: bool = True
    """Whether the allocation's worst level is the best this node offers the pod when empty: nodes
    where fragmentation would cost the pod a level rank below those where it does not."""
    strand: float = 0.0
    """The share (0..1) of the node's CPUs its free whole GPUs would lack afterwards
    (`PlacementConfig.cpus_per_gpu` each): score_nodes ranks nodes down by `stranding` times it."""

    @property
    def rank_cost(self) -> float:
        return self.cost if self.level_cost is None else self.level_cost

    @property
    def score_key(self) -> tuple[object, ...]:
        """Everything score_nodes reads of the placement: equal keys score equally."""
        return (self.rank_cost, self.stranded, self.leftover, self.free_share, self.at_best, self.strand)


@dataclass(frozen=True)
class Refusal:
    reason: str
