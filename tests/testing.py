"""Shared test helpers, in the spirit of keras-hub's `TestCase`."""

import keras
import numpy as np

import geovario_keras as gv


def backend():
    return keras.backend.backend()


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    check_mixed_precision=True,
    mixed_precision_atol=None,
):
    """Build, symbolic and eager call, config round trip, mixed precision.

    The config round trip copies the weights into the re-created layer and
    checks the outputs are equal; mixed precision checks the output dtype and
    its error against float32 (`mixed_precision_atol`, if given).
    """
    layer = layer_cls(**init_kwargs)
    # Symbolic call.
    sym = layer(keras.KerasTensor((None,) + input_data.shape[1:]))
    assert tuple(sym.shape[1:]) == tuple(expected_output_shape[1:])
    # Eager call.
    out = to_numpy(layer(input_data))
    assert out.shape == tuple(expected_output_shape)
    assert np.all(np.isfinite(out))
    # Config round trip (serialization through the registry too).
    config = layer.get_config()
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert revived.get_config() == config
    revived(input_data)
    revived.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(revived(input_data)), out, atol=1e-6)
    if check_mixed_precision:
        for policy in ("mixed_bfloat16", "mixed_float16"):
            mp = layer_cls(**init_kwargs, dtype=policy)
            mp(input_data)
            mp.set_weights(layer.get_weights())
            y = mp(input_data)
            assert keras.backend.standardize_dtype(y.dtype) == policy[6:]
            for w in mp.weights:
                assert keras.backend.standardize_dtype(w.dtype) in (
                    "float32",
                    "int32",
                ), (policy, w.path, w.dtype)
            if mixed_precision_atol is not None:
                err = np.abs(to_numpy(keras.ops.cast(y, "float32")) - out)
                assert err.max() <= mixed_precision_atol[policy], (
                    policy,
                    err.max(),
                )
    return layer, out


def random_gps(n, seed=0, max_lat=90.0):
    rng = np.random.default_rng(seed)
    # Uniform on the sphere.
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n))) * max_lat / 90.0
    lon = rng.uniform(-180.0, 180.0, n)
    return np.stack([lat, lon], axis=1).astype("float32")


def small_geoclip(feature_dim=None, queue_size=64, embed_dim=32, seed=0, **kw):
    """A small GeoCLIP on precomputed features, fast on 2 CPU cores."""
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            backbone=None, embed_dim=embed_dim, hidden_units=64
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            num_features=32,
            hidden_units=64,
            hidden_layers=2,
            embed_dim=embed_dim,
            seed=seed,
        ),
        queue_size=queue_size,
        seed=seed,
        **kw,
    )


def toy_features(gps, dim=16, seed=0):
    """Image 'features' that are a smooth function of location, plus noise.

    A learnable toy: unit-sphere coordinates of each point (so nearby
    points have nearby features) followed by random distractor values.
    """
    rng = np.random.default_rng(seed)
    lat, lon = np.radians(gps[:, 0]), np.radians(gps[:, 1])
    xyz = np.stack(
        [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1
    )
    noise = rng.normal(size=(len(gps), dim - 3)) * 0.1
    return np.concatenate([xyz * 3.0, noise], 1).astype("float32")
