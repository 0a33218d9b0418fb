"""Read ``paddle.save`` files (``.pdparams``, ``.pdckpt``) without letting the file run code.

``paddle.load`` unpickles with Python's standard unpickler, which imports and calls every global a
file names: a crafted ``.pdparams`` (or one ``ckpt_*.pdckpt`` planted where ``--resume auto``
looks) runs ``os.system`` before any error. Here the pickle is read by an unpickler whose
``find_class`` admits only the globals ``paddle.save`` needs for tensors, numbers, strings and
containers (NumPy array and scalar reconstruction, ``OrderedDict``, a few builtins) and refuses
any other, naming the file and the global. A pickle reaches a callable or a class only by name
(GLOBAL, STACK_GLOBAL, INST; EXT1/2/4 through copyreg's extension registry, which nothing fills),
and each goes through ``find_class``; OBJ, NEWOBJ and REDUCE only call what those put on the stack.
The result is then turned into Tensors exactly as ``paddle.load`` does (dynamic mode, defaults).
"""
from __future__ import annotations

import collections
import pickle
from typing import Any, Callable

import numpy as np
import paddle

try:  # NumPy >= 2 (files written with NumPy 1 name numpy.core.multiarray: the same functions)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core import multiarray as _multiarray

REFUSAL = "only tensors, numbers, strings and containers are read from weight and checkpoint files"
NAME_TABLE = "StructuredToParameterName@@"  # paddle.save of a state dict: key -> tensor name
BIG_PARAMS = "UnpackBigParamInfor@@"  # protocol 2/3: arrays over 1 GiB saved in slices (Paddle's spelling)


class PaddleFileError(pickle.UnpicklingError, ValueError):
    """A file that cannot be read as what ``paddle.save`` writes; the message names the file."""


class RefusedGlobalError(PaddleFileError):
    """The file names a global outside the allow-list: loading it could run code, so it is refused."""


class _Latin1Bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes`` (NumPy array data): latin-1
    text only, so no codec is looked up or imported. Without attributes (as ``_EmptyBytes``), so a
    pickle's BUILD cannot alter it as it could a function's ``__defaults__``."""

    __slots__ = ()

    def __call__(self, text: str, encoding: str) -> bytes:
        if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"_codecs.encode is read for latin-1 text only, got "
                                         f"{type(text).__name__} and {encoding!r}")
        return text.encode("latin-1")


class _EmptyBytes:
    """``bytes()``: how protocol-2 pickles write ``b""`` (the data of an empty array)."""

    __slots__ = ()

    def __call__(self) -> bytes:
        return b""


# (module, name) a pickle may name -> what it gets. Each is a type or function that only builds a
# value from the pickle's own data: none imports, opens, evaluates or calls anything it is given.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy._core.multiarray", "numpy.core.multiarray") for name in ("_reconstruct", "scalar")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "tuple"): tuple,  # paddle.save writes a Tensor as tuple((name, ndarray))
    ("builtins", "set"): set,  # protocols 2 and 3
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _EmptyBytes(),  # protocol 2
    ("_codecs", "encode"): _Latin1Bytes(),  # protocol 2
}
_MODULE_ALIASES = {"__builtin__": "builtins"}  # protocol-2 (Python 2) names; find_class sees them raw


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str):
        super().__init__(file, encoding="latin1")  # as paddle.load: NumPy data of Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((_MODULE_ALIASES.get(module, module), name))
        if found is None:
            raise RefusedGlobalError(f"{self.path}: refused to load global {module}.{name} ({REFUSAL})")
        return found


def load_paddle_file(path: str) -> Any:
    """What ``paddle.load(path)`` returns for a file ``paddle.save`` wrote (Tensors where tensors
    were saved), read without importing or calling anything outside the allow-list: a file naming
    another global raises :class:`RefusedGlobalError`, a damaged one :class:`PaddleFileError`
    (both ``pickle.UnpicklingError`` and ``ValueError``, naming ``path``)."""
    with open(path, "rb") as f:  # a missing file: FileNotFoundError naming it
        try:
            obj = _Unpickler(f, path).load()
        except PaddleFileError:
            raise
        except Exception as e:  # damage anywhere: truncated, not a pickle, malformed values
            raise PaddleFileError(f"{path}: not readable as a paddle.save file: {type(e).__name__}: {e}") from e
    try:
        return _as_loaded(obj)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise PaddleFileError(f"{path}: not readable as a paddle.save file: {type(e).__name__}: {e}") from e


def _as_loaded(obj: Any) -> Any:
    """``paddle.load``'s conversion of the unpickled object (``return_numpy=False``, ``keep_name_table=False``)."""
    if isinstance(obj, dict):
        obj = _join_big_params(obj)
        if NAME_TABLE in obj:  # a state dict (paddle.save's _legacy_save): its arrays become named Tensors
            for key, name in obj[NAME_TABLE].items():
                if isinstance(obj[key], np.ndarray):
                    obj[key] = paddle.to_tensor(obj[key])
                    obj[key].name = name
            del obj[NAME_TABLE]
            return obj
    if _contains(obj, _is_named_array):  # Tensors as (name, ndarray); other arrays stay NumPy
        return _convert(obj, _is_named_array, _named_tensor)
    return _convert(obj, lambda v: isinstance(v, np.ndarray), paddle.to_tensor)


def _join_big_params(obj: dict) -> dict:
    """Concatenate the slices of arrays saved in parts (``_pack_loaded_dict``)."""
    if BIG_PARAMS not in obj:
        return obj
    removes = []
    for key, info in obj[BIG_PARAMS].items():
        obj[key] = np.concatenate([obj[part] for part in info["slices"]]).reshape(info["OriginShape"])
        removes += info["slices"]
    for key in removes:
        obj.pop(key)
    obj.pop(BIG_PARAMS)
    return obj


def _is_named_array(obj: Any) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _named_tensor(obj: tuple[str, np.ndarray]) -> paddle.Tensor:
    tensor = paddle.to_tensor(obj[1])
    tensor.name = obj[0]
    return tensor


def _contains(obj: Any, match: Callable[[Any], bool]) -> bool:
    """Whether ``match`` holds for ``obj`` or anything inside its dicts, lists and tuples (``_contain_x``)."""
    if match(obj):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return any(_contains(v, match) for v in obj.values())
    if type(obj) in (list, tuple):
        return any(_contains(v, match) for v in obj)
    return False


def _convert(obj: Any, match: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Any:
    """``convert`` every value ``match`` holds for, dicts and lists in place (``_parse_every_object``)."""
    if match(obj):
        return convert(obj)
    kind = type(obj)
    if kind in (dict, collections.OrderedDict):
        for key in list(obj):
            obj[key] = _convert(obj[key], match, convert)
    elif kind is list:
        obj[:] = [_convert(v, match, convert) for v in obj]
    elif kind in (tuple, set):
        return kind(_convert(v, match, convert) for v in obj)
    return obj
