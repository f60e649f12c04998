"""CLIP image features: geovario-keras (keras-hub) beside transformers.

In one process: a random CLIP of a real size (`--size b32`: ViT-B/32,
`l14`: ViT-L/14, GeoCLIP's backbone; the weights do not change the cost)
is written by `transformers` (`CLIPModel.save_pretrained`), read back by
`gv.pretrained.clip_image_backbone`, and both compute the projected image
features of the same `--batch` images, taking turns, `--repeats` times:

- **ours**: `inference.embed` over `gv.layers.CLIPImageFeatures` (what
  `GeoCLIP.encode_image` runs: one compiled function) on the backend
  named by `KERAS_BACKEND`;
- **transformers**: `CLIPModel.get_image_features` under
  `torch.inference_mode()` (eager PyTorch, as users run it).

Prints images per second (median; the first call, compilation included,
timed apart), their ratio, and the largest difference of the normalised
features (the converter's accuracy at full size).

Run: `KERAS_BACKEND=jax python benchmarks/clip_backbone.py --size b32`.
"""

import argparse
import os
import tempfile
import time

import harness
import keras
import numpy as np

import geovario_keras as gv
from geovario_keras import inference

SIZES = {
    # hidden, layers, heads, mlp, patch, projection
    "b32": (768, 12, 12, 3072, 32, 512),
    "l14": (1024, 24, 16, 4096, 14, 768),
}


def write_checkpoint(folder, size):
    import torch
    import transformers

    hidden, layers, heads, mlp, patch, proj = SIZES[size]
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=99,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=224,
            patch_size=patch,
        ),
        projection_dim=proj,
    )
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="b32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as folder:
        reference = write_checkpoint(folder, args.size)
        start = time.perf_counter()
        layer = gv.pretrained.clip_image_backbone(folder)
        load_s = time.perf_counter() - start
    dim = layer.projection_dim
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (args.batch, 224, 224, 3)).astype("float32")
    mean, std = np.array(layer.image_mean), np.array(layer.image_std)
    pixel_values = torch.from_numpy(
        ((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype("float32")
    )

    def ours():
        return inference.embed(layer, pixels, dim, args.batch)

    def theirs():
        with torch.inference_mode():
            out = reference.get_image_features(pixel_values=pixel_values)
        return getattr(out, "pooler_output", out).numpy()

    # Warm-ups (compilation) apart, then the two take turns.
    median, warm = harness.taking_turns(
        {"ours": ours, "transformers": theirs}, args.repeats
    )
    a = ours()
    b = theirs()
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    rate = {k: args.batch / v for k, v in median.items()}
    result = {
        "benchmark": "clip_backbone",
        "size": args.size,
        "backend": keras.backend.backend(),
        "batch": args.batch,
        "images_per_s": rate,
        "ratio_ours_over_transformers": rate["ours"] / rate["transformers"],
        "first_call_s": warm,
        "load_s": load_s,
        "max_abs_diff_normalised": float(np.abs(a - b).max()),
        "torch_threads": torch.get_num_threads(),
        "machine": harness.machine(),
    }
    print(
        f"{args.size} on {result['backend']}: ours "
        f"{rate['ours']:.2f} img/s, transformers "
        f"{rate['transformers']:.2f} img/s, ratio "
        f"{result['ratio_ours_over_transformers']:.2f}; first call "
        f"{warm['ours']:.1f} s / {warm['transformers']:.1f} s; load "
        f"{load_s:.1f} s; max |diff| {result['max_abs_diff_normalised']:.1e}"
    )
    harness.emit(result, args.json)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
