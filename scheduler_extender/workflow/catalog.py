"""The runtime catalog: CUDA, cuDNN, TensorRT, Python environments... kept on volumes, composed per step.

Read from a YAML file or a ConfigMap's data key. Each component says which
PersistentVolumeClaim and subPath hold it, where it mounts, what it adds to
PATH / LD_LIBRARY_PATH and other variables, what it requires and conflicts
with (PEP 440 specifiers: "cuda>=11.0,<12"), and for CUDA the minimum NVIDIA
driver. A catalog that loads is consistent: unique name+version, parseable
requirements, absolute mount paths.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from gedge_common.files import FileLoadError, parse_yaml, read_bounded
from gedge_model.driver import DriverVersionError, driver_code

CATALOG_KIND = "RuntimeCatalog"
DEFAULT_CONFIGMAP_KEY = "catalog.yaml"
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KIND_ORDER = ("python", "framework", "tensorrt", "nccl", "cudnn", "cuda")
"""PATH precedence by kind: the most specific layer first, the CUDA toolkit last."""
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_CATALOG_BYTES = 1 << 20


class CatalogError(ValueError):
    """A catalog that cannot be used; the message names the component and field at fault."""


@dataclass(frozen=True)
class Constraint:
    """A requirement as written ("cuda>=11.0,<12") and parsed."""

    text: str
    requirement: Requirement

    @property
    def name(self) -> str:
        return self.requirement.name

    def allows(self, version: Version) -> bool:
        return self.requirement.specifier.contains(version, prereleases=True)


@dataclass(frozen=True)
class ModelSupport:
    """Models a component can run: a framework, the versions it loads (PEP 440), the formats it reads."""

    framework: str
    versions: SpecifierSet
    formats: tuple[str, ...] = ()
    text: str = ""
    """The versions as written."""

    def takes(self, framework: str, version: str, fmt: str | None) -> bool:
        return (
            framework == self.framework
            and self.versions.contains(Version(version), prereleases=True)
            and (fmt is None or not self.formats or fmt in self.formats)
        )

    def describe(self) -> str:
        formats = f" ({', '.join(self.formats)})" if self.formats else ""
        return f"{self.framework}{self.text or ' any version'}{formats}"


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    kind: str
    claim_name: str
    mount_path: str
    sub_path: str | None = None
    path: tuple[str, ...] = ()
    ld_library_path: tuple[str, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    requires: tuple[Constraint, ...] = ()
    conflicts: tuple[Constraint, ...] = ()
    min_driver: str | None = None
    default: bool = False
    models: tuple[ModelSupport, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def parsed_version(self) -> Version:
        return Version(self.version)


@dataclass(frozen=True)
class Catalog:
    components: tuple[Component, ...]
    base_path: str = DOCKER_DEFAULT_PATH
    base_ld_library_path: str = ""
    exclusive_kinds: tuple[str, ...] = ("python",)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted({c.name for c in self.components}))

    def versions(self, name: str) -> tuple[Component, ...]:
        return tuple(sorted((c for c in self.components if c.name == name), key=lambda c: c.parsed_version))


def _where(index: int, raw: Mapping[str, Any]) -> str:
    name, version = raw.get("name"), raw.get("version")
    return f"component {name}-{version}" if name and version else f"components[{index}]"


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise CatalogError(f"{where}: expected a list of strings, got {raw!r}")
    return tuple(raw)


def _requirements(raw: Any, where: str) -> tuple[Constraint, ...]:
    out = []
    for text in _strings(raw, where):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise CatalogError(
                f"{where}: {text!r} is not a requirement like 'cuda>=11.0,<12': {exc}"
            ) from None
        if req.extras or req.url or req.marker:
            raise CatalogError(f"{where}: {text!r}: only a name and version specifiers are allowed")
        out.append(Constraint(text.strip(), req))
    return tuple(out)


def _under(mount: str, part: str) -> str:
    return posixpath.normpath(part if part.startswith("/") else posixpath.join(mount, part))


def _component(index: int, raw: Any) -> Component:
    if not isinstance(raw, Mapping):
        raise CatalogError(f"components[{index}]: expected a mapping")
    where = _where(index, raw)
    known = {
        "name",
        "version",
        "kind",
        "volume",
        "subPath",
        "mountPath",
        "env",
        "requires",
        "conflicts",
        "minDriver",
        "default",
        "description",
        "models",
    }
    unknown = set(raw) - known
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CatalogError(f"{where}.name: {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    version = str(raw.get("version", ""))
    try:
        Version(version)
    except InvalidVersion:
        raise CatalogError(f"{where}.version: {version!r} is not a version like 11.2 or 8.2.1") from None
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise CatalogError(f"{where}.kind: required (cuda, cudnn, tensorrt, python, framework, ...)")
    volume = raw.get("volume")
    claim = volume.get("claimName") if isinstance(volume, Mapping) else volume
    if not isinstance(claim, str) or not _CLAIM.match(claim):
        raise CatalogError(f"{where}.volume: a PersistentVolumeClaim name is required, got {volume!r}")
    mount = raw.get("mountPath")
    if not isinstance(mount, str) or not mount.startswith("/") or ".." in mount.split("/"):
        raise CatalogError(f"{where}.mountPath: an absolute path is required, got {mount!r}")
    sub_path = raw.get("subPath")
    if sub_path is not None and (
        not isinstance(sub_path, str) or sub_path.startswith("/") or ".." in sub_path.split("/")
    ):
        raise CatalogError(f"{where}.subPath: must be a relative path inside the volume, got {sub_path!r}")
    env = raw.get("env") or {}
    if not isinstance(env, Mapping) or set(env) - {"path", "ldLibraryPath", "vars"}:
        raise CatalogError(f"{where}.env: expected a mapping of path, ldLibraryPath, vars")
    variables = env.get("vars") or {}
    if not isinstance(variables, Mapping):
        raise CatalogError(f"{where}.env.vars: expected a mapping")
    for key, value in variables.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key) or key in ("PATH", "LD_LIBRARY_PATH"):
            raise CatalogError(
                f"{where}.env.vars: {key!r} is not a variable name (PATH parts go in env.path)"
            )
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise CatalogError(f"{where}.env.vars.{key}: expected a string")
    min_driver = raw.get("minDriver")
    if min_driver is not None:
        min_driver = str(min_driver)
        try:
            driver_code(min_driver)
        except DriverVersionError as exc:
            raise CatalogError(f"{where}.minDriver: {exc}") from None
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise CatalogError(f"{where}.default: expected true or false")
    return Component(
        name=name,
        version=version,
        kind=kind,
        claim_name=claim,
        mount_path=posixpath.normpath(mount),
        sub_path=sub_path,
        path=tuple(_under(mount, p) for p in _strings(env.get("path"), f"{where}.env.path")),
        ld_library_path=tuple(
            _under(mount, p) for p in _strings(env.get("ldLibraryPath"), f"{where}.env.ldLibraryPath")
        ),
        variables={k: str(v) for k, v in variables.items()},
        requires=_requirements(raw.get("requires"), f"{where}.requires"),
        conflicts=_requirements(raw.get("conflicts"), f"{where}.conflicts"),
        min_driver=min_driver,
        default=default,
        models=_models(raw.get("models"), f"{where}.models"),
    )


def _models(raw: Any, where: str) -> tuple[ModelSupport, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise CatalogError(f"{where}: expected a list of {{framework, versions, formats}}")
    out = []
    for i, item in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"framework", "versions", "formats"}:
            raise CatalogError(f"{here}: expected a mapping of framework, versions, formats")
        framework = item.get("framework")
        if not isinstance(framework, str) or not framework.strip():
            raise CatalogError(f"{here}.framework: required (tensorflow, pytorch, onnx, ...)")
        text = str(item.get("versions", ""))
        try:
            versions = SpecifierSet(text)
        except InvalidSpecifier:
            raise CatalogError(f"{here}.versions: {text!r} is not a specifier like '>=2.0,<2.12'") from None
        formats = tuple(f.strip().lower() for f in _strings(item.get("formats"), f"{here}.formats"))
        out.append(ModelSupport(framework.strip().lower(), versions, formats, text.replace(" ", "")))
    return tuple(out)


def catalog_from_dict(raw: Any) -> Catalog:
    if not isinstance(raw, Mapping):
        raise CatalogError("a runtime catalog must be a mapping with a components list")
    if raw.get("kind", CATALOG_KIND) != CATALOG_KIND:
        raise CatalogError(f"kind {raw.get('kind')!r} is not {CATALOG_KIND}")
    unknown = set(raw) - {"apiVersion", "kind", "metadata", "defaults", "exclusiveKinds", "components"}
    if unknown:
        raise CatalogError(f"catalog: unknown field(s) {sorted(unknown)}")
    items = raw.get("components")
    if not isinstance(items, list) or not items:
        raise CatalogError("catalog.components: expected a non-empty list")
    components = tuple(_component(i, c) for i, c in enumerate(items))
    seen: dict[tuple[str, Version], Component] = {}
    for c in components:
        key = (c.name, c.parsed_version)
        if key in seen:
            raise CatalogError(f"component {c.id} is listed twice (first as {seen[key].id})")
        seen[key] = c
    for name in {c.name for c in components}:
        defaults = [c.id for c in components if c.name == name and c.default]
        if len(defaults) > 1:
            raise CatalogError(f"component {name}: more than one default ({', '.join(defaults)})")
    defaults_block = raw.get("defaults") or {}
    if not isinstance(defaults_block, Mapping) or set(defaults_block) - {"path", "ldLibraryPath"}:
        raise CatalogError("catalog.defaults: expected a mapping of path and ldLibraryPath")
    return Catalog(
        components=components,
        base_path=str(defaults_block.get("path", DOCKER_DEFAULT_PATH)),
        base_ld_library_path=str(defaults_block.get("ldLibraryPath", "")),
        exclusive_kinds=_strings(raw.get("exclusiveKinds", ["python"]), "catalog.exclusiveKinds"),
    )


def load_catalog_text(
    text: str | bytes, source: str = "catalog", key: str = DEFAULT_CONFIGMAP_KEY
) -> Catalog:
    """A catalog document, or a ConfigMap manifest holding one under data[key]."""
    try:
        raw = parse_yaml(text, source=source, limit=MAX_CATALOG_BYTES)
    except FileLoadError as exc:
        raise CatalogError(str(exc)) from None
    if isinstance(raw, Mapping) and raw.get("kind") == "ConfigMap":
        return load_catalog_configmap(raw, key)
    try:
        return catalog_from_dict(raw)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def load_catalog_file(path: str, key: str = DEFAULT_CONFIGMAP_KEY) -> Catalog:
    """A catalog file (YAML or ConfigMap manifest); CatalogError naming the path when it is unreadable,
    too large or not a catalog."""
    try:
        text = read_bounded(path, limit=MAX_CATALOG_BYTES)
    except FileLoadError as exc:
        raise CatalogError(str(exc)) from None
    return load_catalog_text(text, source=path, key=key)


def load_catalog_configmap(configmap: Mapping[str, Any], key: str = DEFAULT_CONFIGMAP_KEY) -> Catalog:
    """From a ConfigMap object (as the API returns it, a dict): the catalog YAML under data[key]."""
    meta = configmap.get("metadata") or {}
    source = f"configmap {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    data = configmap.get("data") or {}
    if key not in data:
        raise CatalogError(f"{source}: no data key {key!r} (keys: {sorted(data)})")
    return load_catalog_text(data[key], source=f"{source}[{key}]")
