"""The study scripts in scripts/ are run by hand, not by the suite: importing each one at least catches a
library change (a renamed function, a moved constant) that would break it before anyone runs it again."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


def test_there_are_study_scripts_to_check():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_each_study_script_imports_and_has_a_main(script, monkeypatch):
    monkeypatch.syspath_prepend(str(script.parent))  # as when run: a study may import another one
    spec = importlib.util.spec_from_file_location(f"study_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports, not the study (each guards it with __main__)
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
