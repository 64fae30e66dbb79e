"""The README is a front page a newcomer reads, and every link in it and in docs/ leads somewhere: a file that exists,
and for `#anchor` links a heading of that file (GitHub's slugs). The configuration reference in docs/ is generated from
the config, so it cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200
TEST_COMMAND = 'pip install -e ".[dev]" && pytest'  # what CI runs (.ci/run): the README must say exactly this
REFERENCE = ROOT / "docs" / "configuration.md"
START, END = "<!-- CONFIG-REFERENCE:START -->", "<!-- CONFIG-REFERENCE:END -->"

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without code: a `[x](y)` inside a code block or `code` is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, punctuation dropped (letters, digits, '_', '-' and spaces
    stay), spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]  # http:, https:, mailto: lead elsewhere


def test_the_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines: move reference material into docs/"
    assert TEST_COMMAND in lines, f"the README's test command is CI's: {TEST_COMMAND}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in relative_links(README)}
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.relative_to(ROOT)}")
    assert broken == [], f"{page.relative_to(ROOT)}: broken links"


REPOSITORY_FILE = re.compile(r"(?<![\w/.~-])((?:sweeps|benchmarks|notebooks|tests|docs|data|trainer|report|sweeper|"
                             r"models|common|scratch_cnn)/[\w./-]*\.(?:yaml|py|sh|ipynb|md))")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_command_names_exists(page):
    """The demo's and the sweeps' commands name files of the repository (sweeps/demo/source.yaml, ...): a renamed
    file breaks them although no link does."""
    text = page.read_text()
    blocks = [match.group(0) for match in FENCE.finditer(text)]
    code = "\n".join(blocks + INLINE_CODE.findall(FENCE.sub("", text)))
    missing = sorted({name for name in REPOSITORY_FILE.findall(code) if not (ROOT / name).exists()})
    assert missing == [], f"{page.relative_to(ROOT)} names files that do not exist"


def test_the_link_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## On W&B's servers\n\n## Offline, or on a CPU\n\n## Title\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#on-wbs-servers) [b](other.md#offline-or-on-a-cpu) [c](other.md#title-1) "
                    "[d](missing.md) [e](other.md#nowhere) [f](https://example.org/x.md) `[g](in-code.md)`\n"
                    "```\n[h](in-fence.md)\n```\n![i](picture.png)\n")
    assert relative_links(page) == ["other.md#on-wbs-servers", "other.md#offline-or-on-a-cpu", "other.md#title-1",
                                    "missing.md", "other.md#nowhere", "picture.png"]
    assert anchors(tmp_path / "other.md") == {"title", "on-wbs-servers", "offline-or-on-a-cpu", "title-1"}
    assert slug("Decoded images (`--image_cache`)") == "decoded-images---image_cache"


def test_the_configuration_reference_is_generated_from_the_config():
    from trainer.config import reference_markdown

    block = REFERENCE.read_text().split(START)[1].split(END)[0]
    assert block.strip() == reference_markdown().strip(), "regenerate it: python -m trainer.config --write"


def test_writing_the_reference_replaces_only_the_table(tmp_path):
    from trainer.config import reference_markdown, write_reference

    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration\n\nbefore\n\n{START}\n| stale | table |\n{END}\n\nafter\n")
    write_reference(page)
    assert page.read_text() == f"# Configuration\n\nbefore\n\n{START}\n{reference_markdown().strip()}\n{END}\n\nafter\n"
