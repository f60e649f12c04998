"""Presets: a GeoCLIP as a folder, in keras-hub's local preset layout.

A preset folder holds

- `config.json`: the model's Keras serialisation (`class_name`, `config`,
  `build_config`; no compile state), as `keras_hub` writes it;
- `model.weights.h5`: every weight, gallery and reference set included;
- `metadata.json`: `keras_version`, `geovario_keras_version`,
  `parameter_count`, `date_saved`.

`GeoCLIP.save_to_preset(dir)` writes one and `GeoCLIP.from_preset(dir)`
loads it on any backend, so a released model (`gv.pretrained.
write_geoclip_preset`) and a fine-tuned one load the same way. Nothing is
fetched: a preset is a local folder.

A preset is written into a temporary folder next to its destination and
renamed into place when complete, so a failed save never leaves a partial
preset, and an existing preset is replaced only with `overwrite=True`.
"""

import datetime
import json
import os

import keras

from geovario_keras import saving
from geovario_keras.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
PRESET_FILES = (CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE)


def save_to_preset(model, preset_dir, overwrite=False):
    """Writes `model` (built) as a preset folder; returns its path.

    Args:
        model: a built `gv.GeoCLIP`.
        preset_dir: the folder to write (created; its parent must exist or
            is created).
        overwrite: bool. Replace an existing preset folder.
    """
    if not model.built:
        raise ValueError(
            "`save_to_preset` needs a built model: call it on a batch of "
            "inputs, `fit` it or load weights first."
        )
    with saving.atomic_folder(preset_dir, overwrite, "preset_dir") as tmp:
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)  # a preset is not a checkpoint
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        metadata = {
            "keras_version": keras.__version__,
            "geovario_keras_version": __version__,
            "parameter_count": int(model.count_params()),
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(metadata, f, indent=2)
    return os.path.abspath(os.fspath(preset_dir))


def from_preset(preset_dir, load_weights=True):
    """Loads the model of a preset folder written by `save_to_preset`.

    Args:
        preset_dir: a local preset folder.
        load_weights: bool. False returns the architecture with fresh
            weights (the gallery and reference set then empty).

    Returns:
        The model (a `gv.GeoCLIP`), built, not compiled.
    """
    path = os.fspath(preset_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No preset folder at {path!r} (a preset is a local folder "
            f"holding {', '.join(PRESET_FILES)}; nothing is downloaded)."
        )
    missing = [f for f in PRESET_FILES if not os.path.exists(f"{path}/{f}")]
    if missing:
        raise ValueError(
            f"{path!r} is not a complete preset: missing {missing} (expected "
            f"{', '.join(PRESET_FILES)})."
        )
    with open(os.path.join(path, CONFIG_FILE)) as f:
        config = json.load(f)
    model = keras.saving.deserialize_keras_object(config)
    if load_weights:
        model.load_weights(os.path.join(path, WEIGHTS_FILE))
    return model
