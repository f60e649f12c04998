"""CLIP image backbones from local files: photos in, coordinates out.

References: `transformers` (`CLIPModel` / `CLIPVisionModelWithProjection`
run on the same random checkpoint, written by transformers itself, and its
`CLIPImageProcessor` for the preprocessing), keras-hub's own
`CLIPBackbone.get_vision_embeddings` for its preset layout, and
`gv.pretrained.geoclip_model` on the transformers features for the released
GeoCLIP head.
"""

import os

import keras
import numpy as np
import pytest

import geovario_keras as gv

transformers = pytest.importorskip("transformers")
keras_hub = pytest.importorskip("keras_hub")

from geovario_keras.testing import tiny_clip  # noqa: E402


def _pixel_values(pixels, mean=tiny_clip.MEAN, std=tiny_clip.STD):
    """NHWC pixels in [0, 255] -> normalised NCHW, as transformers takes."""
    x = (pixels / 255.0 - np.array(mean)) / np.array(std)
    return x.transpose(0, 3, 1, 2).astype("float32")


def _pixels(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("clip") / "hf")
    return folder, tiny_clip.write_tiny_clip(folder)


@pytest.fixture(scope="module")
def geoclip_checkpoint(tmp_path_factory):
    """Projection to 768, as CLIP ViT-L/14 (GeoCLIP's head takes 768)."""
    folder = str(tmp_path_factory.mktemp("clip768") / "hf")
    model = tiny_clip.write_tiny_clip(folder, projection_dim=768, seed=1)
    return folder, model


@pytest.mark.parametrize("vision_only", [False, True])
def test_features_match_transformers(tmp_path, checkpoint, vision_only):
    if vision_only:  # CLIPVisionModelWithProjection, exact GELU
        folder = str(tmp_path / "vision")
        reference = tiny_clip.write_tiny_clip(
            folder, vision_only=True, hidden_act="gelu", layers=3, seed=2
        )
    else:
        folder, reference = checkpoint
    layer = gv.pretrained.clip_image_backbone(folder)
    assert layer.image_mean == pytest.approx(tiny_clip.MEAN)
    assert layer.image_std == pytest.approx(tiny_clip.STD)
    pixels = _pixels(4, 32)
    want = tiny_clip.image_features(reference, _pixel_values(pixels))
    got = keras.ops.convert_to_numpy(layer(pixels))
    assert got.shape == want.shape == (4, 24)
    assert np.abs(want).max() > 0.1  # not a trivially small output
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_preprocessing_matches_transformers():
    try:
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil as Processor,
        )
    except ImportError:  # transformers < 5: the PIL processor by default
        from transformers import CLIPImageProcessor as Processor
    rng = np.random.default_rng(0)
    sizes = [(300, 500), (64, 48), (224, 224), (225, 1000), (31, 40)]
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in sizes]
    for size in (32, 224):
        processor = Processor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
        )
        want = processor(images=images, return_tensors="np")["pixel_values"]
        got = gv.layers.clip_preprocess(images, size)
        got = _pixel_values(
            got, gv.layers.clip_image.CLIP_MEAN, gv.layers.clip_image.CLIP_STD
        )
        np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=0)


def test_preprocessing_accepts_files_pil_and_grey(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (50, 30), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    got = gv.layers.clip_preprocess(
        [str(tmp_path / "a.png"), Image.fromarray(rgb), grey, rgb / 1.0], 16
    )
    want = gv.layers.clip_preprocess([rgb], 16)[0]
    for i in (0, 1, 3):
        np.testing.assert_array_equal(got[i], want)
    np.testing.assert_array_equal(got[2][..., 0], got[2][..., 2])


def test_in_graph_resize_matches_host_preprocessing(checkpoint):
    layer = gv.pretrained.clip_image_backbone(checkpoint[0])
    # A smooth image: bicubic kernels (PIL's, the backend's) agree closely.
    yy, xx = np.mgrid[0:48, 0:80].astype("float32")
    image = np.stack([xx * 3, yy * 5, 128 + 60 * np.sin(xx / 9)], -1)
    host = gv.layers.clip_preprocess([image], 32)
    graph = keras.ops.convert_to_numpy(layer._resize(image[None]))
    assert graph.shape == host.shape == (1, 32, 32, 3)
    # Borders differ by the kernels' edge handling; compare the interior.
    np.testing.assert_allclose(
        graph[:, 2:-2, 2:-2], host[:, 2:-2, 2:-2], atol=1.5
    )


def test_keras_hub_preset_folder(tmp_path):
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8,
        hidden_dim=32,
        num_layers=2,
        num_heads=4,
        intermediate_dim=40,
        image_shape=(32, 32, 3),
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=50,
        embedding_dim=32,
        hidden_dim=32,
        num_layers=1,
        num_heads=4,
        intermediate_dim=40,
        max_sequence_length=8,
    )
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=16)
    folder = str(tmp_path / "kh")
    backbone.save_to_preset(folder)
    layer = gv.pretrained.clip_image_backbone(folder)
    assert layer.image_mean == gv.layers.clip_image.CLIP_MEAN
    # The preset's image converter, when there is one, gives the
    # normalisation (keras-hub computes pixels * scale + offset).
    mean, std = np.array(tiny_clip.MEAN), np.array(tiny_clip.STD)
    keras_hub.layers.CLIPImageConverter(
        image_size=(32, 32),
        scale=list(1 / (255 * std)),
        offset=list(-mean / std),
    ).save_to_preset(folder)
    layer = gv.pretrained.clip_image_backbone(folder)
    assert layer.image_mean == pytest.approx(tiny_clip.MEAN)
    assert layer.image_std == pytest.approx(tiny_clip.STD)
    pixels = _pixels(3, 32, seed=3)
    normalised = (pixels / 255.0 - np.array(mean)) / np.array(std)
    want = backbone.get_vision_embeddings(normalised.astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(pixels)),
        keras.ops.convert_to_numpy(want),
        atol=1e-5,
    )


def test_geoclip_on_photos(geoclip_wheel, geoclip_checkpoint, tmp_path):
    from PIL import Image

    folder, reference = geoclip_checkpoint
    clip = gv.pretrained.clip_image_backbone(folder)
    model = gv.pretrained.geoclip_model(
        geoclip_wheel, gallery=False, image_backbone=clip
    )
    gallery = np.array(
        [[48.86, 2.35], [40.71, -74.0], [-33.87, 151.2], [35.68, 139.7]],
        "float32",
    )
    model.set_gallery(gallery, verbose=0)
    rng = np.random.default_rng(4)
    photos = [
        rng.integers(0, 256, s, dtype=np.uint8)
        for s in [(40, 70, 3), (32, 32, 3), (90, 45, 3)]
    ]
    paths = []
    for i, photo in enumerate(photos):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(photo).save(paths[-1])

    # The released head on transformers' features of the same pixels.
    pixels = gv.layers.clip_preprocess(photos, 32)
    features = tiny_clip.image_features(reference, _pixel_values(pixels))
    on_features = gv.pretrained.geoclip_model(geoclip_wheel, gallery=False)
    want = on_features.encode_image(features)
    np.testing.assert_allclose(model.encode_image(paths), want, atol=1e-4)

    # Long lists are preprocessed a chunk (256) at a time: same result.
    many = model.encode_image(paths * 90)
    np.testing.assert_allclose(many, np.tile(want, (90, 1)), atol=1e-4)
    with pytest.raises(ValueError, match="empty list"):
        model.encode_image([])

    coords, probs = model.predict_gps(paths, top_k=2)
    coords2, probs2 = model.predict_gps(photos, top_k=2)
    np.testing.assert_array_equal(coords, coords2)
    np.testing.assert_allclose(probs, probs2, atol=1e-6)
    assert coords.shape == (3, 2, 2)

    # A .keras file keeps the backbone (config and weights).
    path = str(tmp_path / "photo_geoclip.keras")
    model.save(path)
    loaded = gv.load_model(path)
    np.testing.assert_allclose(
        loaded.encode_image(paths), model.encode_image(paths), atol=1e-6
    )
    # So does a preset, predictions included.
    preset = gv.GeoCLIP.from_preset(model.save_to_preset(tmp_path / "p"))
    got = preset.predict_gps(paths, top_k=2)
    np.testing.assert_array_equal(got[0], coords)
    np.testing.assert_allclose(got[1], probs, atol=1e-6)


def test_partly_frozen_backbone_trains_only_its_last_blocks(checkpoint):
    layer = gv.pretrained.clip_image_backbone(checkpoint[0])
    encoder = gv.layers.ImageEncoder(
        layer, embed_dim=8, hidden_units=16, trainable_backbone=True
    )
    model = gv.GeoCLIP(
        encoder,
        gv.layers.MLPLocationEncoder(hidden_units=16, embed_dim=8),
        queue_size=8,
        seed=0,
    )
    model(_pixels(1, 32))
    layer.set_trainable_blocks(1)
    last = layer.vision_encoder.encoder_layers[-1]
    first = layer.vision_encoder.encoder_layers[0]
    before = {id(v): keras.ops.convert_to_numpy(v) for v in layer.weights}
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    gps = np.array([[10, 20], [-30, 40], [50, -60], [0, 100]], "float32")
    model.fit(_pixels(4, 32, seed=5), gps, batch_size=4, verbose=0)
    changed = {
        id(v)
        for v in layer.weights
        if not np.array_equal(before[id(v)], keras.ops.convert_to_numpy(v))
    }
    assert {id(v) for v in last.trainable_weights} <= changed
    assert {id(v) for v in layer.projection.weights} <= changed
    assert not changed & {id(v) for v in first.weights}
    assert not changed & {id(v) for v in layer.vision_encoder.embedding.weights}

    layer.set_trainable_blocks(0)
    assert layer.trainable_weights == []
    with pytest.raises(ValueError, match="`blocks` must be in \\[0, 2\\]"):
        layer.set_trainable_blocks(3)


def test_bad_inputs_raise_clear_errors(tmp_path, checkpoint, geoclip_wheel):
    with pytest.raises(FileNotFoundError, match="config.json"):
        gv.pretrained.clip_image_backbone(tmp_path)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="expected a CLIP checkpoint"):
        gv.pretrained.clip_image_backbone(tmp_path / "bert")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(
        open(os.path.join(checkpoint[0], "config.json")).read()
    )
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        gv.pretrained.clip_image_backbone(tmp_path / "empty")

    layer = gv.pretrained.clip_image_backbone(checkpoint[0])
    with pytest.raises(ValueError, match="projects to 24"):
        gv.pretrained.geoclip_model(
            geoclip_wheel, gallery=False, image_backbone=layer
        )
    with pytest.raises(ValueError, match="`image_backbone` must be"):
        gv.pretrained.geoclip_model(
            geoclip_wheel, gallery=False, image_backbone=keras.layers.Dense(3)
        )
    with pytest.raises(ValueError, match="list of images"):
        gv.layers.clip_preprocess(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"images\[1\] must hold pixel"):
        gv.layers.clip_preprocess(
            [np.zeros((8, 8, 3)), np.full((8, 8, 3), 300.0)]
        )
    with pytest.raises(ValueError, match=r"images\[0\] must be an \(H, W, 3\)"):
        gv.layers.clip_preprocess([np.zeros((8, 8, 5))])
    with pytest.raises(FileNotFoundError, match=r"images\[0\]: no file"):
        gv.layers.clip_preprocess([str(tmp_path / "missing.jpg")])
    with pytest.raises(ValueError, match="`image_std` must be 3 positive"):
        gv.layers.CLIPImageFeatures(
            layer.vision_encoder, 8, image_std=(0.2, 0.0, 0.2)
        )
    with pytest.raises(ValueError, match="`vision_encoder` must be"):
        gv.layers.CLIPImageFeatures(keras.layers.Dense(3), 8)


def test_missing_keras_hub_names_the_extra(checkpoint, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import fails
    with pytest.raises(ImportError, match=r"geovario-keras\[hub\]"):
        gv.pretrained.clip_image_backbone(checkpoint[0])


def test_config_round_trip(checkpoint):
    layer = gv.pretrained.clip_image_backbone(checkpoint[0])
    config = layer.get_config()
    clone = gv.layers.CLIPImageFeatures.from_config(config)
    assert clone.get_config() == config
    clone.build((None, 32, 32, 3))
    clone.set_weights(layer.get_weights())
    pixels = _pixels(2, 32, seed=6)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(pixels)),
        keras.ops.convert_to_numpy(layer(pixels)),
    )
