"""`recipes/quickstart.ipynb` runs top to bottom on this backend.

Executed with nbclient in its fast mode (a subset of the default data, one
epoch), so the notebook users start from cannot rot.
"""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    path = os.path.join(ROOT, "recipes", "quickstart.ipynb")
    notebook = nbformat.read(path, as_version=4)
    monkeypatch.setenv("GEOVARIO_QUICKSTART_FAST", "1")
    monkeypatch.setenv("GEOVARIO_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    text = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert f"backend: {os.environ.get('KERAS_BACKEND', 'tensorflow')}" in text
    for mode in ("gallery", "reference", "hybrid"):
        assert f"{mode:>9}: " in text
    assert "reloaded model agrees: True" in text
    assert "saved_model.pb" in text
    images = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 2  # the variogram and the error map
