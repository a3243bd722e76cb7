"""Bounded loading of the files the daemons and commands read: config, kubelet config, agents,
catalogs, workflows, pods, topologies and checkpoints.

A file is read only up to its bound (never whole into memory first), and every error names what
the file is for and its path, so each caller wraps it in its own error type unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

MAX_FILE_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_ALIAS_NODES = 10_000


class FileLoadError(ValueError):
    """A file is unreadable, over its bound, or not YAML/JSON; the message is `SOURCE: why`, where
    SOURCE is `WHAT PATH` (`config /etc/gedge/agent.yaml`). `missing` is True when it does not exist."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class _YamlBoundError(yaml.YAMLError):
    """A YAML document nests too deep or its aliases expand too far."""


class BoundedSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses nesting deeper than MAX_YAML_DEPTH levels, aliases that
    together add more than MAX_YAML_ALIAS_NODES nodes once expanded (billion laughs), and a key
    written twice in one mapping."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                where = f"line {mark.line + 1}, column {mark.column + 1}"
                raise _YamlBoundError(f"nested deeper than {MAX_YAML_DEPTH} levels ({where})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        """As the composer's, but a key written twice in one mapping is an error, not the last one
        silently winning (`{node: a, node: b}`); keys brought in by a `<<` merge may still be overridden."""
        node: yaml.MappingNode = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    mark = key.start_mark
                    raise _YamlBoundError(
                        f"key {key.value!r} is written twice in one mapping"
                        f" (line {mark.line + 1}, column {mark.column + 1})"
                    )
                seen.add((key.tag, key.value))
        return node

    def construct_document(self, node: yaml.Node) -> Any:
        sizes: dict[int, int] = {}
        expanded = _expanded_size(node, sizes)
        if expanded - len(sizes) > MAX_YAML_ALIAS_NODES:
            raise _YamlBoundError(
                f"aliases expand to {expanded} nodes from {len(sizes)} written;"
                f" at most {MAX_YAML_ALIAS_NODES} more than written are allowed"
            )
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes under `node` (itself included) with each alias counted as a full copy; `sizes` memoises
    per node, so the walk is linear in the nodes written. Depth is bounded by the composer."""
    known = sizes.get(id(node))
    if known is not None:
        if known < 0:
            raise _YamlBoundError("an alias refers to a node that contains it (recursive anchor)")
        return known
    sizes[id(node)] = -1
    total = 1
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, sizes)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(key, sizes) + _expanded_size(value, sizes)
    sizes[id(node)] = total
    return total


def source_of(path: str | Path, what: str = "") -> str:
    """How errors name a file: `WHAT PATH`, or the path alone when `what` is empty."""
    return f"{what} {path}" if what else str(path)


def read_bounded(path: str | Path, *, what: str = "", limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, at most `limit`; FileLoadError when unreadable or larger."""
    source = source_of(path, what)
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileLoadError(
            f"{source}: {exc.strerror or exc}", missing=isinstance(exc, FileNotFoundError)
        ) from None
    if len(data) > limit:
        raise FileLoadError(f"{source}: larger than {limit} bytes")
    return data


def _bounded(text: str | bytes, source: str, limit: int) -> None:
    if len(text) > limit:
        raise FileLoadError(f"{source}: larger than {limit} bytes")


def _parse(
    text: str | bytes, source: str, limit: int, load: Callable[[Any], Any], kind: str, errors: type[Exception]
) -> Any:
    _bounded(text, source, limit)
    try:
        return load(text)
    except _YamlBoundError as exc:
        raise FileLoadError(f"{source}: {exc}") from None
    except errors as exc:
        raise FileLoadError(f"{source}: not {kind}: {exc}") from None


def parse_yaml(text: str | bytes, *, source: str, limit: int = MAX_FILE_BYTES) -> Any:
    """One YAML document (BoundedSafeLoader; empty -> None); FileLoadError `SOURCE: not YAML: ...`,
    or `SOURCE: nested deeper than ...` / `SOURCE: aliases expand to ...`."""
    return _parse(text, source, limit, lambda t: yaml.load(t, BoundedSafeLoader), "YAML", yaml.YAMLError)


def parse_yaml_all(text: str | bytes, *, source: str, limit: int = MAX_FILE_BYTES) -> list[Any]:
    """Every non-empty document of a `---` separated YAML stream, in order."""
    documents = _parse(
        text, source, limit, lambda t: list(yaml.load_all(t, BoundedSafeLoader)), "YAML", yaml.YAMLError
    )
    return [d for d in documents if d is not None]


def parse_json(text: str | bytes, *, source: str, limit: int = MAX_FILE_BYTES) -> Any:
    """One JSON value; FileLoadError `SOURCE: not JSON: ...` (also for nesting past 1024 levels)."""
    return _parse(text, source, limit, orjson.loads, "JSON", orjson.JSONDecodeError)


def load_yaml(path: str | Path, *, what: str = "", limit: int = MAX_FILE_BYTES) -> Any:
    """read_bounded then parse_yaml, errors naming `WHAT PATH`."""
    return parse_yaml(read_bounded(path, what=what, limit=limit), source=source_of(path, what), limit=limit)


def load_json(path: str | Path, *, what: str = "", limit: int = MAX_FILE_BYTES) -> Any:
    """read_bounded then parse_json, errors naming `WHAT PATH`."""
    return parse_json(read_bounded(path, what=what, limit=limit), source=source_of(path, what), limit=limit)


def sysfs_root_problem(root: Path) -> str | None:
    """Why `root` cannot be a discovery root (/ or the folder of an unpacked sysfs snapshot, which
    holds sys/devices/system/cpu), or None. Pointing at the folder above a snapshot, or at its
    archive, is the usual mistake; both would otherwise discover an empty node."""
    if not root.exists():
        return "no such directory"
    if not root.is_dir():
        return "not a directory (unpack a snapshot archive and give its folder)"
    if not (root / "sys" / "devices" / "system" / "cpu").is_dir():
        return "no sys/devices/system/cpu under it (give / or the folder of an unpacked sysfs snapshot)"
    return None
