"""CLIP's vision tower from a local checkpoint folder, as a Keras backbone.

`clip_image_backbone` reads a Hugging Face CLIP checkpoint folder
(`config.json` + `model.safetensors`) or a keras-hub preset folder and
returns the vision encoder and its projection as a `CLIPImageFeatures`
layer, the image backbone GeoCLIP puts under its MLP head. Nothing is
downloaded.
"""

import json
import os

import keras
import numpy as np

from geovario_keras.layers.clip_image import CLIP_MEAN
from geovario_keras.layers.clip_image import CLIP_STD
from geovario_keras.layers.clip_image import CLIPImageFeatures
from geovario_keras.layers.clip_image import require_keras_hub

_CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
_CLIP_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _SafetensorsFolder:
    """Reads tensors by name from a folder's `model.safetensors` or its
    sharded index, as numpy (no PyTorch)."""

    def __init__(self, folder):
        from safetensors import safe_open

        index = os.path.join(folder, _CLIP_WEIGHTS[1])
        if os.path.isfile(index):
            weight_map = _read_json(index)["weight_map"]
        elif os.path.isfile(os.path.join(folder, _CLIP_WEIGHTS[0])):
            weight_map = None
        else:
            raise FileNotFoundError(
                f"No {' or '.join(_CLIP_WEIGHTS)} in {folder!r}: download "
                "the checkpoint with its safetensors weights (see "
                "`clip_image_backbone`)."
            )
        self._files, self._open = {}, safe_open
        self._folder, self._map = folder, weight_map

    def _file(self, key):
        name = _CLIP_WEIGHTS[0] if self._map is None else self._map.get(key)
        if name is None:
            return None
        if name not in self._files:
            self._files[name] = self._open(
                os.path.join(self._folder, name), framework="numpy"
            )
        return self._files[name]

    def get(self, key):
        for k in (key, "clip." + key):  # some exports nest under "clip."
            f = self._file(k)
            if f is not None and k in f.keys():
                return f.get_tensor(k)
        raise KeyError(
            f"The checkpoint in {self._folder!r} has no tensor {key!r}: is it "
            "a CLIP model?"
        )


def _vision_encoder_from_hf(config, dtype):
    CLIPVisionEncoder = require_keras_hub().models.CLIPVisionEncoder

    vision = config.get("vision_config", config)
    size = int(vision.get("image_size", 224))
    act = vision.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(
            f"Unsupported CLIP activation {act!r} in config.json (expected "
            "'quick_gelu' or 'gelu')."
        )
    encoder = CLIPVisionEncoder(
        patch_size=int(vision["patch_size"]),
        hidden_dim=int(vision["hidden_size"]),
        num_layers=int(vision["num_hidden_layers"]),
        num_heads=int(vision["num_attention_heads"]),
        intermediate_dim=int(vision["intermediate_size"]),
        intermediate_activation=act,
        image_shape=(size, size, 3),
        dtype=dtype,
    )
    projection_dim = config.get("projection_dim") or vision.get(
        "projection_dim"
    )
    return encoder, int(projection_dim)


def _assign(variable, value, key):
    value = np.asarray(value)
    if tuple(variable.shape) != value.shape:
        raise ValueError(
            f"Checkpoint tensor {key!r} has shape {value.shape}; the layer "
            f"expects {tuple(variable.shape)}."
        )
    variable.assign(
        value.astype(keras.backend.standardize_dtype(variable.dtype))
    )


def _put(tensors, variable, key, fn=None):
    value = tensors.get(key)
    _assign(variable, value if fn is None else fn(value), key)


def _put_dense(tensors, layer, key):
    _put(tensors, layer.kernel, f"{key}.weight", lambda w: w.T)
    if layer.bias is not None:
        _put(tensors, layer.bias, f"{key}.bias")


def _put_norm(tensors, layer, key):
    _put(tensors, layer.gamma, f"{key}.weight")
    _put(tensors, layer.beta, f"{key}.bias")


def _port_clip_embeddings(emb, tensors, prefix):
    """Patch, class and position embeddings (torch conv: (out, in, h, w))."""
    _put(
        tensors,
        emb.patch_embedding.kernel,
        prefix + "embeddings.patch_embedding.weight",
        lambda w: np.transpose(w, (2, 3, 1, 0)),
    )
    _put(
        tensors,
        emb.position_embedding.embeddings,
        prefix + "embeddings.position_embedding.weight",
    )
    _put(tensors, emb.class_embedding, prefix + "embeddings.class_embedding")
    # Position ids are a buffer, not saved by transformers: 0..T-1.
    emb.position_ids.assign(
        np.arange(emb.num_positions, dtype="int64")
        .reshape(1, -1)
        .astype(keras.backend.standardize_dtype(emb.position_ids.dtype))
    )


def _port_clip_block(block, tensors, key):
    """One transformer block: attention (heads split out), norms, MLP."""
    heads, width = block.num_heads, block.hidden_dim
    att = block.attention
    for name, layer in (
        ("q_proj", att.query_dense),
        ("k_proj", att.key_dense),
        ("v_proj", att.value_dense),
    ):
        _put(
            tensors,
            layer.kernel,
            f"{key}self_attn.{name}.weight",
            lambda w: w.T.reshape(width, heads, width // heads),
        )
        _put(
            tensors,
            layer.bias,
            f"{key}self_attn.{name}.bias",
            lambda b: b.reshape(heads, width // heads),
        )
    _put(
        tensors,
        att.output_dense.kernel,
        f"{key}self_attn.out_proj.weight",
        lambda w: w.T.reshape(heads, width // heads, width),
    )
    _put(tensors, att.output_dense.bias, f"{key}self_attn.out_proj.bias")
    _put_norm(tensors, block.layer_norm_1, key + "layer_norm1")
    _put_norm(tensors, block.layer_norm_2, key + "layer_norm2")
    _put_dense(tensors, block.dense_1, key + "mlp.fc1")
    _put_dense(tensors, block.dense_2, key + "mlp.fc2")


def _port_clip_vision(encoder, projection, tensors):
    """Copies a Hugging Face CLIP checkpoint's vision weights."""
    prefix = "vision_model."
    _port_clip_embeddings(encoder.embedding, tensors, prefix)
    _put_norm(tensors, encoder.pre_layer_norm, prefix + "pre_layrnorm")
    for i, block in enumerate(encoder.encoder_layers):
        _port_clip_block(block, tensors, f"{prefix}encoder.layers.{i}.")
    _put_norm(tensors, encoder.layer_norm, prefix + "post_layernorm")
    _put(tensors, projection.kernel, "visual_projection.weight", lambda w: w.T)


def _keras_hub_normalisation(folder):
    """(mean, std) from a keras-hub preset's image converter
    (`image_converter.json`, or the one inside `preprocessor.json`), else
    CLIP's."""

    conf = None
    path = os.path.join(folder, "image_converter.json")
    if os.path.isfile(path):
        conf = _read_json(path).get("config", {})
    else:
        path = os.path.join(folder, "preprocessor.json")
        if os.path.isfile(path):
            conf = _read_json(path).get("config", {}).get("image_converter")
            conf = (conf or {}).get("config", {})
    scale, offset = (conf or {}).get("scale"), (conf or {}).get("offset")
    if not (isinstance(scale, list) and isinstance(offset, list)):
        return CLIP_MEAN, CLIP_STD
    # The converter computes pixel * scale + offset on 0-255 pixels.
    std = [1.0 / (255.0 * s) for s in scale]
    mean = [-o * d for o, d in zip(offset, std)]
    return tuple(mean), tuple(std)


def clip_image_backbone(path, dtype=None):
    """CLIP's image tower from a local folder, as `gv.layers.CLIPImageFeatures`.

    Reads, with no network access, either

    - a Hugging Face `transformers` CLIP checkpoint folder (`config.json`
      with `model_type` `"clip"` or `"clip_vision_model"`, and
      `model.safetensors` or its sharded index), e.g. a snapshot of
      `openai/clip-vit-large-patch14` (GeoCLIP's backbone), fetched once,
      online, with

      ```
      hf download openai/clip-vit-large-patch14 config.json \\
          preprocessor_config.json model.safetensors --local-dir ~/clip-vit-l14
      ```

      (its `preprocessor_config.json`, when present, gives the mean and
      standard deviation; else CLIP's are used); or
    - a keras-hub preset folder of a `CLIPBackbone` (`config.json` with a
      `registered_name`, `model.weights.h5`), e.g. one written by
      `keras_hub.models.CLIPBackbone(...).save_to_preset(folder)`; the
      normalisation comes from its `CLIPImageConverter` when the folder
      has one (else CLIP's).

    The vision weights are copied into a keras-hub `CLIPVisionEncoder`
    (the text tower is not loaded); the result computes CLIP's projected
    image embedding (`CLIPModel.get_image_features`) from pixels.

    Args:
        path: the checkpoint folder.
        dtype: dtype policy of the layers (None: the global policy).

    Returns:
        A built `gv.layers.CLIPImageFeatures`.

    Example:

    ```python
    clip = gv.pretrained.clip_image_backbone("~/clip-vit-l14")
    model = gv.pretrained.geoclip_model(wheel, image_backbone=clip)
    coords, probs = model.predict_gps(["photo1.jpg", "photo2.png"])
    ```
    """

    keras_hub = require_keras_hub()
    folder = os.path.expanduser(os.fspath(path))
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"`path` must be a CLIP checkpoint folder with a config.json; "
            f"{folder!r} has none."
        )
    config = _read_json(config_path)
    if "registered_name" in config:
        clip = keras_hub.models.CLIPBackbone.from_preset(folder, dtype=dtype)
        mean, std = _keras_hub_normalisation(folder)
        layer = CLIPImageFeatures(
            clip.vision_encoder,
            int(clip.projection_dim),
            image_mean=mean,
            image_std=std,
            dtype=dtype,
        )
        layer.build((None,) + tuple(clip.vision_encoder.image_shape))
        layer.projection.set_weights(clip.vision_projection.get_weights())
        return layer
    model_type = config.get("model_type")
    if model_type not in _CLIP_MODEL_TYPES:
        raise ValueError(
            f"{config_path!r} describes a {model_type!r} model; expected a "
            f"CLIP checkpoint (model_type in {_CLIP_MODEL_TYPES}) or a "
            "keras-hub CLIPBackbone preset."
        )
    tensors = _SafetensorsFolder(folder)
    encoder, projection_dim = _vision_encoder_from_hf(config, dtype)
    mean, std = CLIP_MEAN, CLIP_STD
    processor = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(processor):
        proc = _read_json(processor)
        mean = tuple(proc.get("image_mean", mean))
        std = tuple(proc.get("image_std", std))
    layer = CLIPImageFeatures(
        encoder, projection_dim, image_mean=mean, image_std=std, dtype=dtype
    )
    layer.build((None,) + tuple(encoder.image_shape))
    _port_clip_vision(encoder, layer.projection, tensors)
    return layer
