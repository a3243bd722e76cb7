"""A step's runtime list -> pod volumes, mounts, environment and the node restriction its CUDA needs.

Runtime items are `name-version` ("cuda-11.2", "cudnn-8.2.1") or a bare name
when the catalog has one version of it or marks one as default ("tf2-py38").
Anything that cannot work together is refused before a pod exists, with a
message naming both sides.

Driver restriction: the agent labels each GPU node with
`gedge.io/nvidia-driver` (the version, e.g. "535.54.03") and
`gedge.io/nvidia-driver-code` (the same as one integer, `catalog.driver_code`).
The composed pod carries a required node affinity `gedge.io/nvidia-driver-code Gt
<minimum code - 1>`, which kube-scheduler enforces before any extender is
asked (a node without the label, i.e. without a driver, never matches), and
the annotation `gedge.io/min-nvidia-driver` so the extender can state the
reason when it filters on the driver its agents report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

from scheduler_extender.workflow.catalog import KIND_ORDER, Catalog, Component, driver_code

LABEL_DRIVER = "gedge.io/nvidia-driver"
LABEL_DRIVER_CODE = "gedge.io/nvidia-driver-code"
ANNOTATION_MIN_DRIVER = "gedge.io/min-nvidia-driver"
ANNOTATION_RUNTIME = "gedge.io/runtime"
VOLUME_PREFIX = "gedge-rt-"


class CompositionError(ValueError):
    """A runtime list that cannot be composed: unknown component, conflict or unmet requirement."""


@dataclass(frozen=True)
class Composition:
    components: tuple[Component, ...]
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    env: tuple[Mapping[str, str], ...] = ()
    min_driver: str | None = None
    node_selector_requirements: tuple[Mapping[str, Any], ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


def _resolve(catalog: Catalog, item: str) -> Component:
    """`name-version` or a bare name; the longest catalog name that fits wins ("tf2-py38" over "tf2")."""
    names = sorted(catalog.names(), key=len, reverse=True)
    for name in names:
        if item == name:
            versions = catalog.versions(name)
            defaults = [c for c in versions if c.default]
            if len(versions) == 1:
                return versions[0]
            if defaults:
                return defaults[0]
            listed = ", ".join(c.id for c in versions)
            raise CompositionError(f"runtime {item!r}: say which version ({listed})")
        if item.startswith(name + "-"):
            wanted = item[len(name) + 1 :]
            try:
                wanted_version = Version(wanted)
            except InvalidVersion:
                continue
            for component in catalog.versions(name):
                if component.parsed_version == wanted_version:
                    return component
            listed = ", ".join(c.version for c in catalog.versions(name))
            raise CompositionError(f"runtime {item!r}: the catalog has {name} {listed}, not {wanted}")
    raise CompositionError(f"runtime {item!r}: unknown component (catalog: {', '.join(catalog.names())})")


def _check(chosen: Sequence[Component], catalog: Catalog) -> None:
    by_name: dict[str, Component] = {}
    for component in chosen:
        other = by_name.get(component.name)
        if other is not None and other is not component:
            raise CompositionError(
                f"{other.id} conflicts with {component.id}: one version of {component.name} per step"
            )
        by_name[component.name] = component
    for kind in catalog.exclusive_kinds:
        same = [c for c in chosen if c.kind == kind]
        if len(same) > 1:
            raise CompositionError(
                f"{same[0].id} conflicts with {same[1].id}: both are of kind {kind}, one per step"
            )
    for component in chosen:
        for req in component.requires:
            present = by_name.get(req.name)
            if present is None:
                raise CompositionError(
                    f"{component.id} requires {req.text}, but the runtime has no {req.name}"
                )
            if not req.allows(present.parsed_version):
                raise CompositionError(
                    f"{component.id} requires {req.text}, but the runtime has {present.id}"
                )
        for req in component.conflicts:
            present = by_name.get(req.name)
            if present is not None and req.allows(present.parsed_version):
                raise CompositionError(f"{component.id} conflicts with {present.id} ({req.text})")
    mounts: dict[str, Component] = {}
    for component in chosen:
        for path, other in mounts.items():
            if (
                path == component.mount_path
                or component.mount_path.startswith(path.rstrip("/") + "/")
                or (path.startswith(component.mount_path.rstrip("/") + "/"))
            ):
                raise CompositionError(
                    f"{other.id} and {component.id} both mount at {path}"
                    + ("" if path == component.mount_path else f" / {component.mount_path}")
                )
        mounts[component.mount_path] = component
    variables: dict[str, tuple[str, Component]] = {}
    for component in chosen:
        for key, value in component.variables.items():
            if key in variables and variables[key][0] != value:
                first_value, first = variables[key]
                raise CompositionError(
                    f"{first.id} sets {key}={first_value} but {component.id} sets {key}={value}"
                )
            variables[key] = (value, component)


def _rank(component: Component) -> int:
    return KIND_ORDER.index(component.kind) if component.kind in KIND_ORDER else len(KIND_ORDER)


def _volume_name(claim: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]", "-", claim)
    return (VOLUME_PREFIX + cleaned)[:63].rstrip("-")


def _join(parts: Sequence[str], base: str) -> str:
    seen: list[str] = []
    for part in parts:
        if part not in seen:
            seen.append(part)
    return ":".join([*seen, *([base] if base else [])])


def compose(
    catalog: Catalog, runtime: Sequence[str], *, container_env: Mapping[str, str] | None = None
) -> Composition:
    """`container_env` is the step's own PATH/LD_LIBRARY_PATH, which the runtime's parts go before.

    Without it, PATH ends with the catalog's base PATH (Docker's default unless
    the catalog says otherwise): Kubernetes cannot read the image's own value.
    """
    if not runtime:
        return Composition(components=())
    chosen: list[Component] = []
    for item in runtime:
        component = _resolve(catalog, item.strip())
        if component not in chosen:
            chosen.append(component)
    _check(chosen, catalog)
    ordered = sorted(chosen, key=lambda c: (_rank(c), chosen.index(c)))
    volumes: dict[str, Mapping[str, Any]] = {}
    mounts = []
    for component in ordered:
        name = _volume_name(component.claim_name)
        volumes.setdefault(
            name,
            {"name": name, "persistentVolumeClaim": {"claimName": component.claim_name, "readOnly": True}},
        )
        mount: dict[str, Any] = {"name": name, "mountPath": component.mount_path, "readOnly": True}
        if component.sub_path:
            mount["subPath"] = component.sub_path
        mounts.append(mount)
    own = container_env or {}
    env: list[Mapping[str, str]] = []
    path = _join([p for c in ordered for p in c.path], own.get("PATH", catalog.base_path))
    env.append({"name": "PATH", "value": path})
    ld = _join(
        [p for c in ordered for p in c.ld_library_path],
        own.get("LD_LIBRARY_PATH", catalog.base_ld_library_path),
    )
    if ld:
        env.append({"name": "LD_LIBRARY_PATH", "value": ld})
    for component in ordered:
        for key, value in sorted(component.variables.items()):
            if not any(e["name"] == key for e in env):
                env.append({"name": key, "value": value})
    drivers = [c.min_driver for c in ordered if c.min_driver]
    min_driver = max(drivers, key=driver_code) if drivers else None
    annotations = {ANNOTATION_RUNTIME: ",".join(c.id for c in chosen)}
    requirements: tuple[Mapping[str, Any], ...] = ()
    if min_driver is not None:
        annotations[ANNOTATION_MIN_DRIVER] = min_driver
        requirements = (
            {"key": LABEL_DRIVER_CODE, "operator": "Gt", "values": [str(driver_code(min_driver) - 1)]},
        )
    return Composition(
        components=tuple(ordered),
        volumes=tuple(volumes.values()),
        volume_mounts=tuple(mounts),
        env=tuple(env),
        min_driver=min_driver,
        node_selector_requirements=requirements,
        annotations=annotations,
    )


def node_satisfies(composition: Composition, node_labels: Mapping[str, str]) -> tuple[bool, str]:
    """The driver check on one node's labels, as kube-scheduler's affinity decides it, with a reason."""
    if composition.min_driver is None:
        return True, ""
    code = node_labels.get(LABEL_DRIVER_CODE)
    if code is None or not code.isdigit():
        return False, f"node has no {LABEL_DRIVER_CODE} label (no NVIDIA driver reported)"
    if int(code) < driver_code(composition.min_driver):
        shown = node_labels.get(LABEL_DRIVER, code)
        return False, f"NVIDIA driver {shown} is older than {composition.min_driver} needed by the runtime"
    return True, ""


MAX_STACKS = 512
"""Stacks considered for one model; a catalog has a handful of versions per component."""


@dataclass(frozen=True)
class RuntimeChoice:
    """The stack picked for a model (component ids, as a `runtime` list would name them) and why."""

    runtime: tuple[str, ...]
    reason: str


def _stacks(catalog: Catalog, root: Component) -> list[list[Component]]:
    """Every way to meet `root`'s requirements (and theirs) from the catalog, newest versions first."""
    found: list[list[Component]] = []

    def extend(chosen: dict[str, Component], pending: list[Any]) -> None:
        if len(found) >= MAX_STACKS:
            return
        if not pending:
            found.append(list(chosen.values()))
            return
        requirement, rest = pending[0], pending[1:]
        present = chosen.get(requirement.name)
        if present is not None:
            if requirement.allows(present.parsed_version):
                extend(chosen, rest)
            return
        for candidate in reversed(catalog.versions(requirement.name)):
            if requirement.allows(candidate.parsed_version):
                extend({**chosen, requirement.name: candidate}, rest + list(candidate.requires))

    extend({root.name: root}, list(root.requires))
    return found


def choose_runtime(catalog: Catalog, framework: str, version: str, fmt: str | None) -> RuntimeChoice:
    """The runtime stack for a model, from the components' `models` metadata.

    Among the stacks that take the model and compose, the one with the oldest
    minimum NVIDIA driver wins (the most nodes can run it); ties go to the
    newest versions. CompositionError says what is incompatible with what.
    """
    shown = f"{framework} {version}" + (f" ({fmt})" if fmt else "")
    takers = [
        (c, support)
        for c in catalog.components
        for support in c.models
        if support.takes(framework, version, fmt)
    ]
    if not takers:
        same = [
            f"{c.id} takes {s.describe()}"
            for c in catalog.components
            for s in c.models
            if s.framework == framework
        ]
        if same:
            raise CompositionError(f"model {shown}: no runtime in the catalog takes it ({'; '.join(same)})")
        known = sorted({s.framework for c in catalog.components for s in c.models})
        raise CompositionError(
            f"model {shown}: no runtime in the catalog takes {framework} models "
            f"(frameworks it has: {', '.join(known) or 'none'})"
        )
    candidates: list[tuple[Component, Any, list[Component], Composition]] = []
    refusals: list[str] = []
    for taker, support in takers:
        stacks = _stacks(catalog, taker)
        if not stacks:
            needs = ", ".join(r.text for r in taker.requires)
            refusals.append(f"{taker.id} requires {needs}, which the catalog cannot meet")
        for stack in stacks:
            try:
                composition = compose(catalog, [c.id for c in stack])
            except CompositionError as exc:
                refusals.append(f"{taker.id}: {exc}")
                continue
            candidates.append((taker, support, stack, composition))
    if not candidates:
        takers_text = ", ".join(t.id for t, _ in takers)
        raise CompositionError(
            f"model {shown}: {takers_text} take(s) it, but no stack composes: {'; '.join(refusals[:4])}"
        )
    candidates.sort(key=lambda c: tuple(x.parsed_version for x in c[2]), reverse=True)
    taker, support, stack, composition = min(
        candidates, key=lambda c: driver_code(c[3].min_driver) if c[3].min_driver else 0
    )
    with_parts = ", ".join(c.id for c in stack[1:])
    driver = (
        f"needs NVIDIA driver >= {composition.min_driver}"
        if composition.min_driver
        else "needs no NVIDIA driver"
    )
    reason = (
        f"model {shown}: {taker.id} takes {support.describe()}"
        + (f", with {with_parts}" if with_parts else "")
        + f"; {driver}, the oldest of {len(candidates)} stack(s) that take it (so the most nodes qualify)"
    )
    return RuntimeChoice(tuple(c.id for c in stack), reason)
