"""The reference PyTorch GeoCLIP, run from the wheel.

Executes the `geoclip` 1.3.0 wheel's own `model/location_encoder.py`,
`model/rff/`, `model/GeoCLIP.py` and `train/train.py` (verbatim) in a
private package namespace, so that the reference runs without importing
`geoclip/__init__.py` (which pulls `transformers` and a hub download) and
without `pandas`. Two modules are replaced: `model/misc.py` (by `file_dir`
and a numpy `load_gps_data`), and `model/image_encoder.py`, whose CLIP
ViT-L/14 backbone is not in the wheel: the stand-in keeps the wheel's `mlp`
head and takes precomputed 768-d CLIP features. Test and benchmark only:
needs torch.
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


def _load_gps_data(csv_file):
    import numpy as np
    import torch

    data = np.genfromtxt(csv_file, delimiter=",", names=True)
    return torch.tensor(
        np.stack([data["LAT"], data["LON"]], 1), dtype=torch.float32
    )


def _feature_image_encoder():
    from torch import nn

    class ImageEncoder(nn.Module):
        """The wheel's image encoder without its CLIP backbone."""

        def __init__(self, from_pretrained=True, **kwargs):
            super().__init__()
            self.mlp = nn.Sequential(
                nn.Linear(768, 768), nn.ReLU(), nn.Linear(768, 512)
            )

        def forward(self, x):
            return self.mlp(x)

    return ImageEncoder


def _model_package(wheel):
    """Unpacks the wheel and registers its model modules; returns the root."""
    if _PKG in sys.modules and hasattr(sys.modules[_PKG], "_root"):
        return sys.modules[_PKG]._root
    root = tempfile.mkdtemp(prefix="geoclip_ref_")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    model_dir = os.path.join(root, "geoclip", "model")
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [model_dir]
    sys.modules[_PKG] = pkg
    misc = types.ModuleType(f"{_PKG}.misc")
    misc.file_dir = model_dir
    misc.load_gps_data = _load_gps_data
    sys.modules[f"{_PKG}.misc"] = misc
    image = types.ModuleType(f"{_PKG}.image_encoder")
    image.ImageEncoder = _feature_image_encoder()
    sys.modules[f"{_PKG}.image_encoder"] = image
    rff_dir = os.path.join(model_dir, "rff")
    rff = types.ModuleType(f"{_PKG}.rff")
    rff.__path__ = [rff_dir]
    sys.modules[f"{_PKG}.rff"] = rff
    _exec(f"{_PKG}.rff.functional", os.path.join(rff_dir, "functional.py"))
    _exec(f"{_PKG}.rff.layers", os.path.join(rff_dir, "layers.py"))
    rff = _exec(f"{_PKG}.rff", os.path.join(rff_dir, "__init__.py"))
    _exec(
        f"{_PKG}.location_encoder",
        os.path.join(model_dir, "location_encoder.py"),
    )
    _exec(f"{_PKG}.GeoCLIP", os.path.join(model_dir, "GeoCLIP.py"))
    _exec(f"{_PKG}.train", os.path.join(root, "geoclip", "train", "train.py"))
    pkg._root = root
    return root


def reference_location_encoder(wheel):
    """The reference `LocationEncoder` with the wheel's weights, in eval."""
    _model_package(wheel)
    le = sys.modules[f"{_PKG}.location_encoder"]
    return le.LocationEncoder(from_pretrained=True).eval()


def reference_geoclip(wheel, queue_size=4096):
    """The wheel's `GeoCLIP` module with its released weights.

    Its image side takes precomputed 768-d CLIP features (see the module
    docstring); `forward`, `dequeue_and_enqueue`, the GPS queue and the
    100K `gps_gallery` buffer are the wheel's own code.
    """
    _model_package(wheel)
    module = sys.modules[f"{_PKG}.GeoCLIP"]
    return module.GeoCLIP(from_pretrained=True, queue_size=queue_size)


def reference_train_function(wheel):
    """The wheel's `geoclip.train.train` (one epoch over a data loader)."""
    _model_package(wheel)
    return sys.modules[f"{_PKG}.train"].train
