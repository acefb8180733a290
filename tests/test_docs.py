"""The README and the notes under docs/ point only at files that exist (links and the code paths they name)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
CODE_PATH = re.compile(r"`((?:omnibridge|scripts|benchmarks|tests|assets|docs)/[\w./-]+\.(?:py|sh|md|json))")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_links_and_named_files_exist(document):
    text = document.read_text()
    missing = []
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target) and not (document.parent / target).exists():
            missing.append(target)
    for path in CODE_PATH.findall(text):
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"{document.name} names files that do not exist: {sorted(set(missing))}"


def test_the_notes_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for notes in ("docs/evaluation-notes.md", "docs/performance-notes.md", "docs/checkpoint-history.md"):
        assert f"]({notes})" in readme
