"""Typed experiment configs: `--set key=value` overrides checked against the dataclass."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

__all__ = ["ConfigError", "apply_overrides", "parse_overrides", "config_to_json", "describe"]


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, or invalid value."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(name: str, text: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        return _convert(name, text, args[0])
    if origin is tuple:
        (inner, *_rest) = typing.get_args(typ)
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_convert(name, p.strip(), inner) for p in parts)
    if typ is bool:
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"{name} must be a bool (true/false), got {text!r}")
    if typ in (int, float, str):
        try:
            value = typ(text)
        except ValueError:
            raise ConfigError(f"{name} must be {typ.__name__}, got {text!r}") from None
        if typ is int and str(value) != text.strip().lstrip("+"):
            raise ConfigError(f"{name} must be int, got {text!r}")
        return value
    raise ConfigError(f"{name}: cannot parse values of type {typ}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`["a=1", "b.c=x"]` → `{"a": "1", "b.c": "x"}`; rejects items without `=`."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def apply_overrides(config, overrides: dict[str, Any]):
    """A copy of `config` with `overrides` applied; nested fields as `outer.inner`.

    String values are parsed to the field's type; unknown keys and bad types raise a
    `ConfigError` naming the key and the allowed fields.
    """
    types_ = _field_types(type(config))
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in types_:
            allowed = ", ".join(sorted(types_))
            raise ConfigError(
                f"unknown config key {key!r} for {type(config).__name__}; allowed: {allowed}"
            )
        if rest:
            if not dataclasses.is_dataclass(getattr(config, head)):
                raise ConfigError(f"{head} is not a nested config; cannot set {key!r}")
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = _convert(head, value, types_[head]) if isinstance(value, str) else value
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(config, head), sub)
    try:
        return dataclasses.replace(config, **direct)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def config_to_json(config) -> dict:
    """The config as a JSON-ready dict (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def describe(cls) -> list[tuple[str, str, Any, str]]:
    """`(name, type, default, help)` for every field; help from `metadata["help"]`."""
    types_ = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        t = types_[f.name]
        name = str(t) if typing.get_origin(t) else getattr(t, "__name__", str(t))
        rows.append((f.name, name, default, f.metadata.get("help", "")))
    return rows
