import math
import os
import subprocess
import sys
from unittest import mock

import keras
import numpy as np
import pytest

import geovario_keras as gv
from tests.testing import backend
from tests.testing import random_gps
from tests.testing import small_geoclip
from tests.testing import to_numpy
from tests.testing import toy_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@keras.saving.register_keras_serializable(package="geovario_keras_tests")
class Identity(keras.layers.Layer):
    """Image encoder that passes features through: `embed_dim` = width."""

    def __init__(self, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim = embed_dim

    def call(self, x):
        return x

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim}


def _data(n=384, seed=0):
    gps = random_gps(n, seed=seed, max_lat=70.0)
    return toy_features(gps, seed=seed), gps


def test_fit_learns_a_learnable_toy():
    x, gps = _data(512)
    model = small_geoclip(queue_size=128)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=gv.losses.GeoContrastiveLoss(),
        metrics=[gv.metrics.GeoAccuracy(2500.0)],
    )
    hist = model.fit(x, gps, batch_size=64, epochs=6, verbose=0).history
    assert np.all(np.isfinite(hist["loss"]))
    # Chance level of in-batch retrieval within 2500 km is ~5 %.
    assert hist["loss"][-1] < hist["loss"][0] - 0.5
    assert hist["acc_2500km"][-1] > 0.5
    assert hist["retrieval_km"][-1] < 0.5 * hist["retrieval_km"][0]
    model.set_gallery(gps, verbose=0)
    coords, probs = model.predict_gps(x, top_k=3)
    report = gv.metrics.geolocation_report(coords[:, 0], gps)
    assert report["acc_2500km"] > 50.0


def test_queue_holds_last_clean_training_gps():
    x, gps = _data(96)
    model = small_geoclip(queue_size=40)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=32, epochs=1, shuffle=False, verbose=0)
    # 96 points in batches of 32 through a 40-slot queue: it holds the last
    # 40 points (noise is applied to copies, never to stored values).
    q = to_numpy(model.queue.coords)
    assert int(to_numpy(model.queue.count)) == 40
    stored = {tuple(np.round(r, 4)) for r in q}
    assert stored == {tuple(np.round(r, 4)) for r in gps[-40:]}
    # Features aligned with coordinates: the stored feature of a point is
    # its image embedding at the time it was enqueued.
    emb = model.predict(x[-8:], verbose=0)
    last = {tuple(np.round(r, 4)): i for i, r in enumerate(q)}
    feats = to_numpy(model.queue.features)
    rows = [last[tuple(np.round(r, 4))] for r in gps[-8:]]
    # The last batch was enqueued with the weights before its update step.
    cos = np.sum(feats[rows] * emb, axis=1)
    assert np.all(cos > 0.9)


def test_empty_queue_slots_do_not_change_the_loss():
    x, gps = _data(16)
    with_queue = small_geoclip(queue_size=64, gps_noise_m=(0.0, 0.0))
    without = small_geoclip(queue_size=0, gps_noise_m=(0.0, 0.0))
    for m in (with_queue, without):
        m.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
        m(x[:1])
    without.image_encoder.set_weights(with_queue.image_encoder.get_weights())
    without.location_encoder.set_weights(
        with_queue.location_encoder.get_weights()
    )
    a = with_queue.evaluate(x, gps, batch_size=16, verbose=0, return_dict=True)
    b = without.evaluate(x, gps, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


def test_loss_matches_hand_computation_of_geoclip_forward():
    x, gps = _data(8)
    model = small_geoclip(queue_size=4, gps_noise_m=(0.0, 0.0))
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model(x[:1])
    qgps = random_gps(4, seed=9)
    model.queue.enqueue(qgps[:3], np.zeros((3, 32), "float32"))  # 1 empty
    img = model.predict(x, verbose=0)
    loc = model.encode_location(np.concatenate([gps, qgps[:3]]))
    scale = math.exp(math.log(1 / 0.07))
    logits = scale * img.astype("float64") @ loc.T.astype("float64")
    ce = np.log(np.exp(logits).sum(1)) - np.diag(logits[:, :8])
    got = model.evaluate(x, gps, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(got["loss"], ce.mean(), rtol=1e-4)


def test_predict_gps_returns_the_exact_gallery_point():
    loc = gv.layers.LocationEncoder(
        num_features=32, hidden_units=64, hidden_layers=2, embed_dim=32, seed=0
    )
    model = gv.GeoCLIP(Identity(32), loc, queue_size=0)
    gallery = random_gps(500, seed=3)
    model.set_gallery(gallery, verbose=0)
    # Queries whose image embedding is the location embedding of a gallery
    # point: cosine 1 is the unique maximum.
    pick = np.array([0, 7, 123, 499])
    queries = model.encode_location(gallery[pick])
    coords, probs = model.predict_gps(queries, top_k=5)
    np.testing.assert_array_equal(coords[:, 0], gallery[pick])
    assert coords.shape == (4, 5, 2) and probs.shape == (4, 5)
    assert np.all(np.diff(probs, axis=1) <= 1e-7)
    # Probabilities are the softmax over the whole gallery.
    logits = model.encode_location(gallery) @ queries.T * (1 / 0.07)
    full = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(
        0
    )
    np.testing.assert_allclose(probs[:, 0], full.max(0), rtol=1e-4)


def test_gallery_is_cached_and_saved(tmp_path):
    x, gps = _data(64)
    model = small_geoclip(queue_size=16)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=32, epochs=1, verbose=0)
    model.set_gallery(gps[:50], verbose=0)
    coords, probs = model.predict_gps(x[:10], top_k=2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.gallery.size == 50
    np.testing.assert_array_equal(to_numpy(loaded.gallery.coords), gps[:50])
    c2, p2 = loaded.predict_gps(x[:10], top_k=2)
    np.testing.assert_array_equal(c2, coords)
    np.testing.assert_allclose(p2, probs, rtol=1e-5)
    np.testing.assert_array_equal(
        to_numpy(loaded.queue.coords), to_numpy(model.queue.coords)
    )
    assert float(to_numpy(loaded.logit_scale)) == float(
        to_numpy(model.logit_scale)
    )
    # Gallery of another size replaces the old one; training still works.
    loaded.set_gallery(gps[:7], verbose=0)
    assert loaded.predict_gps(x[:3], top_k=7)[0].shape == (3, 7, 2)
    loaded.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    loaded.fit(x, gps, batch_size=32, epochs=1, verbose=0)


_SAVE_SCRIPT = """
import sys, numpy as np, keras
sys.path.insert(0, {root!r})
import geovario_keras as gv
from tests.testing import small_geoclip, random_gps, toy_features
gps = random_gps(64, seed=0, max_lat=70.0)
x = toy_features(gps)
model = small_geoclip(queue_size=16)
model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
model.fit(x, gps, batch_size=32, epochs=1, verbose=0)
model.set_gallery(gps, verbose=0)
coords, probs = model.predict_gps(x, top_k=3)
model.save({path!r})
np.savez({out!r}, coords=coords, probs=probs, x=x, gps=gps)
"""


def test_keras_file_saved_on_another_backend_loads_here(tmp_path):
    # Ring: tensorflow -> jax -> torch -> tensorflow, so the three runs of the
    # suite cover every backend as both writer and reader.
    ring = ["tensorflow", "jax", "torch"]
    other = ring[(ring.index(backend()) - 1) % 3]
    path, out = str(tmp_path / "m.keras"), str(tmp_path / "ref.npz")
    env = dict(os.environ, KERAS_BACKEND=other, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _SAVE_SCRIPT.format(root=ROOT, path=path, out=out),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    ref = np.load(out)
    loaded = keras.models.load_model(path)
    coords, probs = loaded.predict_gps(ref["x"], top_k=3)
    np.testing.assert_array_equal(coords, ref["coords"])
    np.testing.assert_allclose(probs, ref["probs"], atol=1e-5)
    # Training goes on here too: the optimizer (with its state) is rebuilt
    # as this backend's (a file saved on torch named torch's Adam).
    assert type(loaded.optimizer).__name__ == "Adam"
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    hist = loaded.fit(ref["x"], ref["gps"], batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert int(to_numpy(loaded.optimizer.iterations)) == 4


def test_fit_from_tf_data_and_py_dataset():
    import tensorflow as tf

    x, gps = _data(128)
    model = small_geoclip(queue_size=32)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    ds = tf.data.Dataset.from_tensor_slices((x, gps)).batch(32)
    h1 = model.fit(ds, epochs=1, verbose=0).history

    class Seq(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i * 32 : (i + 1) * 32], gps[i * 32 : (i + 1) * 32]

    h2 = model.fit(Seq(), epochs=1, verbose=0).history
    assert np.isfinite(h1["loss"][0]) and np.isfinite(h2["loss"][0])


def test_fit_with_jit_compile():
    if backend() == "torch":
        pytest.skip("PyTorch: test_torch_compile_trains_as_eager (slow)")
    x, gps = _data(128)
    model = small_geoclip(queue_size=32)
    model.compile(
        optimizer="adam",
        loss=gv.losses.SemivariogramContrastiveLoss(),
        jit_compile=True,
    )
    hist = model.fit(x, gps, batch_size=32, epochs=2, verbose=0).history
    assert np.all(np.isfinite(hist["loss"]))


def test_model_and_loss_are_traced_symbolically_once():
    # Keras builds a model by tracing it and its loss symbolically until
    # its own loss container counts as built; GeoCLIP's `compute_loss` never
    # calls that container, so without care every `fit`, `evaluate`,
    # `train_on_batch` and `test_on_batch` traced again (JAX and PyTorch;
    # TensorFlow without a strategy builds when it traces its step, so
    # there the count is 0 with or without the fix).
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    x, gps = _data(128)
    model = small_geoclip(queue_size=32)
    model.compile(
        optimizer="adam", loss=gv.losses.SemivariogramContrastiveLoss()
    )
    symbolic = []
    compute_loss = model.compute_loss

    def counted(*args, **kwargs):
        symbolic.append(in_symbolic_scope())
        return compute_loss(*args, **kwargs)

    with mock.patch.object(model, "compute_loss", counted):
        model.fit(x, gps, batch_size=32, epochs=1, verbose=0)
        first = sum(symbolic)
        assert first <= 1
        for i in range(3):
            model.train_on_batch(
                x[32 * i : 32 * (i + 1)], gps[32 * i : 32 * (i + 1)]
            )
        model.test_on_batch(x[:32], gps[:32])
        model.fit(x, gps, batch_size=32, epochs=1, verbose=0)
        model.evaluate(x, gps, batch_size=32, verbose=0)
    assert len(symbolic) > first  # the spy saw the steps
    assert sum(symbolic) == first


def test_evaluate_makes_one_data_set_without_a_strategy():
    # TensorFlow: the data set's spec builds the model only under a
    # tf.distribute strategy; asked for without one, `evaluate` converted
    # the in-memory arrays to tensors a second time (CHANGELOG, Fixed).
    if backend() != "tensorflow":
        pytest.skip("TensorFlow's trainer")
    from keras.src.trainers.data_adapters import array_data_adapter

    adapter = array_data_adapter.ArrayDataAdapter
    x, gps = _data(128)
    model = small_geoclip(queue_size=32)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=32, epochs=1, verbose=0)
    calls = []
    original = adapter.get_tf_dataset

    def counted(self):
        calls.append(self)
        return original(self)

    with mock.patch.object(adapter, "get_tf_dataset", counted):
        model.evaluate(x, gps, batch_size=32, verbose=0)
    assert len(calls) == 1  # Keras's own


# A module's numpy array, converted inside a compiled step.
_TABLE = np.arange(3, dtype="float32")


def test_step_function_keeps_the_guards_a_step_needs():
    # `backend.step_function` recompiles Keras's torch step without the
    # checks of the layers' plain attributes. What it keeps, on a small
    # function: variables' values are inputs; a new batch shape and a
    # gradient that has come to exist (Keras's step zeroes it then) give
    # new graphs; a plain attribute is read once, as JAX and TensorFlow
    # trace it once. Elsewhere, and eager functions: unchanged.
    from geovario_keras import backend as gb

    def eager(x):
        return x

    assert gb.step_function(eager) is eager
    if backend() != "torch":
        return
    import torch

    layer = keras.layers.Dense(1, use_bias=False)
    layer.build((None, 1))
    layer.scale = 1.0

    def step(x):
        w = layer.kernel.value
        bump = 10.0 if w.grad is not None else 0.0
        return x * w[0, 0] * layer.scale + bump

    compiled = gb.step_function(torch.compile(step))
    assert compiled._geovario_step and gb.step_function(compiled) is compiled
    x = torch.ones(2)
    layer.kernel.assign([[2.0]])
    np.testing.assert_allclose(to_numpy(compiled(x)), [2.0, 2.0])
    layer.kernel.assign([[3.0]])  # a variable's value: an input
    np.testing.assert_allclose(to_numpy(compiled(x)), [3.0, 3.0])
    np.testing.assert_allclose(to_numpy(compiled(torch.ones(3))), [3.0] * 3)
    layer.kernel.value.grad = torch.zeros(1, 1)  # the gradient exists
    np.testing.assert_allclose(to_numpy(compiled(x)), [13.0, 13.0])
    layer.scale = 2.0  # a plain attribute: read when traced
    np.testing.assert_allclose(to_numpy(compiled(x)), [13.0, 13.0])
    np.testing.assert_allclose(to_numpy(step(x)), [16.0, 16.0])  # eagerly

    # Keras compiles one closure per model and per `compile()`, all of the
    # same code, which calls the model classes' methods: each keeps its own
    # graphs, so that another layer of the same class, or the same layer
    # compiled again after an attribute changed, is not run with a graph
    # traced for the first one.
    def one_step_on(owner):
        def one_step(x):
            return x * owner.kernel.value[0, 0] * owner.scale

        return one_step

    other = keras.layers.Dense(1, use_bias=False)
    other.build((None, 1))
    other.kernel.assign([[3.0]])
    layer.scale, other.scale = 2.0, 5.0
    for owner, want in ((layer, 6.0), (other, 15.0), (layer, 6.0)):
        compiled = gb.step_function(torch.compile(one_step_on(owner)))
        np.testing.assert_allclose(to_numpy(compiled(x)), [want, want])
    layer.scale = 7.0  # then compiled again, as `compile()` does
    compiled = gb.step_function(torch.compile(one_step_on(layer)))
    np.testing.assert_allclose(to_numpy(compiled(x)), [21.0, 21.0])

    # A numpy array converted inside the step: TorchDynamo fails to build
    # the reduced checks; the step falls back to Keras's, with a warning.
    table = np.arange(3, dtype="float32")

    def numpy_step(x):
        return x * keras.ops.convert_to_tensor(table) + layer.kernel.value[0]

    compiled = gb.step_function(torch.compile(numpy_step))
    with pytest.warns(UserWarning, match="every check"):
        out = compiled(torch.ones(3))
    np.testing.assert_allclose(to_numpy(out), [3.0, 4.0, 5.0])

    # The failure can come after part of the step ran (here: a graph break
    # before the conversion). Until a call has succeeded, the state of the
    # model passed in is put back first, so the step's update counts once;
    # without a model the warning says the batch may count twice. (Two
    # functions: TorchDynamo runs code that failed once eagerly after.)
    def holder():
        layer = keras.layers.Layer()
        layer.count = layer.add_weight(
            shape=(), initializer="zeros", trainable=False
        )
        return layer

    with_model, without_model = holder(), holder()

    def partial_step(x):
        with_model.count.assign(with_model.count.value + 1.0)
        torch._dynamo.graph_break()
        return x * keras.ops.convert_to_tensor(_TABLE)

    def partial_step_without_model(x):
        without_model.count.assign(without_model.count.value + 1.0)
        torch._dynamo.graph_break()
        return x * keras.ops.convert_to_tensor(_TABLE)

    steps = {}
    for fn, model, want in (
        (partial_step, with_model, 1.0),
        (partial_step_without_model, None, 2.0),
    ):
        compiled = steps[fn] = gb.step_function(torch.compile(fn), model)
        with pytest.warns(UserWarning, match="every check") as record:
            out = compiled(torch.ones(3))
        np.testing.assert_allclose(to_numpy(out), [0.0, 1.0, 2.0])
        counter = with_model if model is not None else without_model
        assert float(to_numpy(counter.count)) == want
        twice = "count that batch twice" in str(record[0].message)
        assert twice == (model is None)
    # Fallen back, the step copies no state any more: one update per call.
    from geovario_keras.backend import fit as backend_fit

    with mock.patch.object(backend_fit, "model_variables") as copied:
        steps[partial_step](torch.ones(3))
    copied.assert_not_called()
    assert float(to_numpy(with_model.count)) == 2.0


@pytest.mark.slow
@pytest.mark.skipif(backend() != "torch", reason="torch.compile")
def test_torch_compile_trains_as_eager():
    # `jit_compile=True` on PyTorch (torch.compile, minutes to compile on a
    # CPU): from the same weights, noise state and data order, the compiled
    # step trains as the eager one does, every branch of the semivariogram
    # loss active, and the step compiles without breaks but the one at
    # Keras's `loss.backward()`. The compiled steps keep no checks of the
    # layers' attributes (`backend.step_function`) but those of the batch:
    # the last, smaller batch (144 = 4 x 32 + 16) gets its own graph.
    import torch

    x, gps = _data(144)
    fit = gv.semivariogram.VariogramFit(
        "exponential",
        nugget=0.2,
        psill=0.6,
        length_scale=500.0,
        converged=True,
    )
    models = []
    for jit in (False, True):
        model = small_geoclip(queue_size=32)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=gv.losses.SemivariogramContrastiveLoss(),
            jit_compile=jit,
        )
        model(x[:1])
        if models:
            model.set_weights(models[0].get_weights())
        model.variogram.set_fit(fit)
        models.append(model)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    losses = [
        m.fit(
            x, gps, batch_size=32, epochs=2, shuffle=False, verbose=0
        ).history["loss"]
        for m in models
    ]
    breaks = torch._dynamo.utils.counters["graph_break"]
    others = [reason for reason in breaks if "backward" not in reason]
    assert not others, others
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    eager, compiled = models
    assert compiled.train_function._geovario_step
    assert not hasattr(eager.train_function, "_geovario_step")
    evaluated = [m.evaluate(x, gps, batch_size=32, verbose=0) for m in models]
    np.testing.assert_allclose(evaluated[1], evaluated[0], rtol=1e-4)
    # Weights: equal to rounding, but for the odd element whose gradient is
    # ~0, where Adam's normalised step (size ~lr) flips with the rounding
    # of the compiled kernels' other summation order.
    for a, b in zip(eager.trainable_weights, compiled.trainable_weights):
        a, b = to_numpy(a), to_numpy(b)
        close = np.abs(b - a) <= 1e-4 + 1e-3 * np.abs(a)
        assert close.mean() > 0.99
        np.testing.assert_allclose(b, a, rtol=0, atol=8e-3)  # 8 steps of lr
    for name in ("count", "negatives"):
        np.testing.assert_array_equal(
            to_numpy(getattr(compiled.variogram, name)),
            to_numpy(getattr(eager.variogram, name)),
        )
    assert to_numpy(eager.variogram.negatives)[1:].min() > 0  # classes used
    np.testing.assert_array_equal(
        to_numpy(compiled.queue.coords), to_numpy(eager.queue.coords)
    )
    # Compiled again, with the plain loss: the compiled model trains with
    # it, not with the graph of its previous `compile()` (which, fit set,
    # gives another loss).
    compiled.set_weights(eager.get_weights())
    for model in models:
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=gv.losses.GeoContrastiveLoss(),
            jit_compile=model is compiled,
        )
    losses = [
        m.fit(x, gps, batch_size=32, shuffle=False, verbose=0).history["loss"]
        for m in models
    ]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_mixed_precision_training_and_prediction():
    keras.config.set_dtype_policy("mixed_bfloat16")
    x, gps = _data(128)
    model = small_geoclip(queue_size=32)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    hist = model.fit(x, gps, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    model.set_gallery(gps, verbose=0)
    coords, probs = model.predict_gps(x[:4], top_k=2)
    assert np.all(np.isfinite(probs))


@pytest.mark.parametrize(
    "gps_fix, match",
    [
        (
            lambda g: g.__setitem__((0, 0), 95.0),
            r"`y` has latitudes outside \[-90, 90\]",
        ),
        (lambda g: g.__setitem__((0, 1), np.nan), "`y` contains NaN"),
    ],
)
def test_fit_rejects_bad_gps(gps_fix, match):
    x, gps = _data(32)
    gps_fix(gps)
    model = small_geoclip()
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    with pytest.raises(ValueError, match=match):
        model.fit(x, gps, epochs=1, verbose=0)


def test_bad_inputs_raise_clear_errors():
    x, gps = _data(16)
    model = small_geoclip()
    with pytest.raises(ValueError, match="gallery is empty"):
        model.predict_gps(x)
    with pytest.raises(ValueError, match="`gps` is empty"):
        model.set_gallery(np.zeros((0, 2), "float32"))
    with pytest.raises(ValueError, match=r"`gps` must have shape \(N, 2\)"):
        model.set_gallery(np.zeros((5,), "float32"))
    model.set_gallery(gps, verbose=0)
    with pytest.raises(
        ValueError, match=r"`top_k` must be an int in \[1, 16\]"
    ):
        model.predict_gps(x, top_k=17)
    with pytest.raises(ValueError, match="embed_dim"):
        gv.GeoCLIP(
            gv.layers.ImageEncoder(None, embed_dim=8),
            gv.layers.LocationEncoder(embed_dim=16),
        )
    with pytest.raises(ValueError, match="queue_size"):
        small_geoclip(queue_size=-1)
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="contrastive loss"):
        model.fit(x, gps, epochs=1, verbose=0)


def test_model_config_round_trip():
    model = small_geoclip(
        queue_size=8, gps_noise_m=(10.0, 20.0), logit_scale_init=1.5
    )
    revived = gv.GeoCLIP.from_config(model.get_config())
    assert revived.get_config() == model.get_config()
    assert revived.gps_noise_m == (10.0, 20.0)


def test_public_api_snippet_verbatim():
    # The notebook snippet, as external usage checks run it.
    gps = random_gps(512, seed=1, max_lat=70.0)
    features = toy_features(gps, dim=64)
    gallery_gps, gps_test = random_gps(300, seed=2), gps[:50]
    features_test = features[:50]
    model = gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            backbone=None, embed_dim=128, hidden_units=256
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            hidden_units=256,
            hidden_layers=2,
            embed_dim=128,
        ),
        queue_size=1024,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=gv.losses.GeoContrastiveLoss(),
    )
    model.fit(features, gps, batch_size=128, epochs=2, verbose=0)
    model.set_gallery(gallery_gps, verbose=0)
    coords, probs = model.predict_gps(features_test, top_k=5)
    report = gv.metrics.geolocation_report(coords[:, 0], gps_test)
    assert coords.shape == (50, 5, 2) and set(report) >= {"acc_1km", "geoscore"}


def test_encode_location_follows_weight_changes():
    # encode_location reuses one compiled encoder; it must read the current
    # weights (after training, or weights set by hand), not stale ones.
    x, gps = _data(16)
    model = small_geoclip()
    model(x)
    num_weights = len(model.weights)
    first = model.encode_location(gps)
    weights = model.location_encoder.get_weights()
    model.location_encoder.set_weights([w * 1.5 + 0.01 for w in weights])
    second = model.encode_location(gps)
    direct = keras.ops.convert_to_numpy(model.location_encoder(gps))
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    # Graph vs eager float32 at sigma = 256: ~1e-4 (see the export notes).
    np.testing.assert_allclose(second, direct, atol=2e-4)
    assert np.abs(second - first).max() > 1e-3
    # The cached encoder is not tracked: the model's weights are unchanged.
    assert len(model.weights) == num_weights


def test_predict_gps_sees_a_new_gallery():
    # Prediction may cache a compiled top-k (TensorFlow); replacing the
    # gallery, with a new size or the same one, must be seen at once.
    x, gps = _data(16)
    model = small_geoclip()
    model.set_gallery(gps, verbose=0)
    coords, _ = model.predict_gps(x, top_k=1)
    assert np.isin(coords[:, 0, 0], gps[:, 0]).all()
    for other in (random_gps(7, seed=5), random_gps(7, seed=6)):
        model.set_gallery(other, verbose=0)
        coords, probs = model.predict_gps(x, top_k=1)
        assert np.isin(coords[:, 0, 0], other[:, 0]).all()
        assert np.all(probs > 0)


def test_encode_image_fast_path_equals_predict():
    # Arrays take a cached compiled function; `predict` is the reference.
    x, gps = _data(37)
    model = small_geoclip()
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=16, epochs=1, verbose=0)
    expected = model.predict(x, batch_size=8, verbose=0)
    np.testing.assert_allclose(
        model.encode_image(x, batch_size=8), expected, atol=1e-5
    )
    np.testing.assert_allclose(
        model.encode_image(x[:1]), expected[:1], atol=1e-5
    )
    assert model.encode_image(x[:0]).shape == (0, model.embed_dim)
    with pytest.raises(ValueError, match="batch_size"):
        model.encode_image(x, batch_size=0)


def test_backend_tensors_are_accepted_and_validated():
    # `fit`/`evaluate` with a tensor `y` and `encode_image`/`predict_gps` on
    # a tensor used `keras.backend.is_tensor`, which Keras 3.15 lacks.
    x, gps = _data(64)
    model = small_geoclip(queue_size=16)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(gps)
    hist = model.fit(xt, yt, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(hist["loss"][0])
    model.set_gallery(gps, verbose=0)
    np.testing.assert_allclose(
        model.encode_image(xt[:5]), model.encode_image(x[:5]), atol=1e-6
    )
    coords, _ = model.predict_gps(xt[:5], top_k=2)
    np.testing.assert_array_equal(coords, model.predict_gps(x[:5], top_k=2)[0])
    bad = gps.copy()
    bad[0, 0] = 91.0
    with pytest.raises(ValueError, match=r"`y` has latitudes outside"):
        model.fit(xt, keras.ops.convert_to_tensor(bad), epochs=1, verbose=0)


@pytest.mark.parametrize("weights_only", [False, True])
def test_failed_save_keeps_the_good_file(tmp_path, monkeypatch, weights_only):
    from keras.src.saving import saving_lib

    x, gps = _data(32)
    model = small_geoclip(queue_size=8)
    model(x[:1])
    name = "m.weights.h5" if weights_only else "m.keras"
    save = model.save_weights if weights_only else model.save
    path = tmp_path / name
    save(str(path))
    good = path.read_bytes()
    assert len(good) > 1000

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # Fails after the destination would have been opened for writing.
    monkeypatch.setattr(saving_lib, "_save_state", broken)
    with pytest.raises(OSError, match="disk full"):
        save(str(path))
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    monkeypatch.undo()
    # A successful save still replaces the file; overwrite=False refuses.
    model.location_encoder.set_weights(
        [w + 1.0 for w in model.location_encoder.get_weights()]
    )
    save(str(path))
    assert path.read_bytes() != good
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save(str(path), overwrite=False)


def test_save_refuses_formats_that_do_not_reload(tmp_path):
    model = small_geoclip(queue_size=8)
    with pytest.raises(ValueError, match=r"must end in '\.keras'"):
        model.save(str(tmp_path / "m.h5"))
    assert not (tmp_path / "m.h5").exists()


def test_non_finite_rows_are_found_across_the_checks_chunks(monkeypatch):
    # The features are checked a block of rows at a time (bounded memory);
    # every bad row is found, at the blocks' edges too, as numpy finds them
    # over the whole array.
    from geovario_keras import validation

    monkeypatch.setattr(validation, "_CHECK_ROWS", 7)
    x = np.ones((100, 3, 2), "float32")
    for row, value in (
        (0, np.nan),
        (6, np.inf),
        (7, -np.inf),
        (13, np.nan),
        (14, np.nan),
        (99, np.inf),
    ):
        x[row, row % 3, 1] = value
    expected = np.flatnonzero(~np.isfinite(x.reshape(100, -1)).all(1))
    np.testing.assert_array_equal(validation._bad_rows(x), expected)
    tensor = keras.ops.convert_to_tensor(x)  # read a block at a time too
    np.testing.assert_array_equal(validation._bad_rows(tensor), expected)
    assert validation._bad_rows(x[20:99]).size == 0
    with pytest.raises(
        ValueError,
        match=r"6 row\(s\), the first at rows "
        r"\[0, 6, 7, 13, 14\]",
    ):
        validation.checked_features(x.reshape(100, 6))


def test_checking_features_copies_no_whole_array():
    # 40,000 x 64 float32 features (9.8 MiB) are checked without a copy of
    # the array (Keras's `convert_to_numpy` of an array makes one through a
    # backend tensor) and with masks of 16,384 rows (1 MiB).
    import tracemalloc

    from geovario_keras import validation

    x = np.ones((40_000, 64), "float32")
    tracemalloc.start()
    try:
        assert validation.checked_features(x, "x") is x
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * x.nbytes
    assert gv.backend.host_array(x) is x  # what the checks and encoders read
    tensor = keras.ops.convert_to_tensor(x[:3])
    np.testing.assert_array_equal(gv.backend.host_array(tensor), x[:3])


def test_non_finite_features_are_refused_naming_the_row():
    x, gps = _data(64)
    model = small_geoclip(queue_size=8)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x, gps, batch_size=16, epochs=1, verbose=0)
    model.set_gallery(gps, verbose=0)
    weights = [to_numpy(w).copy() for w in model.weights]
    bad = x.copy()
    bad[37, 2] = np.nan
    with pytest.raises(ValueError, match=r"rows \[37\] \(batch 2 unshuffled"):
        model.fit(bad, gps, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`x` has NaN .* rows \[37\]"):
        model.evaluate(bad, gps, batch_size=16, verbose=0)
    bad[40, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"2 row\(s\), the first at rows \[37, 40\]"
    ):
        model.predict_gps(bad, top_k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.encode_image(keras.ops.convert_to_tensor(bad))
    # Nothing was trained on the bad rows.
    for w, before in zip(model.weights, weights):
        np.testing.assert_array_equal(to_numpy(w), before)


def test_predict_gps_takes_lists_tf_data_and_py_datasets():
    import tensorflow as tf

    x, gps = _data(64)
    model = small_geoclip(queue_size=8)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(x.tolist(), gps.tolist(), batch_size=32, epochs=1, verbose=0)
    model.set_gallery(gps, verbose=0)
    expected = model.predict_gps(x[:10], top_k=2)[0]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (x[i * 5 : (i + 1) * 5],)

    for inputs in (
        x[:10].tolist(),
        tf.data.Dataset.from_tensor_slices(x[:10]).batch(4),
        tf.data.Dataset.from_tensor_slices((x[:10], gps[:10])).batch(4),
        Batches(),
    ):
        coords, _ = model.predict_gps(inputs, top_k=2)
        np.testing.assert_array_equal(coords, expected)


def test_load_weights_takes_the_saved_gallery_size(tmp_path):
    x, gps = _data(64)
    model = small_geoclip(queue_size=16)
    model(x[:1])
    model.set_gallery(gps[:50], verbose=0)
    expected = model.predict_gps(x[:5], top_k=3)
    for name in ("m.weights.h5", "m.keras"):
        path = str(tmp_path / name)
        (model.save_weights if "weights" in name else model.save)(path)
        fresh = small_geoclip(queue_size=16)  # gallery_size=0
        fresh(x[:1])
        fresh.load_weights(path)
        assert fresh.gallery.size == 50
        coords, probs = fresh.predict_gps(x[:5], top_k=3)
        np.testing.assert_array_equal(coords, expected[0])
        np.testing.assert_allclose(probs, expected[1], rtol=1e-5)


def test_fit_refuses_bad_batch_size_and_warns_without_the_callback():
    x, gps = _data(32)
    model = small_geoclip(queue_size=8)
    model.compile(
        optimizer="adam", loss=gv.losses.SemivariogramContrastiveLoss()
    )
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        model.fit(x, gps, batch_size=0, epochs=1, verbose=0)
    with pytest.warns(UserWarning, match="trains as the plain GeoCLIP loss"):
        model.fit(x, gps, batch_size=16, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="logit_scale_init"):
        small_geoclip(logit_scale_init=float("nan"))


def test_non_finite_features_in_data_sets_stop_at_the_bad_batch():
    import tensorflow as tf

    x, gps = _data(64)
    bad = x.copy()
    bad[37, 1] = np.nan  # batch 2 of 16
    model = small_geoclip(queue_size=8)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model(x[:1])
    dataset = tf.data.Dataset.from_tensor_slices((bad, gps)).batch(16)
    with pytest.raises(Exception, match=r"NaN or infinite values in batch.*2"):
        model.fit(dataset, epochs=1, verbose=0)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return bad[i * 16 : (i + 1) * 16], gps[i * 16 : (i + 1) * 16]

    # (On TensorFlow, Keras reads a PyDataset in a py_function, which wraps
    # the ValueError in an InvalidArgumentError with the same message.)
    with pytest.raises(Exception, match=r"rows \[5\] of batch 2"):
        model.fit(Batches(), epochs=1, verbose=0)
    # The steps before the bad batch ran; no weight became NaN.
    for w in model.weights:
        assert np.all(np.isfinite(to_numpy(w))), w.path
    with pytest.raises(Exception, match="NaN or infinite values in batch"):
        model.encode_image(tf.data.Dataset.from_tensor_slices(bad).batch(16))


@pytest.mark.parametrize("bad_batch", [0, 2])
def test_a_failed_fit_leaves_the_model_readable(bad_batch):
    # JAX's trainer detaches the variables during an epoch: a bad batch
    # at the first step (nothing trained yet) or later must leave them
    # attached, holding the start or the steps that ran.
    x, gps = _data(64)
    bad = x.copy()
    bad[bad_batch * 16 + 3, 0] = np.inf
    model = small_geoclip(queue_size=8)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model(x[:1])
    start = [to_numpy(w) for w in model.weights]

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return bad[i * 16 : (i + 1) * 16], gps[i * 16 : (i + 1) * 16]

    with pytest.raises(Exception, match=f"of batch {bad_batch}"):
        model.fit(Batches(), epochs=1, verbose=0, shuffle=False)
    after = [to_numpy(w) for w in model.weights]
    for w, a in zip(model.weights, after):
        assert np.all(np.isfinite(a)), w.path
    trained = any(np.any(a != b) for a, b in zip(after, start))
    assert trained == (bad_batch > 0)
    with pytest.raises(Exception, match=f"of batch {bad_batch}"):
        model.evaluate(Batches(), verbose=0)
    assert all(np.isfinite(to_numpy(w)).all() for w in model.weights)
    model.fit(x, gps, batch_size=16, epochs=1, verbose=0)  # trains on


def test_load_model_names_a_truncated_file(tmp_path):
    x, gps = _data(16)
    model = small_geoclip(queue_size=8)
    model(x[:1])
    path = tmp_path / "m.keras"
    model.save(str(path))
    loaded = gv.load_model(str(path))  # a good file loads
    np.testing.assert_allclose(loaded.encode_image(x), model.encode_image(x))
    path.write_bytes(path.read_bytes()[:500])  # an interrupted copy
    with pytest.raises(ValueError, match="exists .500 bytes. but is not a com"):
        gv.load_model(str(path))
    with pytest.raises(FileNotFoundError, match="No such"):
        gv.load_model(str(tmp_path / "missing.keras"))
