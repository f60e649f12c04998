"""Pretrained weights read from local files, nothing downloaded.

- `geoclip`: GeoCLIP's released location encoder, image MLP head, logit
  scale and 100K-point gallery, from the files of the `geoclip` 1.3.0 wheel
  (`geoclip_model`, `load_geoclip_weights`, `write_geoclip_preset`, ...).
- `clip`: CLIP's vision tower from a Hugging Face or keras-hub checkpoint
  folder (`clip_image_backbone`).
- `torch_checkpoint`: the restricted `.pth` reader both rely on, without
  PyTorch (`read_torch_checkpoint`).
"""

from geovario_keras.pretrained.clip import clip_image_backbone
from geovario_keras.pretrained.geoclip import GEOCLIP_CONFIG
from geovario_keras.pretrained.geoclip import GEOCLIP_FEATURE_DIM
from geovario_keras.pretrained.geoclip import GEOCLIP_SIGMAS
from geovario_keras.pretrained.geoclip import GEOCLIP_VERSION
from geovario_keras.pretrained.geoclip import GeoCLIPFiles
from geovario_keras.pretrained.geoclip import geoclip_location_encoder
from geovario_keras.pretrained.geoclip import geoclip_model
from geovario_keras.pretrained.geoclip import load_geoclip_gallery
from geovario_keras.pretrained.geoclip import load_geoclip_weights
from geovario_keras.pretrained.geoclip import write_geoclip_preset
from geovario_keras.pretrained.torch_checkpoint import read_torch_checkpoint

__all__ = [
    "GEOCLIP_CONFIG",
    "GEOCLIP_FEATURE_DIM",
    "GEOCLIP_SIGMAS",
    "GEOCLIP_VERSION",
    "GeoCLIPFiles",
    "clip_image_backbone",
    "geoclip_location_encoder",
    "geoclip_model",
    "load_geoclip_gallery",
    "load_geoclip_weights",
    "read_torch_checkpoint",
    "write_geoclip_preset",
]
