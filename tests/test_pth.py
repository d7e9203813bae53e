"""Reading .pth files without torch: both file layouts, every dtype and view, and refusal of foreign objects."""

import functools
import json
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from keras_pspnet.convert.pth import LEGACY_MAGIC, CheckpointError, _Storage, _Tensor, read_pth
from tests.checkpoints import BLOCK_TORCH

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def sample_checkpoint():
    state = torch.nn.Linear(2, 3).state_dict()  # an OrderedDict with a `_metadata` attribute, as every state dict
    state.update(
        conv=torch.randn(4, 3, 3, 3), half=torch.randn(5).half(), bf16=torch.randn(6).bfloat16(),
        count=torch.tensor(7), ints=torch.arange(5, dtype=torch.int32), flags=torch.tensor([True, False]),
        transposed=torch.arange(12.0).reshape(3, 4).t(), sliced=torch.arange(20.0)[5:11],
        empty=torch.zeros(0, 3), parameter=torch.nn.Parameter(torch.ones(2)))
    state["shared"] = state["conv"][1]  # a view sharing its storage with another entry
    meta = {"CLASSES": ("road", "sky"), "PALETTE": [[128, 64, 128], [70, 130, 180]], "bytes": b"\x00\xff",
            "numpy": np.arange(3), "scalar": np.float64(2.5), "config": "model = dict(type='EncoderDecoder')"}
    return {"meta": meta, "state_dict": state}


def as_numpy(tensor):
    return tensor.detach().float().numpy() if tensor.dtype == torch.bfloat16 else tensor.detach().numpy()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_what_torch_saved_with_torch_blocked(tmp_path, legacy):
    checkpoint = sample_checkpoint()
    path = str(tmp_path / "model.pth")
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    script = BLOCK_TORCH + (
        "import numpy as np\n"
        "from keras_pspnet.convert.pth import read_pth\n"
        f"checkpoint = read_pth({path!r})\n"
        "assert 'torch' not in sys.modules\n"
        f"np.savez({str(tmp_path / 'arrays.npz')!r}, **{{k: v.astype(np.float64) if v.dtype.name == 'bfloat16' else v "
        "for k, v in checkpoint['state_dict'].items()})\n"
        "meta = checkpoint['meta']\n"
        "print(repr((meta['CLASSES'], meta['PALETTE'], meta['bytes'], meta['numpy'].tolist(), float(meta['scalar']))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    arrays = np.load(tmp_path / "arrays.npz")
    assert sorted(arrays.files) == sorted(checkpoint["state_dict"])
    for key, tensor in checkpoint["state_dict"].items():
        expected = as_numpy(tensor)
        assert arrays[key].shape == expected.shape, key
        np.testing.assert_array_equal(arrays[key].astype(expected.dtype), expected, err_msg=key)
    assert arrays["half"].dtype == np.float16 and arrays["count"].dtype == np.int64 and arrays["flags"].dtype == bool
    assert result.stdout.strip() == repr((("road", "sky"), [[128, 64, 128], [70, 130, 180]], b"\x00\xff", [0, 1, 2],
                                          2.5))


class Payload:
    """Runs a shell command when unpickled: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_foreign_objects_are_refused_by_name_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth: refusing to unpickle posix.system") as error:
        read_pth(path)
    assert "--trust-checkpoint" in str(error.value) and not marker.exists()
    torch.save({"fraction": __import__("fractions").Fraction(1, 3), "w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="fractions.Fraction"):
        read_pth(path)
    trusted = read_pth(path, trust=True)  # plain pickle for globals outside torch, as torch.load(weights_only=False)
    assert trusted["fraction"] == __import__("fractions").Fraction(1, 3) and trusted["w"].tolist() == [1.0, 1.0]


def test_truncated_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, str(path))
    content = path.read_bytes()
    cases = {"truncated_zip.pth": content[: len(content) // 2], "garbage.pth": b"not a checkpoint at all",
             "empty.pth": b""}
    torch.save({"state_dict": {"w": torch.randn(1000)}}, str(tmp_path / "legacy.pth"),
               _use_new_zipfile_serialization=False)
    cases["truncated_legacy.pth"] = (tmp_path / "legacy.pth").read_bytes()[:-100]
    with zipfile.ZipFile(tmp_path / "nopickle.pth", "w") as archive:
        archive.writestr("archive/other.txt", "x")
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "nopickle.pth"]:
        with pytest.raises(CheckpointError) as error:
            read_pth(str(tmp_path / name))
        message = str(error.value)
        assert message.startswith(str(tmp_path / name) + ": ") and "\n" not in message, message
    with pytest.raises(FileNotFoundError, match="missing.pth: checkpoint not found"):
        read_pth(str(tmp_path / "missing.pth"))


def test_tensors_never_reach_past_their_storage():
    storage = _Storage(np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(_Tensor(storage, 2, (2, 3), (3, 1)).array("x"), np.arange(2, 8).reshape(2, 3))
    with pytest.raises(CheckpointError, match="reaches past the end of its storage"):
        _Tensor(storage, 5, (2, 3), (3, 1)).array("x")
    with pytest.raises(CheckpointError, match="a tensor index -1"):
        _Tensor(storage, 0, (2,), (-1,)).array("x")
    with pytest.raises(CheckpointError, match="larger than its storage"):  # a broadcast view: any memory it likes
        _Tensor(storage, 0, (10**6, 10**6), (0, 0)).array("x")
    with pytest.raises(CheckpointError, match="reaches past the end"):  # huge strides: bounds in bytes, no overflow
        _Tensor(storage, 0, (2, 2), (2**61, 1)).array("x")
    assert _Tensor(storage, 0, (1, 2), (2**61, 1)).array("x").tolist() == [[0.0, 1.0]]  # a stride of one element
    with pytest.raises(CheckpointError, match="a tensor index 4611686018427387904"):
        _Tensor(storage, 0, (2,), (2**62,))
    bytes_storage = _Storage(np.arange(12, dtype=np.uint8))  # torch >= 2: untyped storages read with a dtype
    int32 = np.dtype(np.int32)
    assert _Tensor(bytes_storage, 1, (2,), (1,), int32).array("x").tolist() == [0x07060504, 0x0B0A0908]
    with pytest.raises(CheckpointError, match="reaches past the end"):  # 2 int32 from byte 8 need bytes 8-15
        _Tensor(bytes_storage, 2, (2,), (1,), int32).array("x")
    with pytest.raises(CheckpointError, match="a storage of 10 bytes read as int32"):
        _Tensor(_Storage(np.arange(10, dtype=np.uint8)), 0, (2,), (1,), int32).array("x")
    with pytest.raises(CheckpointError, match="a tensor's storage is a ndarray, not a storage"):
        _Tensor(np.zeros((4, 4)), 0, (4,), (1,))


def legacy_file(path, payload: bytes) -> str:
    """torch's pre-1.6 layout around a hand-made pickle, as an attacker would write it."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)
    return str(path)


def global_(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(value: str) -> bytes:
    return b"X" + len(value).to_bytes(4, "little") + value.encode()


@pytest.mark.parametrize("payload,message", [
    # BUILD on an object the reader shares between files: float storages would read as int8 from then on
    (global_("torch", "FloatStorage") + b"}" + text("dtype") + b"K\x01sb",
     "refusing to set the state of a _StorageType"),
    # BUILD on a function: its defaults would change for every later file
    (global_("_codecs", "encode") + b"N}" + text("__defaults__") + text("utf-16") + b"\x85s\x86b",
     "refusing to set the state of a function"),
    # a storage of 10**12 floats in a file of a few bytes
    (b"(" + text("storage") + global_("torch", "FloatStorage") + text("0") + text("cpu") + b"\x8a\x06"
     + (10**12).to_bytes(6, "little") + b"NtQ", "storage 0 of 1000000000000 elements is larger than the file"),
])
def test_hostile_pickles_are_refused(tmp_path, payload, message):
    path = legacy_file(tmp_path / "hostile.pth", b"\x80\x02" + payload + b".")
    with pytest.raises(CheckpointError, match=message):
        read_pth(path)
    torch.save({"w": torch.arange(3.0)}, str(tmp_path / "next.pth"), _use_new_zipfile_serialization=False)
    assert read_pth(str(tmp_path / "next.pth"))["w"].tolist() == [0.0, 1.0, 2.0]  # later files read as ever


def test_checkpoints_of_mmengine_runners_read(tmp_path, monkeypatch):
    """mmsegmentation 1.x checkpoints (mmengine's Runner) keep numpy data, the config and a message hub of
    HistoryBuffer objects in their meta: data only, read without mmengine, no code run."""
    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history, self._count_history, self.max_length = np.array([0.5, 0.25]), np.array([1, 1]), 10

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    packages = ("mmengine", "mmengine.logging", module.__name__)
    for name in packages:  # pickling imports the module by name, parents first
        monkeypatch.setitem(sys.modules, name, module if name == module.__name__ else types.ModuleType(name))
    path = str(tmp_path / "iter_80000.pth")
    meta = {"dataset_meta": {"classes": ("a", "b"), "palette": [[1, 2, 3], [4, 5, 6]]}, "seed": np.int64(3),
            "mmengine_version": "0.10.7", "cfg": "model = dict()"}
    message_hub = {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 80000}}
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(1)}, "message_hub": message_hub}, path)
    for name in packages:  # mmengine is not installed where we read
        monkeypatch.delitem(sys.modules, name)
    read = read_pth(path)
    assert read["meta"]["dataset_meta"]["classes"] == ("a", "b") and int(read["meta"]["seed"]) == 3
    assert json.dumps(read["meta"]["dataset_meta"]["palette"]) == "[[1, 2, 3], [4, 5, 6]]"
    assert read["message_hub"]["log_scalars"]["train/loss"].max_length == 10


def short_bytes(value: bytes) -> bytes:
    return b"C" + bytes([len(value)]) + value  # SHORT_BINBYTES


def dtype_(name: str) -> bytes:
    return global_("numpy", "dtype") + text(name) + b"\x85R"


def reconstruct(shape: int, dtype: bytes, data: bytes) -> bytes:
    """numpy's own pickling of an array: _reconstruct(ndarray, (0,), b"b"), then BUILD with its state."""
    return (global_("numpy.core.multiarray", "_reconstruct") + global_("numpy", "ndarray") + b"K\x00\x85"
            + short_bytes(b"b") + b"\x87R" + b"(K\x01" + b"K" + bytes([shape]) + b"\x85" + dtype + b"\x89"
            + short_bytes(data) + b"tb")


@pytest.mark.parametrize("payload,message", [
    # an object array over bytes of the file's choosing: numpy would read them as pointers (SIGSEGV)
    (global_("numpy", "ndarray") + b"(K\x01\x85" + dtype_("O") + short_bytes(b"\x41" * 8) + b"tR",
     "a numpy dtype O .only numbers, booleans and strings are read"),
    (reconstruct(1, dtype_("O"), b"\x41" * 8), "a numpy dtype O"),
    (global_("numpy", "ndarray") + b"(K\x01\x85" + dtype_("f8") + short_bytes(b"\x41" * 8) + b"tR",
     "object is not callable"),  # ndarray(shape, dtype, buffer) itself is never called
    (reconstruct(3, dtype_("f8"), b"\x41" * 8), r"a numpy array of shape \(3,\) float64 with 8 bytes"),
    # a non-storage with 2-D `data` handed to the tensor rebuilder as its storage
    (global_("torch._utils", "_rebuild_tensor_v2") + b"(" + global_("collections", "OrderedDict") + b")R}"
     + text("data") + reconstruct(4, dtype_("f4"), b"\x00" * 16) + b"sbK\x00K\x04\x85K\x01\x85tR",
     "a tensor's storage is a OrderedDict, not a storage"),
    # BUILD setting a dunder of a container: its class, say
    (global_("collections", "OrderedDict") + b")R}" + text("__class__") + b"Nsb", "refusing the state"),
])
def test_forged_numpy_and_tensor_pickles_are_refused(tmp_path, payload, message):
    path = legacy_file(tmp_path / "forged.pth", b"\x80\x02" + payload + b".")
    assert os.path.getsize(path) < 701  # a few hundred bytes, as the attacks were
    with pytest.raises(CheckpointError, match=message) as error:
        read_pth(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


def test_arrays_in_meta_still_read_exactly(tmp_path):
    """numpy data that mmengine writes (arrays of numbers and strings, scalars, both byte orders)."""
    meta = {"a": np.arange(6, dtype=">i4").reshape(2, 3), "f": np.asfortranarray(np.eye(3)), "s": np.str_("road"),
            "u": np.array(["a", "bc"]), "x": np.float32(1.5), "b": np.array([True, False])}
    path = str(tmp_path / "m.pth")
    torch.save({"meta": meta, "state_dict": {"w": torch.ones(1)}}, path)
    read = read_pth(path)["meta"]
    for key, value in meta.items():
        assert np.asarray(read[key]).dtype == np.asarray(value).dtype and np.array_equal(read[key], value), key


def test_one_storage_shared_by_many_tensors_is_held_once(tmp_path):
    """torch keeps one storage for 250 references to a 4 MiB tensor; so do we (read-only views)."""
    import tracemalloc

    weight = torch.arange(2**20, dtype=torch.float32)
    path = str(tmp_path / "shared.pth")
    torch.save({f"w{i}": weight[i:] for i in range(250)}, path)
    tracemalloc.start()
    read = read_pth(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * 2**22, peak  # one storage (and the zip member read into it), not 250 copies (1 GB)
    assert all(np.shares_memory(read["w0"], read[f"w{i}"]) for i in range(250))
    assert read["w7"][0] == 7 and not read["w7"].flags.writeable


def test_members_inflating_past_their_cap_are_not_read(tmp_path):
    from keras_pspnet.convert.pth import MAX_PICKLE_BYTES

    path = str(tmp_path / "bomb.pth")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02N." + bytes(MAX_PICKLE_BYTES))
    assert os.path.getsize(path) < 2**20  # 64 MiB of zeros deflate to a small file
    with pytest.raises(CheckpointError, match=r"archive/data.pkl inflates to 67,108,868 bytes, more than "):
        read_pth(path)


@pytest.mark.parametrize("build,message", [
    (lambda: functools.reduce(lambda x, _: [x, x], range(100), [1]), "expands to more than 1,000,000 values"),
    (lambda: (lambda cycle: cycle.append(cycle) or cycle)([]), "refers to itself"),
])
def test_pickles_of_shared_references_are_judged_without_walking_them(tmp_path, build, message):
    """2**100 values in a few hundred bytes (each list twice in the next): anything that walks it never returns."""
    path = legacy_file(tmp_path / "laughs.pth", pickle.dumps({"meta": build()}, protocol=2))
    with pytest.raises(CheckpointError, match=message):
        read_pth(path)


def test_an_allocation_the_file_names_is_refused_before_it_is_made(tmp_path):
    """Protocol 5's BYTEARRAY8 allocates its length before reading: 39 bytes could ask for any amount of memory."""
    import struct

    path = legacy_file(tmp_path / "bytearray.pth", b"\x80\x05\x96" + struct.pack("<Q", 2**40) + b".")
    with pytest.raises(CheckpointError, match="pickle opcodes of protocol 5 .bytearray, buffers. are not read"):
        read_pth(path)


def overlapping_zip(path, count: int, payload: int) -> None:
    """A .pth whose storage entries overlap: entry i's data holds every later entry, local header and all, so that
    each is read whole (count * size / 2 in all) from a file of about one."""
    import io
    import struct
    import zlib

    class Storages(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.ByteStorage, obj[1:], "cpu", 1) if isinstance(obj, str) and obj[0] == "@" \
                else None

    buffer = io.BytesIO()
    Storages(buffer, protocol=2).dump({f"w{i}": f"@{i}" for i in range(count)})
    members = [("archive/data.pkl", buffer.getvalue())]

    def local(name, data):
        return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(data), len(data), len(data),
                           len(name), 0) + name.encode()

    tail, quoted = bytes(payload), []
    for index in reversed(range(count)):
        quoted.append((f"archive/data/{index}", tail))
        tail = local(f"archive/data/{index}", tail) + tail
    out, directory = bytearray(), bytearray()
    offsets = []
    for name, data in members:
        offsets.append((name, data, len(out)))
        out += local(name, data) + data
    position = len(out)
    out += tail
    for name, data in reversed(quoted):
        offsets.append((name, data, position))
        position += len(local(name, data))
    for name, data, offset in offsets:
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(data), len(data),
                                 len(data), len(name), 0, 0, 0, 0, 0, offset) + name.encode()
    start = len(out)
    out += directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(offsets), len(offsets), len(directory),
                                   start, 0)
    with open(path, "wb") as f:
        f.write(out)


def test_overlapping_zip_entries_cannot_multiply_memory(tmp_path):
    path = str(tmp_path / "overlap.pth")
    overlapping_zip(path, 100, 5000)
    assert os.path.getsize(path) < 20000  # read entry by entry: about 100 * 5000 / 2 bytes in all
    with pytest.raises(CheckpointError, match="or the storages hold more than the file"):
        read_pth(path)
