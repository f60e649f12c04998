"""Shared test helpers, in the spirit of keras-hub's `TestCase`."""

import json

import keras
import numpy as np
import pytest

import geovario_keras as gv


def backend():
    return keras.backend.backend()


def slow_on(*names):
    """`pytest.mark.slow` on the backends `names`, a plain test elsewhere.

    For a test whose path the default suite covers on the other backends
    (or whose pieces it covers on every backend) but which takes minutes
    on these; `make test-slow` runs it everywhere.
    """
    if backend() in names:
        return pytest.mark.slow
    # A mark that changes nothing (usable as a decorator and in `marks=`).
    return pytest.mark.skipif(False, reason="default suite on this backend")


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _json_round_trip(obj):
    """Serialises `obj` to JSON text and back, through the registry."""
    text = json.dumps(keras.saving.serialize_keras_object(obj))
    return keras.saving.deserialize_keras_object(json.loads(text))


def _as_args(input_data):
    return tuple(input_data) if isinstance(input_data, tuple) else (input_data,)


def _count_weights(layer, expected_trainable, expected_non_trainable):
    if expected_trainable is not None:
        assert len(layer.trainable_weights) == expected_trainable, [
            w.path for w in layer.trainable_weights
        ]
    if expected_non_trainable is not None:
        assert len(layer.non_trainable_weights) == expected_non_trainable, [
            w.path for w in layer.non_trainable_weights
        ]


def _run_fit_step(layer_cls, init_kwargs, args, output_shape):
    """One `fit` step of a functional model around a fresh layer."""
    inputs = [keras.Input(shape=a.shape[1:], dtype=a.dtype) for a in args]
    layer = layer_cls(**init_kwargs)
    outputs = layer(*inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(w) for w in layer.trainable_weights]
    target = np.ones(output_shape, "float32")
    history = model.fit(
        list(args) if len(args) > 1 else args[0],
        target,
        batch_size=len(args[0]),
        epochs=1,
        verbose=0,
    ).history
    assert np.isfinite(history["loss"][0])
    after = [to_numpy(w) for w in layer.trainable_weights]
    if before:
        assert any(np.any(a != b) for a, b in zip(after, before)), (
            "one fit step changed no trainable weight"
        )


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=None,
    run_training_check=True,
    check_mixed_precision=True,
    mixed_precision_atol=None,
):
    """The contract every layer keeps, in the spirit of keras-hub's.

    Symbolic and eager calls (shape, finite values), the number of
    trainable and non-trainable weights, a JSON config round trip (the
    revived layer, given the same weights, gives the same outputs), one
    `fit` step of a functional model around the layer (finite loss, the
    trainable weights move) and, under `mixed_bfloat16` and
    `mixed_float16`, the output dtype, float32 weights and the error
    against float32 (`mixed_precision_atol`, if given). `input_data` is an
    array, or a tuple of arrays for a layer with several inputs.
    """
    args = _as_args(input_data)
    layer = layer_cls(**init_kwargs)
    sym = layer(*(keras.KerasTensor((None,) + a.shape[1:]) for a in args))
    # Symbolic dimensions are checked where they are known.
    for got, want in zip(sym.shape[1:], expected_output_shape[1:]):
        assert got in (None, want), (sym.shape, expected_output_shape)
    assert len(sym.shape) == len(expected_output_shape)
    out = to_numpy(layer(*args))
    assert out.shape == tuple(expected_output_shape)
    assert np.all(np.isfinite(out))
    _count_weights(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
    )
    revived = _json_round_trip(layer)
    assert revived.get_config() == layer.get_config()
    revived(*args)
    revived.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(revived(*args)), out, atol=1e-6)
    if run_training_check:
        _run_fit_step(layer_cls, init_kwargs, args, out.shape)
    if check_mixed_precision:
        for policy in ("mixed_bfloat16", "mixed_float16"):
            _check_policy(
                layer,
                layer_cls,
                init_kwargs,
                args,
                out,
                policy,
                mixed_precision_atol,
            )
    return layer, out


def _check_policy(layer, layer_cls, init_kwargs, args, out, policy, atol):
    mp = layer_cls(**init_kwargs, dtype=policy)
    mp(*args)
    mp.set_weights(layer.get_weights())
    y = mp(*args)
    assert keras.backend.standardize_dtype(y.dtype) == policy[6:]
    for w in mp.weights:
        assert keras.backend.standardize_dtype(w.dtype) in (
            "float32",
            "int32",
        ), (policy, w.path, w.dtype)
    if atol is not None:
        err = np.abs(to_numpy(keras.ops.cast(y, "float32")) - out)
        assert err.max() <= atol[policy], (policy, err.max())


def run_state_layer_test(
    layer,
    expected_num_trainable_weights=0,
    expected_num_non_trainable_weights=None,
):
    """The contract of a layer that holds state (queue, gallery, ...).

    Weight counts, a JSON config round trip, and the state moved into the
    revived layer with `get_weights` / `set_weights` unchanged. The state
    must be written (e.g. with `enqueue`) before the call.
    """
    _count_weights(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
    )
    revived = _json_round_trip(layer)
    assert type(revived) is type(layer)
    assert revived.get_config() == layer.get_config()
    revived.set_weights(layer.get_weights())
    for a, b in zip(revived.get_weights(), layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    return revived


def run_loss_test(loss, y_true, y_pred, expected=None, fit_model=None):
    """The contract of a loss: value, JSON config, one `fit` step.

    The value is finite (and equals `expected`, if given); the loss revived
    from its JSON config gives the same value; and, if `fit_model` (a
    GeoCLIP factory) is given, one `fit` step of that model compiled with
    the loss gives a finite loss and moves the trainable weights.
    """
    value = float(to_numpy(loss(y_true, y_pred)))
    assert np.isfinite(value)
    if expected is not None:
        np.testing.assert_allclose(value, expected, rtol=1e-5)
    revived = _json_round_trip(loss)
    assert type(revived) is type(loss)
    assert revived.get_config() == loss.get_config()
    np.testing.assert_allclose(
        float(to_numpy(revived(y_true, y_pred))), value, rtol=1e-6
    )
    if fit_model is not None:
        _fit_one_step(fit_model(), loss)
    return value


def run_metric_test(metric, y_true, y_pred, expected, fit_model=None):
    """The contract of a metric: result, JSON config, one `fit` step.

    `update_state(y_true, y_pred)` gives `expected`; the metric revived
    from its JSON config gives the same result; and, if `fit_model` is
    given, the metric compiled into that model is logged by one `fit` step.
    """
    metric.update_state(y_true, y_pred)
    np.testing.assert_allclose(
        float(to_numpy(metric.result())), expected, rtol=1e-5
    )
    revived = _json_round_trip(metric)
    assert revived.get_config() == metric.get_config()
    revived.update_state(y_true, y_pred)
    np.testing.assert_allclose(
        float(to_numpy(revived.result())), expected, rtol=1e-5
    )
    if fit_model is not None:
        history = _fit_one_step(
            fit_model(), gv.losses.GeoContrastiveLoss(), metrics=[revived]
        )
        assert np.isfinite(history[revived.name][0])


def _fit_one_step(model, loss, metrics=None):
    gps = random_gps(32, seed=7, max_lat=70.0)
    x = toy_features(gps)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2), loss=loss, metrics=metrics
    )
    model(x[:1])
    before = [to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, gps, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    after = [to_numpy(w) for w in model.trainable_weights]
    assert any(np.any(a != b) for a, b in zip(after, before))
    return history


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


def smooth_features(rows, dim=16, seed=0):
    """`rows` coordinates within 60 degrees of the equator and `dim`-d
    features that vary smoothly with them, plus noise (float32): the data
    of the data-parallel tests."""
    rng = np.random.default_rng(seed)
    gps = rng.uniform([-60, -180], [60, 180], (rows, 2)).astype("float32")
    lat, lon = np.radians(gps).T
    xyz = np.stack(
        [np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)],
        1,
    )
    smooth = np.sin(4 * xyz @ rng.normal(size=(3, dim)))
    features = smooth + 0.3 * rng.normal(size=(rows, dim))
    return features.astype("float32"), gps


def parallel_geoclip(method):
    """The compiled model of the data-parallel tests and its callbacks.

    `method`: "geoclip" (plain loss), "semivariogram" (with the callback)
    or "noisy" (plain loss with the paper's GPS noise, 150 m on the batch
    and 1 km on the queue, which every replica must draw alike). Seeded:
    the same initial weights in every process and replica.
    """
    keras.utils.set_random_seed(0)
    model = gv.GeoCLIP(
        gv.layers.ImageEncoder(None, embed_dim=32, hidden_units=64),
        gv.layers.LocationEncoder(
            num_features=32,
            hidden_units=64,
            hidden_layers=2,
            embed_dim=32,
            seed=0,
        ),
        queue_size=512,
        gps_noise_m=(150.0, 1000.0) if method == "noisy" else (0.0, 0.0),
        seed=0,
    )
    if method in ("geoclip", "noisy"):
        loss, callbacks = gv.losses.GeoContrastiveLoss(), []
    else:
        loss = gv.losses.SemivariogramContrastiveLoss()
        callbacks = [gv.callbacks.SemivariogramCallback(verbose=0)]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    return model, callbacks
