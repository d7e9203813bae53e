"""Reading PyTorch checkpoints (.pth) without PyTorch: tensors come back as numpy arrays.

A .pth is a pickle whose tensors point at raw storages, either inside a zip archive (torch >= 1.6) or
appended after the pickle (the legacy format of torch.save(..., _use_new_zipfile_serialization=False),
which many 2020 checkpoints use). Unpickling runs whatever callables the file names, so the unpickler
here resolves only a fixed set of globals: torch's tensor and storage rebuilders (reimplemented on
numpy, nothing of torch is imported), containers, numpy arrays and scalars; it sets the state (pickle's
BUILD) only of containers and numpy objects it made, and every storage and tensor is checked against the
file's size. Any other
global stops the read with its name, as `torch.load(weights_only=True)` does. `trust=True` imports other
globals as plain pickle does, for files whose source you trust.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# torch storage classes -> element dtype (little-endian; the zip format records its byte order).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}  # fmt: skip
TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}  # fmt: skip
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or at all."""


class _StorageType:
    """Stands for torch.FloatStorage & co. in persistent ids: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Storage:
    """A flat array of one storage's elements; tensors are strided views of it."""

    def __init__(self, data: np.ndarray):
        self.data = data


class _Tensor:
    """A tensor to build once its storage holds data (in the legacy format the data follows the pickle)."""

    def __init__(self, storage: _Storage, offset: int, size, stride, dtype=None):
        self.storage, self.offset, self.dtype = storage, int(offset), dtype
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def array(self, path: str) -> np.ndarray:
        data = self.storage.data if self.dtype is None else self.storage.data.view(self.dtype)
        if any(s < 0 for s in self.stride) or len(self.size) != len(self.stride) or self.offset < 0:
            raise CheckpointError(f"{path}: a tensor with invalid strides {self.stride}")
        if np.prod(self.size, dtype=np.float64) > data.size:  # broadcast views could ask for any amount of memory
            raise CheckpointError(f"{path}: a tensor of shape {self.size} is larger than its storage")
        if all(self.size):  # the last element must lie inside the storage: no reads past its end
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= data.size:
                raise CheckpointError(f"{path}: a tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(data[self.offset :], shape=self.size,
                                               strides=tuple(s * data.itemsize for s in self.stride), writeable=False)
        return np.array(view)  # a contiguous copy that owns its memory


class _Inert:
    """Stands for a known data-only object outside tensors (mmengine's HistoryBuffer in a checkpoint's
    message_hub): it keeps the pickled state and runs nothing."""


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_ignored) -> _Tensor:
    """torch._utils._rebuild_tensor_v2."""
    return _Tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_ignored) -> _Tensor:
    return _Tensor(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, *_ignored):
    return data


def _encode(text: str, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes objects: latin-1 text to bytes, nothing else."""
    if encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"bytes encoded as {encoding!r}")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data=b""):
    """numpy.core.multiarray.scalar: a numpy scalar from its bytes."""
    return data if dtype.hasobject else np.frombuffer(data, dtype, 1)[0]


_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _encode,
    ("mmengine.logging.history_buffer", "HistoryBuffer"): _Inert,
    **{("torch", name): _StorageType(dtype) for name, dtype in {**STORAGE_DTYPES, **TORCH_DTYPES}.items()},
    # numpy arrays and scalars in a checkpoint's meta (mmengine writes some): data, not code.
    **{(module, "ndarray"): np.ndarray for module in _NUMPY_MODULES},
    **{(module, "dtype"): np.dtype for module in _NUMPY_MODULES},
    **{(module, "_reconstruct"): np.ndarray.__new__ for module in _NUMPY_MODULES[1:]},
    **{(module, "scalar"): _numpy_scalar for module in _NUMPY_MODULES[1:]},
}
# What BUILD may set the state of: objects this unpickler made for this file (state dicts carry a `_metadata`
# attribute), never a shared or foreign one.
_STATEFUL = (collections.OrderedDict, np.ndarray, np.dtype, _Inert)


class _Unpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be checked one by one
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: str, trust: bool, storage=None):
        super().__init__(file)
        self.path, self.trust, self.storage = path, trust, storage

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if self.trust and not module.startswith("torch"):
            return super().find_class(module, name)
        hint = "" if self.trust else " (if you trust the file's source: trust_checkpoint=True, --trust-checkpoint)"
        raise CheckpointError(f"{self.path}: refusing to unpickle {module}.{name}: neither a tensor, an array nor "
                              f"a container{hint}")

    def load_build(self):
        if not self.trust and not isinstance(self.stack[-2], _STATEFUL):
            raise CheckpointError(f"{self.path}: refusing to set the state of a {type(self.stack[-2]).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] in ("storage", b"storage")):
            raise CheckpointError(f"{self.path}: unsupported persistent object {str(saved_id)[:60]} (not a storage)")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {storage_type!r}")
        if self.storage is None:
            raise CheckpointError(f"{self.path}: a storage outside the checkpoint's object")
        storage = self.storage(str(key), storage_type.dtype, int(numel))
        view = saved_id[5] if len(saved_id) > 5 else None
        if view is not None:  # legacy views into a shared storage: (view_key, offset, size)
            _, offset, size = view
            return _Storage(storage.data[offset : offset + size])
        return storage


def _materialize(value, path: str):
    """Replaces every _Tensor in dicts, lists and tuples by its numpy array."""
    if isinstance(value, _Tensor):
        return value.array(path)
    if isinstance(value, dict):
        result = type(value)() if type(value) in (dict, collections.OrderedDict) else {}
        result.update((k, _materialize(v, path)) for k, v in value.items())
        return result
    if isinstance(value, (list, tuple)):
        return type(value)(_materialize(v, path) for v in value)
    return value


def _from_zip(archive: zipfile.ZipFile, path: str, trust: bool):
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
        raise CheckpointError(f"{path}: a zip archive without data.pkl is not a PyTorch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    big_endian = prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        if key not in storages:
            info = archive.getinfo(f"{prefix}data/{key}")
            if info.compress_type != zipfile.ZIP_STORED:  # as torch's reader: storages are stored, not compressed
                raise CheckpointError(f"{path}: storage {key} is compressed")
            if not 0 <= numel * dtype.itemsize <= info.file_size:
                raise CheckpointError(f"{path}: storage {key} holds {info.file_size} bytes, not {numel} elements")
            data = np.frombuffer(archive.read(info), dtype.newbyteorder(">" if big_endian else "<"), numel)
            storages[key] = _Storage(data.astype(dtype, copy=False))
        return storages[key]

    return _Unpickler(io.BytesIO(archive.read(pickles[0])), path, trust, storage).load()


def _from_legacy(file, path: str, trust: bool):
    """torch < 1.6 layout: magic, protocol, sys info, the object, storage keys, then each storage's data."""
    if _Unpickler(file, path, False).load() != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    _Unpickler(file, path, False).load()  # protocol version
    _Unpickler(file, path, False).load()  # sys info: little-endian, as every published checkpoint
    size = os.path.getsize(path)
    storages: dict[str, _Storage] = {}

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        if key not in storages:
            if not 0 <= numel * dtype.itemsize <= size:  # the data follows in the file: it cannot be larger
                raise CheckpointError(f"{path}: storage {key} of {numel} elements is larger than the file")
            storages[key] = _Storage(np.zeros(numel, dtype))  # filled below: the data follows the pickle
        return storages[key]

    result = _Unpickler(file, path, trust, storage).load()
    for key in _Unpickler(file, path, False).load():
        data = storages[str(key)].data
        (numel,) = struct.unpack("<q", file.read(8))
        raw = file.read(numel * data.itemsize) if numel == data.size else b""
        if len(raw) != data.nbytes:
            raise CheckpointError(f"{path}: truncated or corrupt (storage {key})")
        data[:] = np.frombuffer(raw, data.dtype.newbyteorder("<"), numel)
    return result


def read_pth(path: str, trust: bool = False) -> Any:
    """The object a .pth file holds (usually a dict), every tensor as a numpy array; torch is not needed.

    Raises FileNotFoundError, or CheckpointError (a ValueError) naming the file: a truncated or foreign file,
    or a pickled global outside the safe set (unless `trust`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    try:
        if is_zip:  # a truncated zip lacks its central directory: BadZipFile below names it
            with zipfile.ZipFile(path) as archive:
                return _materialize(_from_zip(archive, path, trust), path)
        with open(path, "rb") as file:
            return _materialize(_from_legacy(file, path, trust), path)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError,
            AttributeError, struct.error, MemoryError, RecursionError) as error:
        detail = str(error).splitlines()[0] if str(error) else "truncated or corrupt"
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(error).__name__}: {detail})") from None
