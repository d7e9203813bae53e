"""Reading PyTorch checkpoints (.pth) without PyTorch: tensors come back as numpy arrays.

A .pth is a pickle whose tensors point at raw storages, either inside a zip archive (torch >= 1.6) or
appended after the pickle (the legacy format of torch.save(..., _use_new_zipfile_serialization=False),
which many 2020 checkpoints use). Unpickling runs whatever callables the file names, so the unpickler
here resolves only a fixed set of globals, as `torch.load(weights_only=True)` does: torch's tensor and storage
rebuilders and numpy's array, dtype and scalar rebuilders, all reimplemented on plain data (nothing of torch is
imported, and numpy never sees an object dtype or an unchecked buffer), and containers. It sets the state
(pickle's BUILD) only of containers it made, with plain attribute names. Every member, storage and tensor is
checked in bytes against the file: a tensor is a read-only view of its storage (one array per storage, however
many tensors share it), the pickle may not expand past MAX_NODES values, and a zip member may not inflate past
its cap. Any other global stops the read with its name. `trust=True` imports other globals as plain pickle
does, for files whose source you trust.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from keras_pspnet.files import MAX_NODES, check_nodes, printable, short_repr, zip_member

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
MAX_PICKLE_BYTES = 64 * 2**20  # a checkpoint's pickle holds names and metadata (its tensors are storages): ~1 MB
MAX_DIMS = 32
_ARRAY_KINDS = "biufc?US"  # numbers, booleans and strings: numpy dtypes without object pointers


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or at all."""


class _StorageType:
    """Stands for torch.FloatStorage & co. in persistent ids: only its dtype matters."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Storage:
    """The flat array of one storage's elements (1-D, contiguous); tensors are read-only views of it."""

    def __init__(self, data: np.ndarray):
        self.data = data


class _Tensor:
    """A tensor to build once its storage holds data (in the legacy format the data follows the pickle)."""

    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):  # anything else with a `data` attribute would be read as one
            raise CheckpointError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        self.storage, self.offset, self.dtype = storage, _index(offset), dtype
        self.size, self.stride = _indices(size), _indices(stride)
        if len(self.size) != len(self.stride) or len(self.size) > MAX_DIMS:
            raise CheckpointError(f"a tensor of shape {short_repr(self.size)} with strides {short_repr(self.stride)}")

    def array(self, path: str) -> np.ndarray:
        """The tensor as a read-only view of its storage, after checking that every byte it covers lies inside."""
        data = self.storage.data
        if self.dtype is not None and self.dtype != data.dtype:  # torch >= 2 untyped storages: bytes
            if data.nbytes % self.dtype.itemsize:
                raise CheckpointError(f"{path}: a storage of {data.nbytes} bytes read as {self.dtype}")
            data = data.view(self.dtype)
        count = math.prod(self.size)
        if count == 0:
            empty = np.zeros(self.size, data.dtype)
            empty.flags.writeable = False  # as every tensor read: views of their storage
            return empty
        if count > data.size:  # broadcast views could ask for any amount of memory
            raise CheckpointError(f"{path}: a tensor of shape {self.size} is larger than its storage")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))  # in elements
        if (last + 1) * data.itemsize > data.nbytes:
            raise CheckpointError(f"{path}: a tensor reaches past the end of its storage")
        strides = tuple(s * data.itemsize if n > 1 else 0 for n, s in zip(self.size, self.stride))
        return np.lib.stride_tricks.as_strided(data[self.offset :], shape=self.size, strides=strides,
                                               writeable=False)


def _index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
        raise CheckpointError(f"a tensor index {short_repr(value)}")
    return value


def _indices(values) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise CheckpointError(f"a tensor shape or stride {short_repr(values)}")
    return tuple(_index(v) for v in values)


class _Inert:
    """Stands for a known data-only object outside tensors (mmengine's HistoryBuffer in a checkpoint's
    message_hub): it keeps the pickled state and runs nothing."""


class _Pending:
    """A numpy dtype or array being unpickled: numpy's own rebuilders would trust the file (an object dtype over
    a byte buffer is a pointer forged by the file), so the state is checked here and numpy gets plain bytes."""

    def __init__(self, kind: str, dtype: np.dtype | None = None):
        self.kind, self.dtype, self.value = kind, dtype, None

    def build(self, state, path: str) -> None:
        if self.kind == "dtype":  # (version, byte order, subarray, names, fields, elsize, alignment, flags[, meta])
            if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
                    and all(v is None for v in state[2:5] + state[8:])):
                raise CheckpointError(f"{path}: a numpy dtype with state {short_repr(state)}")
            self.dtype = self.dtype.newbyteorder(state[1]) if state[1] in "<>" else self.dtype
            return
        # (version, shape, dtype, fortran order, raw bytes), as ndarray.__reduce__ writes it
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], bytes)):
            raise CheckpointError(f"{path}: a numpy array with state {short_repr(state)}")
        dtype, shape = _resolve_dtype(state[2], path), _indices(state[1])
        if len(state[4]) != math.prod(shape) * dtype.itemsize or len(shape) > MAX_DIMS:
            raise CheckpointError(f"{path}: a numpy array of shape {short_repr(shape)} {dtype} with "
                                  f"{len(state[4])} bytes")
        self.value = np.frombuffer(state[4], dtype).reshape(shape, order="F" if state[3] else "C")


def _safe_dtype(name, *_flags) -> _Pending:
    """numpy.dtype(name, align, copy) for plain numbers, booleans and strings only."""
    if not isinstance(name, str):
        raise CheckpointError(f"a numpy dtype named {short_repr(name)}")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise CheckpointError(f"an unknown numpy dtype {short_repr(name)}") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointError(f"a numpy dtype {printable(name, 40)} (only numbers, booleans and strings are read)")
    return _Pending("dtype", dtype)


def _resolve_dtype(value, path: str) -> np.dtype:
    if not (isinstance(value, _Pending) and value.kind == "dtype"):
        raise CheckpointError(f"{path}: a numpy dtype that is a {type(value).__name__}")
    return value.dtype


class _NdarrayClass:
    """Stands for numpy.ndarray, which only `_reconstruct` may name: called, ndarray(shape, dtype, buffer) would
    build an array over any bytes the file likes."""


_NDARRAY = _NdarrayClass()


def _reconstruct(cls, shape=(0,), dtype=b"b") -> _Pending:
    """numpy.core.multiarray._reconstruct(ndarray, ...): an empty array that BUILD fills (see _Pending.build)."""
    if cls is not _NDARRAY:
        raise CheckpointError(f"an array of class {type(cls).__name__}")
    return _Pending("array")


def _numpy_scalar(dtype, data=b""):
    """numpy.core.multiarray.scalar: a numpy scalar from its bytes."""
    dtype = _resolve_dtype(dtype, "checkpoint")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointError(f"a numpy scalar of {dtype} from {short_repr(data)}")
    return np.frombuffer(data, dtype, 1)[0]


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> _Tensor:
    """torch._utils._rebuild_tensor_v2."""
    return _Tensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_ignored) -> _Tensor:
    if not isinstance(dtype, _StorageType):
        raise CheckpointError(f"a tensor of dtype {short_repr(dtype)}")
    return _Tensor(storage, offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, *_ignored):
    return data


def _encode(text, encoding: str = "latin1") -> bytes:
    """_codecs.encode as protocol-2 pickles use it for bytes objects: latin-1 text to bytes, nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise CheckpointError(f"bytes encoded as {short_repr(encoding)}")
    return text.encode("latin1")


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
    # numpy arrays and scalars in a checkpoint's meta (mmengine writes some): data, rebuilt by the functions above.
    **{(module, "ndarray"): _NDARRAY for module in _NUMPY_MODULES},
    **{(module, "dtype"): _safe_dtype for module in _NUMPY_MODULES},
    **{(module, "_reconstruct"): _reconstruct for module in _NUMPY_MODULES[1:]},
    **{(module, "scalar"): _numpy_scalar for module in _NUMPY_MODULES[1:]},
}
# What BUILD may set the state of: objects this unpickler made for this file (state dicts carry a `_metadata`
# attribute), never a shared or foreign one; numpy's pending dtypes and arrays check their own state.
_STATEFUL = (collections.OrderedDict, _Inert)


class _Unpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be checked one by one
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: str, trust: bool, storage=None):
        super().__init__(file)
        self.path, self.trust, self.storage = path, trust, storage

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if self.trust and not module.startswith(("torch", "numpy")):
            return super().find_class(module, name)
        hint = "" if self.trust else " (if you trust the file's source: trust_checkpoint=True, --trust-checkpoint)"
        raise CheckpointError(f"{self.path}: refusing to unpickle {printable(module, 80)}.{printable(name, 80)}: "
                              f"neither a tensor, an array nor a container{hint}")

    def load_build(self):
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, _Pending):
            target.build(state, self.path)
            self.stack.pop()
            return
        if not self.trust:
            if not isinstance(target, _STATEFUL):
                raise CheckpointError(f"{self.path}: refusing to set the state of a {type(target).__name__}")
            attributes = state[1] if isinstance(state, tuple) and len(state) == 2 else state
            if not (attributes is None or isinstance(attributes, dict) and all(
                    isinstance(k, str) and not k.startswith("__") for k in attributes)):
                raise CheckpointError(f"{self.path}: refusing the state {short_repr(state)} of a "
                                      f"{type(target).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def refuse_buffer(self):
        # BYTEARRAY8 allocates the length it names before reading a byte (a 39-byte file could ask for any amount of
        # memory); out-of-band buffers come with protocol 5. torch writes protocol 2: none of these occur.
        raise CheckpointError(f"{self.path}: pickle opcodes of protocol 5 (bytearray, buffers) are not read")

    for _opcode in (pickle.BYTEARRAY8, pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_opcode[0]] = refuse_buffer

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and len(saved_id) >= 5 and saved_id[0] in ("storage", b"storage")):
            raise CheckpointError(f"{self.path}: unsupported persistent object {short_repr(saved_id)} (not a storage)")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self.path}: unsupported storage type {short_repr(storage_type)}")
        if self.storage is None:
            raise CheckpointError(f"{self.path}: a storage outside the checkpoint's object")
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            raise CheckpointError(f"{self.path}: a storage key {short_repr(key)}")
        storage = self.storage(str(key), storage_type.dtype, _index(numel))
        view = saved_id[5] if len(saved_id) > 5 else None
        if view is not None:  # legacy views into a shared storage: (view_key, offset, size), in elements
            if not (isinstance(view, tuple) and len(view) == 3):
                raise CheckpointError(f"{self.path}: a storage view {short_repr(view)}")
            offset, size = _index(view[1]), _index(view[2])
            if offset + size > storage.data.size:
                raise CheckpointError(f"{self.path}: a storage view reaches past its storage")
            return _Storage(storage.data[offset : offset + size])
        return storage


def _materialize(value, path: str, memo: dict):
    """Replaces every _Tensor and pending numpy object in dicts, lists and tuples by its array; a container
    shared in the pickle is converted once (its copies stay shared)."""
    if isinstance(value, _Tensor):
        key = id(value)
        if key not in memo:
            memo[key] = value.array(path)
        return memo[key]
    if isinstance(value, _Pending):
        if value.kind == "dtype":
            return value.dtype
        if value.value is None:
            raise CheckpointError(f"{path}: a numpy array without its data")
        return value.value
    if not isinstance(value, (dict, list, tuple)):
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, dict):
        result = type(value)() if type(value) in (dict, collections.OrderedDict) else {}
        memo[key] = result
        result.update((_materialize(k, path, memo), _materialize(v, path, memo)) for k, v in value.items())
    else:
        result = type(value)(_materialize(v, path, memo) for v in value)
        memo[key] = result
    return result


def _from_zip(archive: zipfile.ZipFile, path: str, trust: bool):
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pickles:
        raise CheckpointError(f"{path}: a zip archive without data.pkl is not a PyTorch checkpoint")
    prefix = pickles[0][: -len("data.pkl")]
    file_size = os.path.getsize(path)
    big_endian = prefix + "byteorder" in names and zip_member(archive, prefix + "byteorder", 16, path).strip() == b"big"
    storages: dict[str, _Storage] = {}
    read = [0]

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        if key not in storages:
            try:
                info = archive.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"{path}: storage {printable(key, 40)} is missing") from None
            if info.compress_type != zipfile.ZIP_STORED:  # as torch's reader: storages are stored, not compressed
                raise CheckpointError(f"{path}: storage {printable(key, 40)} is compressed")
            read[0] += info.file_size  # all storages together: entries that overlap in the file count each time
            if not numel * dtype.itemsize <= info.file_size or read[0] > file_size:
                raise CheckpointError(f"{path}: storage {printable(key, 40)} holds {info.file_size} bytes, not "
                                      f"{numel} elements, or the storages hold more than the file")
            data = np.frombuffer(archive.read(info), dtype.newbyteorder(">" if big_endian else "<"), numel)
            storages[key] = _Storage(data.astype(dtype, copy=False))
        elif storages[key].data.dtype != dtype or storages[key].data.size != numel:
            raise CheckpointError(f"{path}: storage {printable(key, 40)} is named with two types or sizes")
        return storages[key]

    data = zip_member(archive, pickles[0], MAX_PICKLE_BYTES, path)
    return _Unpickler(io.BytesIO(data), path, trust, storage).load()


class _Bounded:
    """The legacy layout's file for the unpickler: a read never asks for more than the file holds (a forged
    length would otherwise allocate it first)."""

    def __init__(self, file, size: int):
        self.file, self.size = file, size

    def read(self, count: int = -1) -> bytes:
        left = self.size - self.file.tell()
        return self.file.read(left if count < 0 else min(count, left))

    def readline(self) -> bytes:
        return self.file.readline(self.size - self.file.tell())


def _from_legacy(file, path: str, trust: bool):
    """torch < 1.6 layout: magic, protocol, sys info, the object, storage keys, then each storage's data."""
    size = os.path.getsize(path)
    file = _Bounded(file, size)
    if _Unpickler(file, path, False).load() != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
    _Unpickler(file, path, False).load()  # protocol version
    _Unpickler(file, path, False).load()  # sys info: little-endian, as every published checkpoint
    storages: dict[str, _Storage] = {}
    allocated = [0]

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        if key not in storages:
            allocated[0] += numel * dtype.itemsize
            if allocated[0] > size:  # the data follows in the file: all storages together cannot be larger
                raise CheckpointError(f"{path}: storage {printable(key, 40)} of {numel} elements is larger than the "
                                      "file")
            storages[key] = _Storage(np.zeros(numel, dtype))  # filled below: the data follows the pickle
        elif storages[key].data.dtype != dtype or storages[key].data.size != numel:
            raise CheckpointError(f"{path}: storage {printable(key, 40)} is named with two types or sizes")
        return storages[key]

    result = _Unpickler(file, path, trust, storage).load()
    keys = _Unpickler(file, path, False).load()
    if not isinstance(keys, list):
        raise CheckpointError(f"{path}: truncated or corrupt (no storage list)")
    for key in keys:
        if str(key) not in storages:
            raise CheckpointError(f"{path}: data for storage {printable(str(key), 40)}, which no tensor uses")
        data = storages[str(key)].data
        (numel,) = struct.unpack("<q", file.read(8))
        raw = file.read(numel * data.itemsize) if numel == data.size else b""
        if len(raw) != data.nbytes:
            raise CheckpointError(f"{path}: truncated or corrupt (storage {printable(str(key), 40)})")
        data[:] = np.frombuffer(raw, data.dtype.newbyteorder("<"), numel)
    return result


def read_pth(path: str, trust: bool = False) -> Any:
    """The object a .pth file holds (usually a dict), every tensor as a read-only numpy array; torch is not needed.

    Raises FileNotFoundError, or CheckpointError (a ValueError) naming the file: a truncated or foreign file,
    a pickled global outside the safe set (unless `trust`), or sizes that do not fit the file.
    """
    from keras_pspnet.files import regular_file

    regular_file(path, "checkpoint")
    with open(path, "rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    try:
        if is_zip:  # a truncated zip lacks its central directory: BadZipFile below names it
            with zipfile.ZipFile(path) as archive:
                value = _from_zip(archive, path, trust)
        else:
            with open(path, "rb") as file:
                value = _from_legacy(file, path, trust)
        check_nodes(value, path, MAX_NODES)
        return _materialize(value, path, {})
    except CheckpointError as error:
        message = str(error)
        raise CheckpointError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError, IndexError,
            AttributeError, struct.error, MemoryError, RecursionError, OverflowError) as error:
        if str(error).startswith(f"{path}: "):  # ours already (a member over its cap)
            raise CheckpointError(str(error)) from None
        detail = printable(str(error).splitlines()[0], 200) if str(error) else "truncated or corrupt"
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(error).__name__}: {detail})") from None
