"""JSON <-> model dataclasses: the wire form of the one model.

The agent sends its topology as this JSON inside the gRPC messages and the
extender decodes it back into the same frozen dataclasses, so there is never a
second, hand-kept copy of the model. Decoding names the field at fault.

Strict by default (user input, checkpoints): an unknown field is an error. A
reader of another component's reports passes `unknown`, which is told of each
unknown field (path, names) while decoding goes on without them, so a newer
agent's additions never make an older extender refuse the node (rolling upgrades).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from enum import Enum
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")
REPORT_VERSION = 1
"""The format version of the agent's reports (NodeStateEvent.report_version); bump when fields are added."""
UnknownFields = Callable[[str, list[str]], None]
"""(path of the object, sorted unknown field names) for each object that has some."""


class ModelDecodeError(ValueError):
    """Raised when JSON does not match the model; the message names the path at fault."""


def to_dict(obj: Any) -> Any:
    """Model value -> JSON-ready value: dataclasses as objects, enums as values, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """`to_dict` as JSON text; keys sorted only when indented (for people), field order otherwise."""
    return json.dumps(to_dict(obj), indent=indent, sort_keys=indent is not None)


def from_json(cls: type[T], text: str | bytes, *, unknown: UnknownFields | None = None) -> T:
    """Decode JSON text into `cls`; ModelDecodeError for text that is not JSON or does not fit."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelDecodeError(f"{cls.__name__}: not JSON: {exc}") from None
    except RecursionError:
        raise ModelDecodeError(f"{cls.__name__}: JSON nested too deep") from None
    return from_dict(cls, raw, unknown=unknown)


def from_dict(cls: type[T], raw: Any, path: str | None = None, *, unknown: UnknownFields | None = None) -> T:
    """Decode a parsed JSON value into `cls`, checking every field's type.

    `unknown` None: strict; else unknown fields are reported to it and skipped. Raises
    ModelDecodeError naming the path (`NodeTopology.gpus[0].uuid`) for a wrong type, a missing or
    unknown field, or a value a constructor refuses.
    """
    return _decode(cls, raw, path or cls.__name__, unknown)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, raw: Any, path: str, unknown: UnknownFields | None = None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, raw, path, unknown)
            except ModelDecodeError as exc:
                errors.append(str(exc))
        raise ModelDecodeError(errors[0] if len(errors) == 1 else f"{path}: no variant fits: {errors}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(raw, list | tuple):
            raise ModelDecodeError(f"{path}: expected a list, got {type(raw).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{path}[{i}]", unknown) for i, v in enumerate(raw))
        if len(args) != len(raw):
            raise ModelDecodeError(f"{path}: expected {len(args)} items, got {len(raw)}")
        return tuple(
            _decode(a, v, f"{path}[{i}]", unknown) for i, (a, v) in enumerate(zip(args, raw, strict=True))
        )
    if origin is dict:
        key_t, val_t = typing.get_args(tp)
        if not isinstance(raw, dict):
            raise ModelDecodeError(f"{path}: expected an object, got {type(raw).__name__}")
        return {
            _decode(key_t, k, f"{path}.{k}", unknown): _decode(val_t, v, f"{path}.{k}", unknown)
            for k, v in raw.items()
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(raw, dict):
            raise ModelDecodeError(f"{path}: expected an object, got {type(raw).__name__}")
        hints = _hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        extra = set(raw) - set(fields)
        if extra:
            if unknown is None:
                raise ModelDecodeError(f"{path}: unknown field(s) {sorted(extra)}")
            unknown(path, sorted(map(str, extra)))
        kwargs = {}
        for name, f in fields.items():
            if name in raw:
                kwargs[name] = _decode(hints[name], raw[name], f"{path}.{name}", unknown)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ModelDecodeError(f"{path}: missing field {name!r}")
        try:
            return tp(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ModelDecodeError(f"{path}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(raw)
        except ValueError:
            raise ModelDecodeError(f"{path}: {raw!r} is not one of {[m.value for m in tp]}") from None
    if tp is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        raise ModelDecodeError(f"{path}: expected a number, got {raw!r}")
    if tp in (int, str, bool):
        if isinstance(raw, tp) and not (tp is int and isinstance(raw, bool)):
            return raw
        raise ModelDecodeError(f"{path}: expected {tp.__name__}, got {raw!r}")
    if tp is type(None):
        if raw is None:
            return None
        raise ModelDecodeError(f"{path}: expected null, got {raw!r}")
    raise ModelDecodeError(f"{path}: cannot decode type {tp!r}")
