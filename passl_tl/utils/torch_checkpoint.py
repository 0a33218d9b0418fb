"""Read PyTorch ``torch.save`` files without PyTorch: tensors come back as NumPy arrays.

Only the zip format (torch >= 1.6) is supported: ``<archive>/data.pkl`` is unpickled by a
restricted unpickler, tensor storages are the raw files ``<archive>/data/<key>``. Globals other
than tensors, storages and OrderedDict (e.g. the ``argparse.Namespace`` of a training
checkpoint) become inert placeholders; nothing from the file is ever imported or executed.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # widened to float32 after reading
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# Pickle of the magic number that starts a legacy (torch < 1.6) file: PROTO 2, LONG1 of 10 bytes.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class Placeholder:
    """Stands in for an object of a class the reader does not load; keeps its pickled arguments."""

    qualname = "?"
    args: tuple = ()
    state: Any = None

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<unloaded {self.qualname}>"


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError(f"malformed tensor: size {size}, stride {stride}, offset {offset}")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if 0 not in size else offset - 1
    if last >= storage.size:
        raise pickle.UnpicklingError(f"a tensor of size {size} (stride {stride}, offset {offset}) needs element "
                                     f"{last} of a storage of {storage.size} (truncated or corrupt file?)")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride))
    return view.copy()


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(archive.open(prefix + "data.pkl"))
        self.archive, self.prefix, self.big_endian = archive, prefix, big_endian
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return type(name, (Placeholder,), {"qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> np.ndarray:
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported torch storage {pid!r}")
        if key not in self.storages:
            dtype = np.dtype(_STORAGE_DTYPES[storage_type.name])
            if self.big_endian:
                dtype = dtype.newbyteorder(">")
            data = np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype=dtype)
            if storage_type.name == "BFloat16Storage":
                data = (data.astype(np.uint32) << 16).view(np.float32)
            self.storages[key] = data
        return self.storages[key]


def load_torch_file(path: str) -> Any:
    """The object saved by ``torch.save`` at ``path``, with every tensor as a NumPy array."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            legacy = f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC
        if legacy:
            raise ValueError(f"{path}: the legacy (torch < 1.6) checkpoint format is not supported; "
                             "re-save it with torch >= 1.6 (zip format)")
        raise ValueError(f"{path}: not a PyTorch checkpoint (expected torch.save's zip format)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <archive>/data.pkl in the zip, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        big_endian = prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big"
        try:
            return _Unpickler(archive, prefix, big_endian).load()
        except (pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: cannot read the checkpoint: {e}") from e
