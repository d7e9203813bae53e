"""mkdocs hooks: the reference tables are generated from the code at every build, never copied by hand.

A page asks for one with a line `<!-- generated: NAME -->` (NAME: a key of GENERATORS); an unknown name fails the
build. Everything here reads plain data: the argument parser, the config dataclasses (their module imports Keras,
hence TensorFlow, kept quiet below), the registry, the presets and the pages' own test directives.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import importlib.util
import inspect
import os
import re
import sys
import textwrap
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, also without `pip install -e .`

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the config dataclasses import Keras, hence TensorFlow
MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.M)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _field_docs(cls) -> dict[str, str]:
    """The attribute docstrings of a dataclass (the string literal after each field), read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for field, after in zip(body, body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[field.target.id] = " ".join(after.value.value.split())
    return docs


def _type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return " or ".join(part.strip() for part in text.replace("typing.", "").replace("None", "null").split("|"))


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip() \
        .removesuffix("\n...").removesuffix(" ...")


def _fields_table(cls, choices: dict | None = None, prefix: str = "") -> str:
    docs = _field_docs(cls)
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        meaning = docs.get(field.name, "")
        if choices and field.name in choices:
            meaning += " One of: " + ", ".join(f"`{_yaml_value(c)}`" for c in choices[field.name]) + "."
        rows.append((f"`{prefix}{field.name}`", f"`{_type_name(field.type)}`", f"`{_yaml_value(default)}`", meaning))
    return _table(("key", "type", "default", "meaning"), rows)


def config() -> str:
    """Every key of a training config (`keras_pspnet.config.TrainConfig`)."""
    from keras_pspnet.config import CHOICES, TrainConfig

    return _fields_table(TrainConfig, CHOICES)


def augment() -> str:
    """Every `augment.*` key (`keras_pspnet.data.info.AugmentConfig`), each dataset's defaults and the recipes."""
    from keras_pspnet.data.classes import CLASS_SETS
    from keras_pspnet.data.info import RECIPES, AugmentConfig, augment_config

    fields = [field.name for field in dataclasses.fields(AugmentConfig)]
    table = _fields_table(AugmentConfig, prefix="augment.")
    datasets = {info.name: info.augment for info in CLASS_SETS.values()}
    columns = {**{f"`{name}` (default)": config for name, config in datasets.items()},
               **{f"`recipe: {name}` on ADE20K": augment_config(datasets["scene_parse150"], {"recipe": name})
                  for name in sorted(RECIPES)}}
    rows = [(f"`{field}`", *(f"`{_yaml_value(getattr(config, field))}`" for config in columns.values()))
            for field in fields]
    values = _table(("field", *columns), rows)
    return (f"{table}\n\nWhat each dataset starts from (the `context` scenes only mirror: zooming or rotating would "
            "cut away the surroundings that tell their classes), and what `recipe:` gives (it keeps the dataset's "
            f"`base_scale`):\n\n{values}")


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().split()).removeprefix("usage: ")


def _options(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:  # argparse has no public walk of its actions; sphinx-argparse reads them too
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(action.option_strings) or action.metavar or action.dest
        if action.choices:
            names += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.option_strings and action.nargs != 0:
            names += f" {action.metavar or action.dest.upper()}"
        default = "" if action.default in (None, argparse.SUPPRESS, False) or action.nargs == 0 \
            else f"`{action.default}`"
        meaning = html.escape((action.help or "").replace("%(default)s", str(action.default)), quote=False)
        rows.append((f"`{names}`", default, meaning))
    return _table(("option", "default", "meaning"), rows) if rows else "No options."


def _commands(parser: argparse.ArgumentParser, path: str, level: int) -> list[str]:
    """A heading per command (level `level`), its usage and options; a command with subcommands lists them below."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    heading = f"{'#' * level} `{path}`\n\n{parser.description or ''}\n\n"
    if not subparsers:
        return [f"{heading}```text\n{_usage(parser)}\n```\n\n{_options(parser)}\n"]
    helps = {choice.dest: choice.help for choice in subparsers[0]._choices_actions}
    parts = [heading] if path != "pspnet" else []
    for name, sub in subparsers[0].choices.items():
        if sub.description is None and helps.get(name):
            sub.description = helps[name] + "."
        parts += _commands(sub, f"{path} {name}", level + 1)
    return parts


def cli() -> str:
    """Every `pspnet` subcommand: usage and options, from the argument parser itself."""
    from keras_pspnet.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rows = [(f"[`pspnet {choice.dest}`](#pspnet-{choice.dest})", choice.help) for choice in commands._choices_actions]
    overview = f"```text\n{_usage(parser)}\n```\n\n{_options(parser)}\n\n{_table(('command', 'what it does'), rows)}\n"
    return overview + "\n" + "\n".join(_commands(parser, "pspnet", 1))


def pretrained() -> str:
    """The published PSPNets of the registry."""
    from keras_pspnet.registry import ZOO

    rows = [(f"`{name}`", entry.dataset, entry.backbone, f"{entry.miou:.2f}",
             "-" if entry.miou_ms is None else f"{entry.miou_ms:.2f}", entry.protocol.describe(),
             f"[.pth]({entry.url})")
            for name, entry in sorted(ZOO.items())]
    return _table(("name", "data", "backbone", "mIoU", "ms+flip", "test protocol", "checkpoint"), rows)


def presets() -> str:
    """The architecture presets and the `build_pspnet` arguments each stands for."""
    from keras_pspnet.presets import PRESETS

    rows = [(f"`{name}`", ", ".join(f"`{key}={value!r}`" for key, value in arguments.items()))
            for name, arguments in sorted(PRESETS.items())]
    return _table(("preset", "build_pspnet arguments"), rows)


def doc_substitutions() -> str:
    """What tests/test_docs.py changes or skips in each page, read from the pages' directives."""
    # By file, not `import tests.docs_examples`: under mkdocs the name `tests` did not resolve to our folder.
    spec = importlib.util.spec_from_file_location("docs_examples", ROOT / "tests" / "docs_examples.py")
    examples = sys.modules["docs_examples"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    rows = []
    for page in examples.all_pages():
        for block in examples.read_blocks(page):
            name = page.relative_to(ROOT).as_posix()
            if block.skip:
                rows.append((f"`{name}:{block.line}`", "skipped", block.skip))
            for old, new, why in block.replacements:
                rows.append((f"`{name}:{block.line}`", f"`{old}` → `{new}`", why))
    return _table(("block", "change", "why"), rows)


GENERATORS: dict[str, typing.Callable[[], str]] = {
    "config": config, "augment": augment, "cli": cli, "pretrained": pretrained, "presets": presets,
    "doc-substitutions": doc_substitutions,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generate(match: re.Match) -> str:
        name = match[1]
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)
