"""geovario-keras: GeoCLIP with semivariogram-aware contrastive learning.

Keras 3; runs on TensorFlow, JAX and PyTorch (set `KERAS_BACKEND`).
"""

from geovario_keras import callbacks
from geovario_keras import candidates
from geovario_keras import data
from geovario_keras import evaluation
from geovario_keras import export
from geovario_keras import geo
from geovario_keras import layers
from geovario_keras import losses
from geovario_keras import metrics
from geovario_keras import presets
from geovario_keras import pretrained
from geovario_keras import retrieval
from geovario_keras import semivariogram
from geovario_keras import training
from geovario_keras.model import GeoCLIP
from geovario_keras.saving import load_model
from geovario_keras.version import __version__

__all__ = [
    "GeoCLIP",
    "__version__",
    "callbacks",
    "candidates",
    "data",
    "evaluation",
    "export",
    "geo",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "presets",
    "pretrained",
    "retrieval",
    "semivariogram",
    "training",
]
