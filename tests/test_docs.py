"""Every Python and shell block of the README and of the site runs, page by page, as a user would run them.

docs/background/docs-tests.md tells readers how: the folder each page runs in, the local mirror of published
names, and the documented substitutions and skips (tests/docs_examples.py reads them).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.checkpoints import semseg_checkpoint
from tests.docs_examples import ROOT, Block, all_pages, read_blocks

PAGES = all_pages()
QUICKSTART = ROOT / "docs" / "quickstart.md"
CONTEXT_RUN = Path("runs") / "context_pspnet"
LINKED = ("training", "serving", "benchmarks")  # the repository's folders the examples name
CLASSES = [{"name": "sky", "color": [70, 130, 180]}, {"name": "road", "color": [128, 64, 128]},
           {"name": "car", "color": [0, 0, 142]}]
SEMSEG_CHECKPOINT = Path("exp/ade20k/pspnet50/model/train_epoch_100.pth")  # where the authors' train.py saves
_DONE: dict[Path, Path] = {}  # page -> the folder it ran in (the quick start's model is used by later pages)


def _write_inputs(folder: Path) -> None:
    """photo.jpg, photos/, my_data/ (the documented folder layout, three classes) and an authors' checkpoint."""
    from keras_pspnet.data.context import context_scene

    def scene(index, split_seed):
        example = context_scene(index, size=96, seed=split_seed)
        return np.asarray(example["image"]), np.asarray(example["mask"])

    Image.fromarray(scene(0, 3)[0]).save(folder / "photo.jpg", quality=95)
    (folder / "photos").mkdir()
    for i in range(2):
        Image.fromarray(scene(i + 1, 3)[0]).save(folder / "photos" / f"{i:04d}.jpg", quality=95)
    for split, count, seed in (("train", 16, 1), ("validation", 4, 2)):
        (folder / "my_data" / split / "images").mkdir(parents=True)
        (folder / "my_data" / split / "masks").mkdir(parents=True)
        for i in range(count):
            image, mask = scene(i, seed)
            Image.fromarray(image).save(folder / "my_data" / split / "images" / f"{i:04d}.jpg", quality=95)
            labels = np.minimum(mask, 2).astype(np.uint8)  # water, road, boat+car -> three classes
            Image.fromarray(labels, mode="L").save(folder / "my_data" / split / "masks" / f"{i:04d}.png")
    (folder / "my_data" / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    (folder / SEMSEG_CHECKPOINT).parent.mkdir(parents=True)
    semseg_checkpoint(folder / SEMSEG_CHECKPOINT, classes=150)  # tiny widths, the authors' layout and key names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """What every page's folder starts from, and the local mirror holding a tiny checkpoint per published name."""
    from keras_pspnet.data.classes import CLASS_SETS
    from keras_pspnet.registry import ZOO
    from tests.checkpoints import zoo_entry

    root = tmp_path_factory.mktemp("docs")
    inputs = root / "inputs"
    inputs.mkdir()
    _write_inputs(inputs)
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    entries = {}
    for name, entry in ZOO.items():
        if name in text:
            classes = len(CLASS_SETS[entry.dataset].class_names)
            _, entries[name] = zoo_entry(root / "mirror", name, classes, entry.dataset, entry.protocol, entry.options,
                                         depth=18)
    return {"inputs": inputs, "mirror": root / "mirror", "keras_home": root / "keras_home", "entries": entries,
            "pages": root / "pages"}


def _run_python(block: Block, code: str, namespace: dict) -> str:
    """Runs the block; returns what it printed. Blank lines first, so that a traceback's lines are the page's own."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile("\n" * block.line + code, str(block.page), "exec"), namespace)
    return printed.getvalue()


def _commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    return [command for command in code.replace("\\\n", " ").split("\n")
            if command.strip() and not command.strip().startswith("#")]


def _run_bash(block: Block, code: str, folder: Path) -> str:
    """Runs the block; returns what it printed on standard output."""
    from keras_pspnet.cli import main

    commands = _commands(code)
    if all(command.split()[0] == "pspnet" and not set(command) & set("|&;<>$`") for command in commands):
        printed = io.StringIO()
        for command in commands:  # in this process: published names resolve through the test registry
            argv = []
            for word in shlex.split(command, comments=True)[1:]:
                word = os.path.expanduser(word)
                argv += sorted(glob.glob(word)) or [word] if any(c in word for c in "*?[") else [word]
            try:
                with contextlib.redirect_stdout(printed):
                    status = main(argv)
            except SystemExit as exit:  # argparse's own exits: --help, --version
                status = exit.code
            assert status == 0, f"{block.where}: `{command.strip()}` failed"
        return printed.getvalue()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    strict = ["-e", "-o", "pipefail", "-O", "inherit_errexit"]  # a failing $(...) fails the block too
    result = subprocess.run(["bash", *strict, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{block.where}: exit {result.returncode}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result.stdout


def run_page(page: Path, world: dict, monkeypatch) -> Path:
    """Runs the page's blocks in order in a fresh folder; returns the folder."""
    if page in _DONE:
        return _DONE[page]
    import keras

    from keras_pspnet import registry

    text = page.read_text(encoding="utf-8")
    folder = world["pages"] / page.relative_to(ROOT).with_suffix("").as_posix().replace("/", "-")
    shutil.copytree(world["inputs"], folder)
    for name in LINKED:
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    if page != QUICKSTART and str(CONTEXT_RUN) in text:
        (folder / CONTEXT_RUN).mkdir(parents=True)
        shutil.copy(run_page(QUICKSTART, world, monkeypatch) / CONTEXT_RUN / "final.keras", folder / CONTEXT_RUN)
    for name, entry in world["entries"].items():
        monkeypatch.setitem(registry.ZOO, name, entry)
    monkeypatch.setenv("KERAS_PSPNET_MIRROR", str(world["mirror"]))
    monkeypatch.setenv("KERAS_HOME", str(world["keras_home"]))
    monkeypatch.chdir(folder)
    keras.backend.clear_session()
    namespace, printed = {"__name__": "__main__"}, ""
    for block in read_blocks(page):
        if block.output:  # the output the page shows is the output the code prints
            for line in filter(None, (line.strip() for line in block.code.splitlines())):
                assert line in printed, f"{block.where}: the block before does not print {line!r}; it printed:\n" \
                                        f"{printed[-2000:]}"
        if block.title:
            target = folder / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.substituted())
        if not block.runnable:
            continue
        code = block.substituted()
        if block.language == "python":
            printed = _run_python(block, code, namespace)
        else:
            printed = _run_bash(block, code, folder)
    _DONE[page] = folder
    return folder


def test_every_page_has_examples_and_known_directives():
    """The pages parse (closed fences, directives before blocks), every page is in the site's navigation, the README
    stays short, and the site's task pages all have examples."""
    import yaml

    for page in PAGES:
        for block in read_blocks(page):
            block.substituted()  # every substitution still finds its text, in skipped blocks too
    navigation = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def listed(entries):
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                yield from listed(value) if isinstance(value, list) else [value]

    pages = {page.relative_to(ROOT / "docs").as_posix() for page in PAGES if page.parent != ROOT}
    assert pages == set(listed(navigation)), "every page of docs/ is in mkdocs.yml's nav, and only those"
    import keras_pspnet

    api = (ROOT / "docs" / "reference" / "api.md").read_text(encoding="utf-8")
    for name in keras_pspnet.__all__:  # the API reference documents every public name where it is defined
        module = re.escape(f"keras_pspnet.{keras_pspnet._EXPORTS[name]}")
        assert re.search(rf"^::: {module}(\.\w+)*\.{name}$", api, re.M), f"{name} is not in the API reference"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) < 10_000, "the README is short: the site holds the rest"
    guides = sorted((ROOT / "docs" / "guides").glob("*.md"))
    assert guides, "no guides"
    for page in guides:
        assert any(block.runnable for block in read_blocks(page)), f"{page}: no example runs"


@pytest.mark.parametrize("page", [QUICKSTART, *(page for page in PAGES if page != QUICKSTART)],
                         ids=lambda page: page.relative_to(ROOT).as_posix())
def test_page_examples_run(page, world, monkeypatch):
    if not any(block.runnable for block in read_blocks(page)):
        pytest.skip("no runnable blocks")
    folder = run_page(page, world, monkeypatch)
    if page == QUICKSTART:
        assert (folder / CONTEXT_RUN / "final.keras").exists(), "the quick start makes the model later pages use"
