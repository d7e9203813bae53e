"""The documentation's code blocks and their test directives: what tests/test_docs.py runs and docs/hooks.py lists.

A fenced block is run when its language is `python` or `bash`; a block with a title (```yaml title="a.yaml")
is a file that the page's later blocks read. HTML comments on the lines just before a block direct its test:
`<!-- docs-test: replace `OLD` with `NEW`: WHY -->` (a documented substitution; OLD must occur in the block) and
`<!-- docs-test: skip: WHY -->`; `<!-- docs-test: output -->` before a `text` block: each of its lines is printed by
the last block run before it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ("python", "bash")
SHOWN = ("text", "yaml", "json", "kotlin")  # any other language is an error: a typo would hide a block from the test
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*(.*)$")
TITLE = re.compile(r'title="([^"]+)"')
REPLACE = re.compile(r"^<!-- docs-test: replace `([^`]+)` with `([^`]*)`: (.+?) -->$")
SKIP = re.compile(r"^<!-- docs-test: skip: (.+?) -->$")
OUTPUT = "<!-- docs-test: output -->"
DIRECTIVE = "<!-- docs-test:"


@dataclasses.dataclass
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    code: str
    title: str | None = None
    skip: str | None = None
    output: bool = False  # a `text` block the previous block's output must hold, line by line
    replacements: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.language in RUN and not self.skip

    def substituted(self) -> str:
        """The code as the test runs it; a replacement whose text is not in the block is an error."""
        code = self.code
        for old, new, _ in self.replacements:
            if old not in code:
                raise AssertionError(f"{self.where}: the substitution of `{old}` is stale: the block has no such text")
            code = code.replace(old, new)
        return code


def all_pages() -> list[Path]:
    """The README and every page of the site, in the site's order of folders."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page with their directives; a directive not followed by a block is an error."""
    blocks, pending = [], []
    lines = page.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        fence = FENCE.match(line)
        if line.startswith(DIRECTIVE):
            pending.append((i + 1, line))
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence[1]), None)
            if end is None:
                raise AssertionError(f"{page}:{i + 1}: a code block that is never closed")
            indent = len(lines[i]) - len(lines[i].lstrip())
            code = "\n".join(text[indent:] for text in lines[i + 1:end]) + "\n"
            if fence[2] not in RUN + SHOWN:
                raise AssertionError(f"{page}:{i + 1}: a code block in {fence[2] or 'no language'}; "
                                     f"use one of {RUN + SHOWN}")
            title = TITLE.search(fence[3])
            block = Block(page, i + 1, fence[2], code, title[1] if title else None)
            for number, directive in pending:
                if match := REPLACE.match(directive):
                    block.replacements.append((match[1], match[2], match[3]))
                elif match := SKIP.match(directive):
                    block.skip = match[1]
                elif directive == OUTPUT and block.language == "text":
                    block.output = True
                else:
                    raise AssertionError(f"{page}:{number}: a docs-test directive of neither form: {directive}")
            pending = []
            blocks.append(block)
            i = end
        elif line and pending:
            raise AssertionError(f"{page}:{pending[0][0]}: a docs-test directive must come just before a code block")
        i += 1
    if pending:
        raise AssertionError(f"{page}:{pending[0][0]}: a docs-test directive after the last code block")
    return blocks
