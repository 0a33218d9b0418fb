"""Registries: components are built from config mappings by their ``name:``."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class Registry:
    """A name -> class (or function) table for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, obj: Callable | None = None, *, name: str | None = None):
        """Register ``obj`` under ``name`` (default: its ``__name__``); usable as a decorator."""

        def add(target: Callable) -> Callable:
            key = name or target.__name__
            if key in self._items and self._items[key] is not target:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            self._items[key] = target
            return target

        return add(obj) if obj is not None else add

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str, where: str = "") -> Callable:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} '{name}'{_at(where)}; registered: {', '.join(self.names())}")
        return self._items[name]

    def check(self, cfg: Mapping[str, Any], where: str = "", supplied: Sequence[str] = ()) -> Callable:
        """What ``build`` checks, without building: the name is registered and the keys fit its arguments
        (``supplied``: arguments the caller will pass). Returns the component's class or function."""
        if not isinstance(cfg, Mapping) or "name" not in cfg:
            raise ConfigError(f"{self.kind} config{_at(where)} must be a mapping with a 'name' key, got {cfg!r}")
        kwargs = dict(cfg)
        target = self.get(kwargs.pop("name"), where)
        check_arguments(target, kwargs, where or self.kind, supplied=dict.fromkeys(supplied))
        return target

    def build(self, cfg: Mapping[str, Any], where: str = "", **extra: Any) -> Any:
        """Build the component named by ``cfg['name']`` with the other keys as arguments.

        ``extra`` are arguments supplied by the caller (not the config); config keys win.
        Unknown and missing keys are errors naming the key, ``where`` and the accepted keys.
        """
        target = self.check(cfg, where, supplied=list(extra))
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        try:
            return target(**{**extra, **kwargs})
        except ConfigError as e:
            if where and where not in str(e):
                raise ConfigError(f"{e} (in {where})") from e
            raise


def accepted_arguments(target: Callable) -> tuple[list[str], bool]:
    """Names ``target`` accepts as keywords, and whether it takes ``**kwargs``."""
    sig = inspect.signature(target)
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            names.append(p.name)
    return names, var_kw


def check_arguments(target: Callable, kwargs: Mapping[str, Any], where: str,
                    supplied: Mapping[str, Any] | None = None) -> None:
    """Unknown keys (for targets without ``**kwargs``) and required keys neither in ``kwargs``
    nor ``supplied`` by the caller are errors naming the key, ``where`` and the accepted keys."""
    names, var_kw = accepted_arguments(target)
    label = getattr(target, "__name__", target)
    unknown = [k for k in kwargs if k not in names]
    if unknown and not var_kw:
        raise ConfigError(f"unknown key '{unknown[0]}'{_at(where)} for {label}; accepted keys: {', '.join(names)}")
    missing = [k for k in required_arguments(target) if k not in kwargs and k not in (supplied or {})]
    if missing:
        raise ConfigError(f"missing key '{missing[0]}'{_at(where)} for {label}; accepted keys: {', '.join(names)}")


def required_arguments(target: Callable) -> list[str]:
    return [p.name for p in inspect.signature(target).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def _at(where: str) -> str:
    return f" in {where}" if where else ""


BACKBONES = Registry("backbone")
HEADS = Registry("head")
MODELS = Registry("model")
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform")
BATCH_TRANSFORMS = Registry("batch transform")
HOOKS = Registry("hook")
OPTIMIZERS = Registry("optimizer")
LR_SCHEDULERS = Registry("lr_scheduler")
