"""The reference PyTorch GeoCLIP location encoder, run from the wheel.

Executes the `geoclip` 1.3.0 wheel's own `model/location_encoder.py` and
`model/rff/` (verbatim) in a private package namespace, so that the reference
runs without importing `geoclip/__init__.py` (which pulls `transformers` and
a hub download) and without `pandas` (`model/misc.py` is replaced by a
module that only gives `file_dir`). Test-only: needs torch.
"""

import importlib.util
import os
import sys
import tempfile
import types
import zipfile

_PKG = "_geoclip_reference"


def _exec(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_location_encoder(wheel):
    """The reference `LocationEncoder` with the wheel's weights, in eval."""
    root = tempfile.mkdtemp(prefix="geoclip_ref_")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    model_dir = os.path.join(root, "geoclip", "model")
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [model_dir]
    sys.modules[_PKG] = pkg
    misc = types.ModuleType(f"{_PKG}.misc")
    misc.file_dir = model_dir
    sys.modules[f"{_PKG}.misc"] = misc
    rff_dir = os.path.join(model_dir, "rff")
    rff = types.ModuleType(f"{_PKG}.rff")
    rff.__path__ = [rff_dir]
    sys.modules[f"{_PKG}.rff"] = rff
    _exec(f"{_PKG}.rff.functional", os.path.join(rff_dir, "functional.py"))
    _exec(f"{_PKG}.rff.layers", os.path.join(rff_dir, "layers.py"))
    rff = _exec(f"{_PKG}.rff", os.path.join(rff_dir, "__init__.py"))
    le = _exec(
        f"{_PKG}.location_encoder",
        os.path.join(model_dir, "location_encoder.py"),
    )
    return le.LocationEncoder(from_pretrained=True).eval()
