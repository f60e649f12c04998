"""CLIP image features from a keras-hub CLIP vision encoder, pixels in.

GeoCLIP's image side is the projected image embedding of CLIP ViT-L/14
(Radford et al., 2021; what `transformers`' `CLIPModel.get_image_features`
returns) followed by its MLP head. `CLIPImageFeatures` is that projected
embedding as one Keras layer on any backend: CLIP's pixel normalisation,
the keras-hub `CLIPVisionEncoder`, the class token after the final layer
norm, and the linear visual projection. Build one from a local checkpoint
with `gv.pretrained.clip_image_backbone(path)` and hand it to
`gv.layers.ImageEncoder` (or to `gv.pretrained.geoclip_model(...,
image_backbone=...)`).
"""

import os

import keras
import numpy as np
from keras import ops

from geovario_keras.api_export import register
from geovario_keras.utils import check_int

# The normalisation CLIP was trained with (OpenAI's released preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def require_keras_hub():
    """`keras_hub`, or an ImportError that says which extra to install."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "CLIP image backbones need keras-hub (and safetensors for "
            "Hugging Face checkpoints): pip install 'geovario-keras[hub]'."
        ) from error
    return keras_hub


def _check_triple(name, value, positive=False):
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    ok = len(out) == 3 and all(np.isfinite(out))
    if ok and positive:
        ok = all(v > 0 for v in out)
    if not ok:
        kind = "positive finite" if positive else "finite"
        raise ValueError(
            f"`{name}` must be 3 {kind} numbers (one per RGB channel, on "
            f"the 0-1 scale); got {value!r}."
        )
    return out


def _to_pil(image, index):
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"images[{index}]: no file {image!r}.")
        with Image.open(image) as img:
            return img.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"images[{index}] must be an (H, W, 3) RGB array, an (H, W) "
            f"grey one, a PIL image or a file path; got shape {array.shape}."
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        finite = np.isfinite(array).all()
        if not finite or array.min() < 0 or array.max() > 255:
            raise ValueError(
                f"images[{index}] must hold pixel values in [0, 255]; got "
                f"range [{array.min()}, {array.max()}]."
            )
        array = np.round(array).astype(np.uint8)
    return Image.fromarray(array[..., :3])


def clip_preprocess(images, image_size=224):
    """CLIP's image preprocessing on the host, for images of any size.

    Each image is converted to RGB, resized (bicubic) so that its shorter
    side is `image_size` and centre-cropped to a square, as OpenAI's CLIP
    and `transformers`' `CLIPImageProcessor` do. The pixel normalisation
    (mean and standard deviation) is left to `CLIPImageFeatures`, so that
    the exported model takes plain pixels.

    Args:
        images: a list of images: `(H, W, 3)` arrays (uint8, or floats in
            [0, 255]), `(H, W)` grey arrays, PIL images or file paths.
        image_size: int. Side of the square output.

    Returns:
        float32 array `(N, image_size, image_size, 3)` of pixel values in
        [0, 255].

    Example:

    >>> photos = [np.zeros((300, 500, 3), "uint8"),
    ...           np.zeros((64, 48, 3), "uint8")]
    >>> gv.layers.clip_preprocess(photos, image_size=32).shape
    (2, 32, 32, 3)
    """
    from PIL import Image

    check_int("image_size", image_size)
    if isinstance(images, (str, os.PathLike)) or not isinstance(
        images, (list, tuple)
    ):
        raise ValueError(
            "`images` must be a list of images (arrays, PIL images or file "
            f"paths); got {type(images).__name__}. For one image, pass "
            "[image]."
        )
    out = np.empty((len(images), image_size, image_size, 3), np.float32)
    for i, image in enumerate(images):
        img = _to_pil(image, i)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(image_size * long / short)
        size = (image_size, new_long) if w <= h else (new_long, image_size)
        img = img.resize(size, Image.BICUBIC)
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
        out[i] = np.asarray(img, np.float32)
    return out


@register
class CLIPImageFeatures(keras.layers.Layer):
    """CLIP's projected image embedding, from pixels, as one Keras layer.

    `images (N, S, S, 3)` in [0, 255] -> rescaled to [0, 1] and normalised
    with `image_mean`/`image_std` -> keras-hub `CLIPVisionEncoder` (whose
    final layer norm is CLIP's post-layernorm) -> class token -> linear
    projection (no bias) to `projection_dim`. For `openai/clip-vit-large-
    patch14` that is the 768-d feature GeoCLIP's image MLP was trained on.
    Square images of another size are resized (bicubic, shorter side) and
    centre-cropped in the graph; `preprocess` does CLIP's host-side
    preprocessing (PIL bicubic) for a list of images of any sizes, and
    `GeoCLIP.encode_image` / `predict_gps` call it when given a list.

    Build it from a checkpoint folder with
    `gv.pretrained.clip_image_backbone(path)`.

    Args:
        vision_encoder: a `keras_hub.models.CLIPVisionEncoder`.
        projection_dim: int. Width of the visual projection.
        image_mean: 3 floats. Per-channel mean on the 0-1 scale (CLIP's).
        image_std: 3 floats > 0. Per-channel standard deviation (CLIP's).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        images: `(N, H, W, 3)` pixel values in [0, 255].

    Returns:
        `(N, projection_dim)` image features, not normalised.
    """

    def __init__(
        self,
        vision_encoder,
        projection_dim,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(vision_encoder, keras.Layer) or not hasattr(
            vision_encoder, "image_shape"
        ):
            raise ValueError(
                "`vision_encoder` must be a keras-hub CLIPVisionEncoder; got "
                f"{type(vision_encoder).__name__}."
            )
        check_int("projection_dim", projection_dim)
        self.vision_encoder = vision_encoder
        self.projection_dim = projection_dim
        self.image_mean = _check_triple("image_mean", image_mean)
        self.image_std = _check_triple("image_std", image_std, positive=True)
        self.projection = keras.layers.Dense(
            projection_dim,
            use_bias=False,
            dtype=self.dtype_policy,
            name="visual_projection",
        )

    @property
    def image_size(self):
        """Side of the square images the vision encoder takes."""
        return int(self.vision_encoder.image_shape[0])

    def preprocess(self, images):
        """`clip_preprocess(images, self.image_size)`."""
        return clip_preprocess(images, self.image_size)

    def set_trainable_blocks(self, blocks):
        """Freezes all but the last `blocks` transformer blocks.

        `blocks=0` freezes the whole backbone; `blocks=None` makes all of
        it trainable; otherwise the patch and position embeddings, the
        first layer norm and the first `num_layers - blocks` blocks are
        frozen, and the last `blocks` blocks, the final layer norm and the
        projection are trainable. Takes effect on the next `compile`; the
        enclosing `ImageEncoder` must have `trainable_backbone=True`.
        """
        encoder = self.vision_encoder
        n = len(encoder.encoder_layers)
        if blocks is not None:
            check_int("blocks", blocks, 0)
            if blocks > n:
                raise ValueError(
                    f"`blocks` must be in [0, {n}] (the encoder's number "
                    f"of blocks) or None; got {blocks}."
                )
        self.trainable = blocks != 0
        if blocks is None or blocks == 0:
            return
        for layer in (encoder.embedding, encoder.pre_layer_norm):
            layer.trainable = False
        for i, block in enumerate(encoder.encoder_layers):
            block.trainable = i >= n - blocks

    def build(self, input_shape):
        size = self.image_size
        if not self.vision_encoder.built:
            self.vision_encoder.build((None, size, size, 3))
        width = int(self.vision_encoder.embedding.hidden_dim)
        self.projection.build((None, width))

    def _resize(self, x):
        """Bicubic resize of the shorter side to the encoder's size, then a
        centre crop (static shapes only)."""
        size = self.image_size
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None:
            raise ValueError(
                "CLIPImageFeatures needs images of a known size; got shape "
                f"{tuple(x.shape)}. Use `clip_preprocess` on the host."
            )
        if (h, w) == (size, size):
            return x
        scale = size / min(h, w)
        new = (max(size, int(h * scale)), max(size, int(w * scale)))
        x = ops.image.resize(x, new, interpolation="bicubic", antialias=True)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        return x[:, top : top + size, left : left + size, :]

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if len(x.shape) != 4 or x.shape[-1] != 3:
            raise ValueError(
                "CLIPImageFeatures expects images of shape (N, H, W, 3); got "
                f"{tuple(x.shape)}."
            )
        x = self._resize(x)
        mean = ops.convert_to_tensor(self.image_mean, self.compute_dtype)
        std = ops.convert_to_tensor(self.image_std, self.compute_dtype)
        x = (x / 255.0 - mean) / std
        tokens = self.vision_encoder({"images": x})
        return self.projection(tokens[:, 0, :])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.projection_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vision_encoder": keras.saving.serialize_keras_object(
                    self.vision_encoder
                ),
                "projection_dim": self.projection_dim,
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        require_keras_hub()  # registers CLIPVisionEncoder

        config = dict(config)
        config["vision_encoder"] = keras.saving.deserialize_keras_object(
            config["vision_encoder"]
        )
        return cls(**config)
