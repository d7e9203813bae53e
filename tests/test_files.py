"""Files in and out: atomic writes that a kill cannot damage, no writes through links, bounded reads and nesting."""

import os
import signal
import subprocess
import sys
import time

import pytest

from keras_pspnet.files import (
    PARTIAL,
    atomic_output,
    check_nodes,
    printable,
    read_bytes,
    read_text,
    write_text,
)


def test_an_interrupted_write_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(str(target), "[1]")
    with pytest.raises(RuntimeError):
        with atomic_output(str(target)) as partial:
            with open(partial, "w") as f:
                f.write("[1, 2")  # half written when the error strikes
            raise RuntimeError("killed")
    assert target.read_text() == "[1]" and os.listdir(tmp_path) == ["metrics.json"]
    with pytest.raises(FileExistsError, match="metrics.json: already exists"):
        write_text(str(target), "[2]", overwrite=False)
    with pytest.raises(FileNotFoundError, match="missing: no such folder for x.json"):
        write_text(str(tmp_path / "missing" / "x.json"), "{}")


SLOW_WRITER = """
import sys, time
from keras_pspnet.files import atomic_output
with atomic_output(sys.argv[1]) as partial:
    with open(partial, "w") as f:
        f.write("partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def test_a_sigkill_during_a_write_never_damages_the_target(tmp_path):
    target = tmp_path / "final.keras"
    target.write_text("the previous model")
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "writing\n"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert target.read_text() == "the previous model"
    leftovers = [name for name in os.listdir(tmp_path) if PARTIAL in name]
    assert len(leftovers) == 1 and leftovers[0].endswith(".keras")  # the zoo and `remove_stale_partials` clear these


def test_links_are_never_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    for link, points_to in (("dangling.json", tmp_path / "nowhere"), ("user.json", outside)):
        os.symlink(points_to, tmp_path / link)
        with pytest.raises(ValueError, match=f"{link}: is a symbolic link; outputs are not written through links"):
            write_text(str(tmp_path / link), "x")
    assert outside.read_text() == "keep" and not os.path.lexists(tmp_path / "nowhere")


def test_reads_take_regular_files_of_bounded_size(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    started = time.time()
    for path in (str(tmp_path / "pipe"), "/dev/zero"):
        with pytest.raises(ValueError, match=f"{path}: a pipe, device or socket .expected a regular config file."):
            read_text(path, "config")
    assert time.time() - started < 30  # neither was opened (reading either never ends)
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(ValueError, match=r"big: 0.0 MiB, more than a config file may have"):
        read_bytes(str(tmp_path / "big"), 1024, "config")
    (tmp_path / "latin").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="latin: not UTF-8 text"):
        read_text(str(tmp_path / "latin"))


def test_nesting_is_judged_without_walking_shared_nodes():
    laughs = [1]
    for _ in range(200):  # 2**200 values once the sharing is unfolded
        laughs = [laughs, laughs]
    started = time.time()
    with pytest.raises(ValueError, match="doc: expands to more than 1,000 values"):
        check_nodes({"a": laughs}, "doc", limit=1000)
    assert time.time() - started < 1
    check_nodes({"a": [1, 2, {"b": (3, 4)}]}, "doc", limit=10)
    cycle = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="doc: refers to itself"):
        check_nodes(cycle, "doc")


def test_printable_escapes_terminal_codes():
    assert printable("road\x1b[2J\x1b[31mred\n") == "road\\x1b[2J\\x1b[31mred\\n"
    assert printable("x" * 600, 10) == "xxxxxxxxxx..."
