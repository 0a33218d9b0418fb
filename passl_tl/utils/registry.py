"""Registries: components are built from config mappings by their ``name:``."""
from __future__ import annotations

import ast
import collections.abc
import dataclasses
import functools
import inspect
import math
import numbers
import re
import types
from typing import (Annotated, Any, Callable, ForwardRef, Literal, Mapping, Sequence, TypeVar, Union, get_args,
                    get_origin)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a number argument: ``Annotated[float, Range(0, 1, high_open=True)]`` is a number in [0, 1).
    The number must also be finite (no nan, no inf)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: Any) -> bool:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(number):
            return False
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            return False
        return self.high is None or (number < self.high if self.high_open else number <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                    f"{self.high:g}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else ""


@dataclasses.dataclass(frozen=True, eq=False)
class Component:
    """``Annotated[Mapping[str, Any], Component(REGISTRY)]``: the argument is a component config of
    ``registry``, checked with it (``supplied``: the arguments the receiving code passes)."""

    registry: "Registry"
    supplied: tuple[str, ...] = ()


# Argument annotations with bounds (the registry checks them before anything is built).
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1)]                 # [0, 1]
Rate = Annotated[float, Range(0, 1, high_open=True)]        # [0, 1): drop rates, label smoothing


class Registry:
    """A name -> class (or function) table for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}
        # dry_run(target, kwargs, where): checks beyond the signature's, run by ``check`` without building
        # (MODELS': a preset's backbone and head arguments, see models.classifier.check_preset)
        self.dry_run: Callable[[Callable, Mapping[str, Any], str], None] | None = None

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
        """What ``build`` checks, without building: the name is registered, the keys fit its arguments
        (``supplied``: arguments the caller will pass) and their values fit the arguments' annotations
        (types, bounds: see :func:`check_argument`), and the registry's ``dry_run`` if it has one. Returns the
        component's class or function."""
        if not isinstance(cfg, Mapping) or "name" not in cfg:
            raise ConfigError(f"{self.kind} config{_at(where)} must be a mapping with a 'name' key, got {cfg!r}")
        kwargs = dict(cfg)
        target = self.get(kwargs.pop("name"), where)
        check_arguments(target, kwargs, where or self.kind, supplied=dict.fromkeys(supplied))
        if self.dry_run is not None:
            try:
                self.dry_run(target, kwargs, where or self.kind)
            except ConfigError as e:
                raise _named(e, where) from e
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
            raise _named(e, where) from e


def _named(error: ConfigError, where: str) -> ConfigError:
    """``error`` naming ``where`` (the config section) if it names neither it nor its file yet."""
    m = _WHERE.match(where or "")
    if not where or where in str(error) or (m and f" in {m['source']}" in str(error)):
        return error
    return ConfigError(f"{error} (in {where})")


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
    nor ``supplied`` by the caller are errors naming the key, ``where`` and the accepted keys; so is a
    value that does not fit its argument's annotation (:func:`check_argument`; unannotated arguments
    and ``supplied`` ones are not checked)."""
    names, var_kw = accepted_arguments(target)
    label = getattr(target, "__name__", target)
    unknown = [k for k in kwargs if k not in names]
    if unknown and not var_kw:
        raise ConfigError(f"unknown key '{unknown[0]}'{_at(where)} for {label}; accepted keys: {', '.join(names)}")
    missing = [k for k in required_arguments(target) if k not in kwargs and k not in (supplied or {})]
    if missing:
        raise ConfigError(f"missing key '{missing[0]}'{_at(where)} for {label}; accepted keys: {', '.join(names)}")
    hints = argument_hints(target)
    for key, value in kwargs.items():
        if key in hints:
            check_argument(key, value, hints[key], where, str(label))


def check_argument(key: str, value: Any, hint: Any, where: str, label: str = "") -> None:
    """``value`` of argument ``key`` must fit the annotation ``hint``: ``int`` (not a bool), ``float``
    (an int too), ``bool``, ``str``, ``None``, ``Optional``/``X | Y``, ``Literal``, ``Sequence``/``list``/
    ``tuple`` (a list or tuple; ``tuple[X, Y]``: of that length) and ``Mapping`` of these, ``Callable``,
    other classes (``isinstance``); ``Annotated[T, Range(...)]`` also bounds the number (finite, within the
    range) and ``Annotated[Mapping, Component(REGISTRY)]`` checks a component config with that registry.
    ``Any`` and annotations that cannot be resolved are not checked. The error names the key path, the
    value, what was expected and the file (``where``: "section of FILE")."""
    if not matches(value, hint):
        path, at = _key_path(where, key)
        raise ConfigError(f"{path} = {value!r}{at}: expected {describe(hint)}" + (f" ({label})" if label else ""))
    for component in _components(value, hint):
        component.registry.check(value, _sub_where(where, key), supplied=component.supplied)


_NONE = type(None)
_UNIONS = (Union, getattr(types, "UnionType", Union))
_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a config value) fits the annotation ``hint`` (see :func:`check_argument`)."""
    if hint is Any or hint is object or isinstance(hint, (str, ForwardRef, TypeVar)):
        return True
    if hint is None or hint is _NONE:
        return value is None
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return matches(value, args[0]) and all(meta.holds(value) for meta in args[1:] if isinstance(meta, Range))
    if origin in _UNIONS:
        return any(matches(value, arm) for arm in args)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(item, args[0]) for item in value)
        return not args or (len(value) == len(args) and all(matches(item, arm) for item, arm in zip(value, args)))
    if container in _SEQUENCES:
        return isinstance(value, (list, tuple)) and all(matches(item, args[0]) for item in value if args)
    if container in _MAPPINGS:
        return isinstance(value, Mapping) and (not args or all(
            matches(k, args[0]) and matches(v, args[1]) for k, v in value.items()))
    if container is collections.abc.Callable:
        return callable(value)
    if isinstance(container, type):
        try:
            return isinstance(value, container)
        except TypeError:
            return True
    return True


def describe(hint: Any) -> str:
    """What ``hint`` accepts, in words (for error messages)."""
    if hint is Any or hint is object or isinstance(hint, (str, ForwardRef, TypeVar)):
        return "anything"
    if hint is None or hint is _NONE:
        return "null"
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        bounds = [meta.describe() for meta in args[1:] if isinstance(meta, Range)]
        base = "a finite number" if bounds and args[0] is float else describe(args[0])
        return " ".join([base, *bounds])
    if origin in _UNIONS:
        return " or ".join(describe(arm) for arm in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    simple = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    container = origin or hint
    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {len(args)} [{', '.join(describe(arm) for arm in args)}]"
    if container is tuple or container in _SEQUENCES:
        return f"a list (each {describe(args[0])})" if args else "a list"
    if container in _MAPPINGS:
        return "a mapping"
    if container is collections.abc.Callable:
        return "a callable"
    return f"a {getattr(container, '__name__', container)}"


def _components(value: Any, hint: Any) -> list[Component]:
    """The ``Component`` markers of ``hint`` that apply to ``value`` (top level, or the union arm it fits)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return [meta for meta in args[1:] if isinstance(meta, Component)] if isinstance(value, Mapping) else []
    if origin in _UNIONS:
        return [c for arm in args if matches(value, arm) for c in _components(value, arm)]
    return []


_WHERE = re.compile(r"^(?P<section>[A-Za-z_][\w.]*) of (?P<source>.+?)(?: (?P<list>\w+)\[(?P<index>\d+)\])?$")


def _key_path(where: str, key: str) -> tuple[str, str]:
    """``("section.key", " in FILE")`` for ``where`` = "section of FILE" (also "section of FILE transforms[i]"),
    else ``("key", " in where")``."""
    m = _WHERE.match(where or "")
    if not m:
        return key, _at(where)
    listed = f".{m['list']}.{m['index']}" if m["list"] else ""
    return f"{m['section']}{listed}.{key}", f" in {m['source']}"


def _sub_where(where: str, key: str) -> str:
    """``where`` of the mapping under ``key``: "section.key of FILE"."""
    path, at = _key_path(where, key)
    if _WHERE.match(where or ""):
        return f"{path} of {at[len(' in '):]}"
    return f"{where}.{key}" if where else key


@functools.lru_cache(maxsize=None)
def argument_hints(target: Callable) -> dict[str, Any]:
    """The resolved annotations of ``target``'s keyword arguments (string annotations evaluated in its
    module; one that cannot be resolved, e.g. a name imported only for type checkers, becomes ``Any``)."""
    function = target
    if inspect.isclass(target):
        function = next((vars(k)["__init__"] for k in target.__mro__ if "__init__" in vars(k)), target)
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    return {p.name: _resolve(p.annotation, namespace) for p in inspect.signature(target).parameters.values()
            if p.annotation is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _resolve(annotation: Any, namespace: Mapping[str, Any]) -> Any:
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(namespace))  # noqa: S307  (our own modules' annotations)
    except TypeError:  # ``X | Y`` of typing objects before Python 3.10: read it as Union[X, Y]
        try:
            tree = ast.fix_missing_locations(_UnionOperator().visit(ast.parse(annotation, mode="eval")))
            return eval(compile(tree, "<annotation>", "eval"), {**namespace, "_Union": Union})  # noqa: S307
        except Exception:
            return Any
    except Exception:
        return Any


class _UnionOperator(ast.NodeTransformer):
    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if not isinstance(node.op, ast.BitOr):
            return node
        return ast.Subscript(value=ast.Name(id="_Union", ctx=ast.Load()),
                             slice=ast.Tuple(elts=[node.left, node.right], ctx=ast.Load()), ctx=ast.Load())


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
