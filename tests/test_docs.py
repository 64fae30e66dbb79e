"""The configuration reference in docs/ is generated from the config, so it cannot drift from the code."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
START, END = "<!-- CONFIG-REFERENCE:START -->", "<!-- CONFIG-REFERENCE:END -->"


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
