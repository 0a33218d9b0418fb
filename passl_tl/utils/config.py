"""YAML configs with ``_base_`` inheritance and typed ``-o key.sub=value`` overrides."""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable, Mapping

import yaml

from .registry import ConfigError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 does, and refuses a key written
    twice in one mapping (YAML would keep the last one silently); ``<<`` merge keys may still be overridden."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise ConfigError(f"duplicate key '{key}' in {key_node.start_mark.name}, line {line} "
                                      f"(first at line {first_line[key]}): a YAML mapping may set a key once")
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?$|^[-+]?\d+[eE][-+]?\d+$"),
    list("-+0123456789."))


def yaml_load(text_or_stream: Any, source: str | None = None) -> Any:
    """Parse YAML; ``source`` names the text in errors (a file object names itself)."""
    loader = _Loader(text_or_stream)
    if source is not None:
        loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class Config(dict):
    """A plain nested dict that remembers the file it was read from (for error messages)."""

    source: str = "<dict>"

    def where(self, key_path: str) -> str:
        return f"'{key_path}' of {self.source}"


def read_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse YAML {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def merge(base: dict, update: Mapping) -> dict:
    """Deep-merge ``update`` into a copy of ``base``.

    A mapping replaces instead of merging when it has ``_delete_: true`` or names another
    component (``name:``) than the one it overrides.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not value.get(DELETE_KEY) \
                and value.get("name", out[key].get("name")) == out[key].get("name", value.get("name")):
            out[key] = merge(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = {k: copy.deepcopy(v) for k, v in value.items() if k != DELETE_KEY}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"circular {BASE_KEY} chain: {' -> '.join(seen + (path,))}")
    data = read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        merged = merge(merged, _load_with_bases(base_path, seen + (path,)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml_load(raw, f"override '{text}'") if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse the value of override '{text}': {e}") from e
    return keys, value


def _compatible(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not (isinstance(old, int) and isinstance(new, float) and not new.is_integer())
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return True
    return type(old) is type(new)


def apply_override(cfg: dict, keys: list[str], value: Any, source: str) -> None:
    """Set ``cfg[k0][k1]... = value`` with type checking against the existing value.

    A key that does not exist is accepted only inside a component mapping (one with a
    ``name``), whose accepted keys are checked when the component is built, or as a new
    component of a collection of components (``-o hooks.ema={name: EMAHook}``).
    """
    node = cfg
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(
                f"override '{'.'.join(keys)}': key '{'.'.join(keys[:i + 1])}' does not exist in {source}"
                + _accepted(node))
        node = node[key]
    last = keys[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        old = node[int(last)]
        if not _compatible(old, _coerce_number(old, value)) or isinstance(old, Mapping) != isinstance(value, Mapping):
            raise ConfigError(f"override '{'.'.join(keys)}={value!r}': expected {type(old).__name__} like "
                              f"the current value {old!r} in {source}")
        node[int(last)] = _coerce_number(old, value)
        return
    if not isinstance(node, dict):
        raise ConfigError(f"override '{'.'.join(keys)}': '{'.'.join(keys[:-1])}' is not a mapping in {source}")
    if last not in node:
        if "name" not in node and not (_is_component_collection(node) and _is_component(value)):
            raise ConfigError(
                f"override '{'.'.join(keys)}': key '{last}' does not exist in {source}" + _accepted(node))
    else:
        value = _coerce_number(node[last], value)
    if last in node and not _compatible(node[last], value):
        raise ConfigError(
            f"override '{'.'.join(keys)}={value!r}': expected {type(node[last]).__name__} "
            f"like the current value {node[last]!r} in {source}, got {type(value).__name__}")
    node[last] = value


def _coerce_number(old: Any, new: Any) -> Any:
    """YAML reads ``1e-3`` as a string and ``3.0`` as a float: follow the current value's type."""
    if isinstance(old, bool) or isinstance(new, bool):
        return new
    if isinstance(old, float) and isinstance(new, str):
        try:
            return float(new)
        except ValueError:
            return new
    if isinstance(old, float) and isinstance(new, int):
        return float(new)
    if isinstance(old, int) and isinstance(new, float) and new.is_integer():
        return int(new)
    return new


def _accepted(node: Any) -> str:
    return f"; accepted keys: {', '.join(map(str, node))}" if isinstance(node, dict) else ""


def check_keys(section: Mapping, allowed: Mapping, path: str, source: str) -> None:
    """Reject keys of ``section`` that ``allowed`` does not have, and plain values whose type differs
    from the default's (recursing into plain sub-mappings)."""
    for key, value in section.items():
        if key not in allowed and _is_component_collection(allowed) and _is_component(value, True):
            continue
        if key not in allowed:
            raise ConfigError(
                f"unknown key '{path + key}' in {source}; accepted keys: {', '.join(allowed)}")
        sub = allowed[key]
        if isinstance(sub, dict) and sub and isinstance(value, Mapping) and "name" not in value:
            check_keys(value, sub, f"{path}{key}.", source)
        elif not isinstance(sub, dict) and not _compatible(sub, _coerce_number(sub, value)):
            raise ConfigError(f"'{path + key}: {value!r}' in {source} should be a {type(sub).__name__} "
                              f"(default {sub!r})")


def _is_component(value: Any, allow_none: bool = False) -> bool:
    return (allow_none and value is None) or (isinstance(value, Mapping) and "name" in value)


def _is_component_collection(allowed: Mapping) -> bool:
    """A mapping of named components (such as ``hooks``) accepts new entries."""
    return any(_is_component(v) for v in allowed.values()) and all(_is_component(v, True) for v in allowed.values())


def load_config(path: str, overrides: Iterable[str] = (), defaults: Mapping | None = None) -> Config:
    """Read ``path`` (resolving ``_base_``), merge onto ``defaults``, apply ``-o`` overrides."""
    data = _load_with_bases(path)
    if defaults is not None:
        check_keys(data, defaults, "", path)
        data = merge(dict(defaults), data)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(data, keys, value, path)
    cfg = Config(data)
    cfg.source = path
    return cfg


def dump_config(cfg: Mapping, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(_plain(cfg), f, sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
