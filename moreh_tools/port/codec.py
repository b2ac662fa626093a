"""JSON for what crosses the port: dataclasses, tuples, datetimes and the builtins, decoded by their type hints.

Encoding needs no types (a dataclass becomes an object of its fields, a tuple a list, a datetime ISO-8601
text); decoding is driven by the type the receiver expects, so a reply is rebuilt into the very frozen
dataclasses the service returned. Anything that does not fit the expected type raises :class:`CodecError`
(a reply from another version of moreh-tools, or a malformed request).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any


class CodecError(ValueError):
    """The data does not have the shape the receiver expects."""


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [encode(v) for v in sorted(value)]
    raise CodecError(f"cannot encode a {type(value).__name__}")


_hints: dict[type, dict[str, Any]] = {}


def _fields_of(cls: type) -> dict[str, Any]:
    hints = _hints.get(cls)
    if hints is None:
        module = sys.modules.get(cls.__module__)
        every = typing.get_type_hints(cls, vars(module) if module else None)
        hints = {f.name: every[f.name] for f in dataclasses.fields(cls) if f.init}
        _hints[cls] = hints
    return hints


def decode(kind: Any, data: Any, where: str = "value") -> Any:
    """``data`` (decoded JSON) rebuilt as ``kind``; CodecError naming ``where`` when it does not fit."""
    if kind is Any or kind is object:
        return data
    if kind is None or kind is type(None):
        if data is not None:
            raise CodecError(f"{where} should be null")
        return None
    origin = typing.get_origin(kind)
    if origin is typing.Union or origin is types.UnionType:
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return decode(option, data, where)
            except CodecError as exc:
                errors.append(str(exc))
        raise CodecError("; ".join(errors) or f"{where} does not fit {kind}")
    if origin is typing.Literal:
        if data not in typing.get_args(kind):
            raise CodecError(f"{where} should be one of {typing.get_args(kind)}")
        return data
    if origin in (list, tuple, set, frozenset) or _is_sequence(origin):
        if not isinstance(data, list):
            raise CodecError(f"{where} should be a list")
        args = typing.get_args(kind)
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(args) != len(data):
                raise CodecError(f"{where} should have {len(args)} items")
            return tuple(decode(a, d, f"{where}[{i}]") for i, (a, d) in enumerate(zip(args, data, strict=True)))
        item = args[0] if args else Any
        items = [decode(item, d, f"{where}[{i}]") for i, d in enumerate(data)]
        builder: Callable[[list[Any]], Any] = list if origin is list or _is_sequence(origin) else origin
        return builder(items)
    if origin is dict or (origin is not None and getattr(origin, "__name__", "") == "Mapping"):
        if not isinstance(data, dict):
            raise CodecError(f"{where} should be an object")
        key_kind, value_kind = typing.get_args(kind) or (Any, Any)
        return {_key(key_kind, k, where): decode(value_kind, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(kind, type):
        return _decode_class(kind, data, where)
    raise CodecError(f"{where}: cannot decode {kind}")


def _is_sequence(origin: Any) -> bool:
    return origin is not None and getattr(origin, "__name__", "") == "Sequence"


def _key(kind: Any, key: str, where: str) -> Any:
    if kind is int:
        try:
            return int(key)
        except ValueError:
            raise CodecError(f"{where}: key {key!r} should be a number") from None
    return key


def _decode_class(kind: type, data: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        if not isinstance(data, dict):
            raise CodecError(f"{where} should be an object")
        hints = _fields_of(kind)
        missing = [name for name, f in _required(kind).items() if f and name not in data]
        if missing:
            raise CodecError(f"{where} lacks {', '.join(missing)}")
        values = {name: decode(hints[name], data[name], f"{where}.{name}") for name in hints if name in data}
        return kind(**values)
    if kind is bool:
        if not isinstance(data, bool):
            raise CodecError(f"{where} should be true or false")
        return data
    if kind is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise CodecError(f"{where} should be an integer")
        return data
    if kind is float:
        if not isinstance(data, int | float) or isinstance(data, bool):
            raise CodecError(f"{where} should be a number")
        return float(data)
    if kind is str:
        if not isinstance(data, str):
            raise CodecError(f"{where} should be text")
        return data
    if kind is datetime:
        if not isinstance(data, str):
            raise CodecError(f"{where} should be an ISO-8601 time")
        try:
            return datetime.fromisoformat(data)
        except ValueError:
            raise CodecError(f"{where} should be an ISO-8601 time") from None
    raise CodecError(f"{where}: cannot decode a {kind.__name__}")


_required_cache: dict[type, dict[str, bool]] = {}


def _required(kind: type) -> dict[str, bool]:
    found = _required_cache.get(kind)
    if found is None:
        found = {
            f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            for f in dataclasses.fields(kind)
            if f.init
        }
        _required_cache[kind] = found
    return found
