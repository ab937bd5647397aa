"""The demo notebooks: stored without outputs, in sync with notebooks/make_notebooks.py, and a clear error when the
shipped assets are missing.  (Executing them is nbmake's job: `python -m pytest` collects notebooks/ too.)"""

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


def _maker():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_stripped_and_in_sync(tmp_path):
    fresh = {p.name: p for p in _maker().build(tmp_path)}
    stored = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in stored] == sorted(fresh) and len(stored) == 6
    for path in stored:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"
        regenerated = nbformat.read(fresh[path.name], as_version=4)
        assert [c.source for c in nb.cells] == [c.source for c in regenerated.cells], \
            f"{path.name} differs from make_notebooks.py: edit the script and rerun it"


def test_notebook_without_shipped_assets_says_what_to_do(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import vistok.sample

    monkeypatch.setattr(vistok.sample, "DEFAULT_MODEL", tmp_path / "assets" / "default")
    nb = nbformat.read(NOTEBOOKS / "02_text_to_image.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace: dict = {}
    exec(code[0], namespace)  # setup cell
    with pytest.raises(FileNotFoundError, match=r"shipped pipeline 'default' is missing.*pip install -e \."):
        exec(code[1], namespace)
