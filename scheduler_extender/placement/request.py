"""What a pod asks of the placement engine, read from the Pod JSON kube-scheduler sends.

Resources are counted as kube-scheduler counts them (app containers summed,
init containers as a maximum, restartable sidecars added), so the extender and
the in-tree fit plugin never disagree on a pod's size. Every `gedge.io/*`
annotation the engine reads is validated; a bad value names the pod and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext
from functools import cached_property
from typing import Any

from gedge_model.allocation import (
    CARD_RESOURCES,
    RESOURCE_AMD_GPU,
    RESOURCE_GPU,
    RESOURCE_GPU_SHARED,
    RESOURCE_MIG_PREFIX,
    RESOURCE_RDMA,
    RESOURCE_SRIOV_VF,
    RESOURCE_SRIOV_VF_VFIO,
    is_known_resource,
    mig_profile_name,
)
from gedge_model.driver import ANNOTATION_MIN_DRIVER, DriverVersionError, parse_driver_version

GEDGE_PREFIX = "gedge.io/"
ANNOTATION_TOPOLOGY_AWARE = "gedge.io/topology-aware"
ANNOTATION_TOPOLOGY_POLICY = "gedge.io/topology-policy"
ANNOTATION_COMMUNICATION = "gedge.io/communication"
ANNOTATION_COMPUTE = "gedge.io/compute"
ANNOTATION_RUNTIME = "gedge.io/runtime"
ANNOTATION_CPU_PINNING = "gedge.io/cpu-pinning"
RESOURCE_CPU = "cpu"

POLICIES = ("best-effort", "restricted", "single-numa", "same-switch")
"""Policies as the engine names them."""
POLICY_ALIASES = {"single-numa-node": "single-numa"}
"""Accepted spellings: kubelet's Topology Manager name for single-numa."""
COMMUNICATION_KINDS = ("SRIOV", "RDMA")
COMPUTE_KINDS = ("GPU", "FPGA", "ASIC")
MAX_ANNOTATION_LENGTH = 4096
MAX_DEVICE_COUNT = 1024
MAX_QUANTITY_LENGTH = 64
MAX_QUANTITY = Decimal(10) ** 24
"""Larger than any real request (1Ei of memory is ~1.2e18 bytes); a bound that keeps arithmetic cheap."""
MAX_QUANTITY_EXPONENT = 30
MAX_CONTAINERS = 256

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exponent>[+-]?[0-9]{1,4})|(?P<decimal>[numkMGTPE]?))"
)
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_ARITHMETIC = Context(prec=60, Emax=999, Emin=-999)


class RequestError(ValueError):
    """A pod's acceleration request is malformed; `field` is the annotation or resource at fault."""

    def __init__(self, pod: str, field: str, message: str) -> None:
        super().__init__(f"pod {pod}: {field}: {message}")
        self.pod = pod
        self.field = field


@dataclass(frozen=True)
class PodRequest:
    namespace: str
    name: str
    uid: str
    gpus: int = 0
    gpu_shared: int = 0
    mig: tuple[tuple[str, int], ...] = ()
    """(profile like "1g.10gb", count), sorted by profile."""
    sriov_vfs: int = 0
    sriov_vfio: int = 0
    """VFs on vfio-pci/DPDK drivers (gedge.io/sriov-vf-vfio): PCI devices, not a data-path NIC."""
    rdma: int = 0
    cards: tuple[tuple[str, int], ...] = ()
    """(resource, count) of whole AMD GPUs, FPGA and ASIC cards (`gedge.io/amd-gpu`, ...), sorted."""
    cpus: int = 0
    """Exclusive CPUs; non-zero only with cpu_pinning."""
    cpu_pinning: bool = False
    topology_aware: bool = True
    """Best-effort alignment is the default; gedge.io/topology-aware "false" opts out (first free)."""
    policy: str = "best-effort"
    communication: tuple[str, ...] = ()
    compute: tuple[str, ...] = ()
    runtime: tuple[str, ...] = ()
    min_driver: str | None = None
    """The oldest NVIDIA driver the pod runs on ("535.54.03"), from gedge.io/min-nvidia-driver."""

    def wants_placement(self) -> bool:
        """Whether the engine has anything to choose for this pod."""
        return bool(
            self.gpus
            or self.gpu_shared
            or self.mig
            or self.sriov_vfs
            or self.sriov_vfio
            or self.rdma
            or self.cards
            or self.cpus
            or self.communication
            or self.compute
        )

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def shape(self) -> tuple[Any, ...]:
        """Everything placement depends on, without the pod's identity (a memo key)."""
        return (
            self.gpus,
            self.gpu_shared,
            self.mig,
            self.sriov_vfs,
            self.rdma,
            self.cards,
            self.cpus,
            self.cpu_pinning,
            self.topology_aware,
            self.policy,
            self.communication,
            self.compute,
        )


def parse_pod_request(pod: Mapping[str, Any]) -> PodRequest:
    """The request of one Pod (JSON dict, camelCase as the API server serializes it)."""
    if not isinstance(pod, Mapping):
        raise RequestError("?", "pod", f"expected a JSON object, got {type(pod).__name__}")
    meta = _mapping(pod.get("metadata"), "?", "metadata")
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or meta.get("generateName") or "")
    label = f"{namespace}/{name}"
    uid = str(meta.get("uid") or "")
    spec = _mapping(pod.get("spec"), label, "spec")
    annotations = _mapping(meta.get("annotations"), label, "metadata.annotations")

    totals = _pod_totals(spec, label)
    counts: dict[str, int] = {}
    for resource, amount in totals.items():
        if not resource.startswith(GEDGE_PREFIX):
            continue
        if not is_known_resource(resource):
            raise RequestError(label, resource, "unknown gedge.io resource")
        counts[resource] = _whole(amount, label, resource)

    mig = tuple(
        sorted(
            (mig_profile_name(resource), n)
            for resource, n in counts.items()
            if resource.startswith(RESOURCE_MIG_PREFIX) and n > 0
        )
    )

    pinning = _boolean(annotations, ANNOTATION_CPU_PINNING, label, default=False)
    cpus = _pinned_cpus(spec, label) if pinning else 0

    policy = _text(annotations, ANNOTATION_TOPOLOGY_POLICY, label, default="best-effort")
    policy = POLICY_ALIASES.get(policy, policy)
    if policy not in POLICIES:
        accepted = ", ".join((*POLICIES, *POLICY_ALIASES))
        raise RequestError(label, ANNOTATION_TOPOLOGY_POLICY, f"{policy!r} is not one of {accepted}")
    aware = _boolean(annotations, ANNOTATION_TOPOLOGY_AWARE, label, default=True)
    if not aware and policy != "best-effort":
        raise RequestError(
            label,
            ANNOTATION_TOPOLOGY_POLICY,
            f'policy {policy!r} needs {ANNOTATION_TOPOLOGY_AWARE} "true" (it is "false")',
        )

    communication = _json_kinds(annotations, ANNOTATION_COMMUNICATION, COMMUNICATION_KINDS, label)
    compute = _json_kinds(annotations, ANNOTATION_COMPUTE, COMPUTE_KINDS, label)
    runtime = _runtime(annotations, label)
    min_driver = _min_driver(annotations, label)

    gpus = counts.get(RESOURCE_GPU, 0)
    shared = counts.get(RESOURCE_GPU_SHARED, 0)
    cards = tuple(sorted((r, counts[r]) for r in CARD_RESOURCES if counts.get(r, 0) > 0))
    if "GPU" in compute and not (gpus or shared or mig or counts.get(RESOURCE_AMD_GPU, 0)):
        raise RequestError(
            label,
            ANNOTATION_COMPUTE,
            f"lists GPU but the pod requests none of {RESOURCE_GPU}, {RESOURCE_GPU_SHARED}, "
            f"{RESOURCE_MIG_PREFIX}*, {RESOURCE_AMD_GPU}",
        )

    return PodRequest(
        namespace=namespace,
        name=name,
        uid=uid,
        gpus=gpus,
        gpu_shared=shared,
        mig=mig,
        sriov_vfs=counts.get(RESOURCE_SRIOV_VF, 0),
        sriov_vfio=counts.get(RESOURCE_SRIOV_VF_VFIO, 0),
        rdma=counts.get(RESOURCE_RDMA, 0),
        cards=cards,
        cpus=cpus,
        cpu_pinning=pinning,
        topology_aware=aware,
        policy=policy,
        communication=communication,
        compute=compute,
        runtime=runtime,
        min_driver=min_driver,
    )


# -- resources, counted as kube-scheduler does --------------------------------------------------


def _pod_totals(spec: Mapping[str, Any], label: str) -> dict[str, Decimal]:
    """max(sum of app containers + restartable init containers, each init container's peak).

    The peak of a regular init container is its own request plus the restartable
    (sidecar) init containers started before it, as in k8s.io/component-helpers'
    AggregateContainerRequests. Pod overhead only carries cpu/memory, which the
    engine does not pin, so it is left out.
    """
    totals: dict[str, Decimal] = {}
    for container in _containers(spec, "containers", label):
        _add(totals, _container_requests(container, label))
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for container in _containers(spec, "initContainers", label):
        requests = _container_requests(container, label)
        if container.get("restartPolicy") == "Always":
            _add(totals, requests)
            _add(sidecars, requests)
            _max(init_peak, sidecars)
        else:
            peak = dict(requests)
            _add(peak, sidecars)
            _max(init_peak, peak)
    _max(totals, init_peak)
    return totals


def _containers(spec: Mapping[str, Any], key: str, label: str) -> list[Mapping[str, Any]]:
    raw = spec.get(key)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RequestError(label, f"spec.{key}", "expected a list")
    if len(raw) > MAX_CONTAINERS:
        raise RequestError(label, f"spec.{key}", f"more than {MAX_CONTAINERS} containers")
    return [_mapping(c, label, f"spec.{key}[{i}]") for i, c in enumerate(raw)]


def _container_requests(container: Mapping[str, Any], label: str) -> dict[str, Decimal]:
    """Requests, with limits standing in where a request is absent (as the API server defaults them)."""
    where = f"container {container.get('name', '?')}"
    resources = _mapping(container.get("resources"), label, f"{where} resources")
    requests = _quantities(resources.get("requests"), label, where)
    limits = _quantities(resources.get("limits"), label, where)
    merged = dict(requests)
    for resource, amount in limits.items():
        if resource not in merged:
            merged[resource] = amount
        elif resource.startswith(GEDGE_PREFIX) and merged[resource] != amount:
            raise RequestError(
                label,
                resource,
                f"{where}: requests ({merged[resource]}) and limits ({amount}) must be equal "
                "for an extended resource",
            )
    return merged


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("2", "500m", "1.5Gi", "1e3") as an exact Decimal.

    Checked before any arithmetic: at most 64 characters, exponents within ±30 and
    the value below 1e24, so no input costs more than a few microseconds; NaN,
    Infinity and malformed text raise ValueError.
    """
    if type(value) is str:
        known = _PARSED.get(value)
        if known is not None:
            return known
        amount = _parse_quantity(value)
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.clear()
        _PARSED[value] = amount
        return amount
    return _parse_quantity(value)


_PARSED: dict[str, Decimal] = {}
"""Quantity strings parsed before: pods ask for the same few ("1", "8", "16Gi") again and again."""
MAX_PARSED = 4096


def _parse_quantity(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a quantity string, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        value = repr(value)
    elif isinstance(value, int):
        if abs(value) >= MAX_QUANTITY:
            raise ValueError("larger than 1e24")
        return Decimal(value)
    if len(value) > MAX_QUANTITY_LENGTH:
        raise ValueError(f"longer than {MAX_QUANTITY_LENGTH} characters")
    match = _QUANTITY.fullmatch(value.strip())
    if match is None:
        raise ValueError("not a Kubernetes quantity (like 2, 500m, 1.5Gi or 1e3)")
    with localcontext(_ARITHMETIC):
        number = Decimal(match["number"])
        if match["binary"]:
            amount = number * (2 ** _BINARY[match["binary"]])
        else:
            exponent = int(match["exponent"]) if match["exponent"] else _DECIMAL[match["decimal"] or ""]
            if abs(exponent) > MAX_QUANTITY_EXPONENT:
                raise ValueError(f"exponent {exponent} is beyond ±{MAX_QUANTITY_EXPONENT}")
            amount = number.scaleb(exponent)
        if abs(amount) >= MAX_QUANTITY:
            raise ValueError("larger than 1e24")
    return amount


def _quantities(raw: Any, label: str, where: str) -> dict[str, Decimal]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RequestError(label, f"{where} resources", "expected a map of resource quantities")
    out: dict[str, Decimal] = {}
    for resource, value in raw.items():
        try:
            amount = parse_quantity(value)
        except ValueError as exc:
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:80] + "..."
            raise RequestError(
                label, str(resource)[:256], f"{where}: bad quantity {shown!r}: {exc}"
            ) from None
        if amount < 0:
            raise RequestError(label, str(resource)[:256], f"{where}: negative quantity {value!r}")
        out[str(resource)] = amount
    return out


def _add(into: dict[str, Decimal], other: Mapping[str, Decimal]) -> None:
    for resource, amount in other.items():
        into[resource] = into.get(resource, Decimal(0)) + amount


def _max(into: dict[str, Decimal], other: Mapping[str, Decimal]) -> None:
    for resource, amount in other.items():
        if amount > into.get(resource, Decimal(0)):
            into[resource] = amount


def _whole(amount: Decimal, label: str, field: str) -> int:
    if amount != amount.to_integral_value():
        raise RequestError(label, field, f"must be a whole number, got {amount}")
    count = int(amount)
    if count > MAX_DEVICE_COUNT:
        raise RequestError(label, field, f"{count} is more than {MAX_DEVICE_COUNT}")
    return count


def _pinned_cpus(spec: Mapping[str, Any], label: str) -> int:
    """Exclusive CPUs: every container needs integer cpu with requests equal to limits (Guaranteed)."""
    field = ANNOTATION_CPU_PINNING
    for key in ("containers", "initContainers"):
        for container in _containers(spec, key, label):
            where = f"container {container.get('name', '?')}"
            resources = _mapping(container.get("resources"), label, f"{where} resources")
            limits = _quantities(resources.get("limits"), label, where)
            requests = _quantities(resources.get("requests"), label, where)
            limit = limits.get(RESOURCE_CPU)
            request = requests.get(RESOURCE_CPU, limit)
            if limit is None:
                raise RequestError(label, field, f"{where} has no cpu limit; pinning needs requests = limits")
            if request != limit:
                raise RequestError(
                    label, field, f"{where}: cpu requests ({request}) and limits ({limit}) differ"
                )
            if limit != limit.to_integral_value() or limit < 1:
                raise RequestError(label, field, f"{where}: cpu {limit} is not a whole number of CPUs")
    totals = _pod_totals(spec, label)
    cpus = totals.get(RESOURCE_CPU, Decimal(0))
    if cpus < 1:
        raise RequestError(label, field, "no container requests CPUs")
    return _whole(cpus, label, field)


# -- annotations ------------------------------------------------------------------------------------


def _mapping(raw: Any, label: str, field: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RequestError(label, field, f"expected an object, got {type(raw).__name__}")
    return raw


def _text(annotations: Mapping[str, Any], key: str, label: str, default: str) -> str:
    raw = annotations.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise RequestError(label, key, f"expected a string, got {type(raw).__name__}")
    if len(raw) > MAX_ANNOTATION_LENGTH:
        raise RequestError(label, key, f"longer than {MAX_ANNOTATION_LENGTH} characters")
    return raw.strip()


def _boolean(annotations: Mapping[str, Any], key: str, label: str, default: bool) -> bool:
    if key not in annotations:
        return default
    value = _text(annotations, key, label, default="")
    if value == "true":
        return True
    if value == "false":
        return False
    raise RequestError(label, key, f'must be "true" or "false", got {value!r}')


def _json_kinds(
    annotations: Mapping[str, Any], key: str, allowed: Iterable[str], label: str
) -> tuple[str, ...]:
    if key not in annotations:
        return ()
    text = _text(annotations, key, label, default="")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise RequestError(label, key, f"not a JSON list: {exc.msg} at position {exc.pos}") from None
    except (RecursionError, ValueError):
        raise RequestError(label, key, "expected a flat JSON list of strings") from None
    allowed = tuple(allowed)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(label, key, f"expected a JSON list of strings from {', '.join(allowed)}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise RequestError(
            label, key, f"unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
        )
    return tuple(sorted(set(value)))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _runtime(annotations: Mapping[str, Any], label: str) -> tuple[str, ...]:
    if ANNOTATION_RUNTIME not in annotations:
        return ()
    text = _text(annotations, ANNOTATION_RUNTIME, label, default="")
    parts = tuple(part.strip() for part in text.split(","))
    if not text or any(not part for part in parts):
        raise RequestError(label, ANNOTATION_RUNTIME, f"empty component in {text!r}")
    bad = [p for p in parts if not all(c.isalnum() or c in "._+-" for c in p)]
    if bad:
        raise RequestError(label, ANNOTATION_RUNTIME, f"bad component name(s) {', '.join(map(repr, bad))}")
    return parts


def _min_driver(annotations: Mapping[str, Any], label: str) -> str | None:
    if ANNOTATION_MIN_DRIVER not in annotations:
        return None
    text = _text(annotations, ANNOTATION_MIN_DRIVER, label, default="")
    try:
        parse_driver_version(text)
    except DriverVersionError as exc:
        raise RequestError(label, ANNOTATION_MIN_DRIVER, str(exc)) from None
    return text
