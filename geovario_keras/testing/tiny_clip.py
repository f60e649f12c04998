"""A tiny random CLIP checkpoint in the Hugging Face layout, for tests.

Written by `transformers` itself (`CLIPModel(config).save_pretrained`), so
that `gv.pretrained.clip_image_backbone` is checked against an independent
implementation of the same weights. Test and recipe-test only: needs
`transformers` and torch.
"""

import json
import os

# The normalisation written to preprocessor_config.json.
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def write_tiny_clip(
    folder,
    projection_dim=24,
    image_size=32,
    patch_size=8,
    hidden_size=32,
    layers=2,
    heads=4,
    hidden_act="quick_gelu",
    vision_only=False,
    seed=0,
):
    """Writes a random CLIP (`config.json`, `model.safetensors`,
    `preprocessor_config.json`) to `folder`; returns the torch model (eval
    mode). `vision_only=True` writes a `CLIPVisionModelWithProjection`
    (model_type `clip_vision_model`) instead of a whole `CLIPModel`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    vision = dict(
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2 + 5,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act=hidden_act,
    )
    if vision_only:
        config = transformers.CLIPVisionConfig(
            projection_dim=projection_dim, **vision
        )
        model = transformers.CLIPVisionModelWithProjection(config)
    else:
        config = transformers.CLIPConfig(
            text_config=dict(
                vocab_size=99,
                hidden_size=hidden_size,
                intermediate_size=37,
                num_hidden_layers=1,
                num_attention_heads=heads,
                max_position_embeddings=16,
            ),
            vision_config=vision,
            projection_dim=projection_dim,
        )
        model = transformers.CLIPModel(config)
    # Random (not zero) embeddings everywhere, so no weight can be missed.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    # The image processor's file, as transformers writes it for CLIP (only
    # the normalisation is read back; not CLIP's, so that is checked too).
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(
            {
                "image_processor_type": "CLIPImageProcessor",
                "image_mean": list(MEAN),
                "image_std": list(STD),
                "size": {"shortest_edge": image_size},
                "crop_size": {"height": image_size, "width": image_size},
                "resample": 3,
            },
            f,
        )
    return model


def image_features(model, pixel_values):
    """The checkpoint's projected image features for NCHW `pixel_values`
    (already normalised), as numpy."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(pixel_values)
        if hasattr(model, "get_image_features"):
            out = model.get_image_features(pixel_values=x)
            out = getattr(out, "pooler_output", out)
        else:  # CLIPVisionModelWithProjection
            out = model(pixel_values=x).image_embeds
    return out.numpy()
