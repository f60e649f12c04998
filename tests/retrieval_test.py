"""Retrieval: chunked search, the reference set, and the prediction modes.

References: brute-force numpy top-k and logsumexp; pyproj's geodesic
distances for the neighbours' kernel density; the modes' defining formulas
written out in numpy.
"""

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

import geovario_keras as gv
from geovario_keras import density
from geovario_keras import retrieval
from tests.testing import random_gps
from tests.testing import run_state_layer_test
from tests.testing import small_geoclip
from tests.testing import toy_features


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _check_search(gallery, keys, queries, scale, top_k, batch, chunk):
    """`gallery.search` against a brute-force float64 search of `keys`:
    the top-k rows, their logits and the logsumexp over all rows."""
    logits, index, log_norm = gallery.search(
        queries, scale=scale, top_k=top_k, batch_size=batch, chunk_size=chunk
    )
    full = scale * queries.astype("float64") @ keys.T.astype("float64")
    best = np.argsort(-full, axis=1)[:, :top_k]
    np.testing.assert_array_equal(index, best)
    np.testing.assert_allclose(
        logits, np.take_along_axis(full, best, 1), atol=1e-4
    )
    np.testing.assert_allclose(log_norm, logsumexp(full, axis=1), rtol=1e-5)
    return full, best


@pytest.mark.parametrize("chunk_size", [None, 997, 4096])
def test_chunked_search_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    keys = _unit(rng.normal(size=(20_000, 8))).astype("float32")
    queries = _unit(rng.normal(size=(50, 8))).astype("float32")
    gallery = gv.layers.GPSGallery(embed_dim=8)
    gallery.set(random_gps(20_000, seed=1), keys)
    full, best = _check_search(gallery, keys, queries, 20.0, 7, 16, chunk_size)
    coords, probs = gallery.retrieve(queries, 20.0, 7, chunk_size=chunk_size)
    np.testing.assert_allclose(
        probs,
        np.exp(np.take_along_axis(full, best, 1) - logsumexp(full, 1)[:, None]),
        rtol=1e-3,
    )
    np.testing.assert_array_equal(
        coords, keras.ops.convert_to_numpy(gallery.coords)[best]
    )


def test_million_point_search_in_bounded_chunks():
    # 1,000,003 points (not a multiple of the chunk), scored 2**17 at a
    # time: the top-k, indices and normalisers of a brute-force float64
    # search over all of them, for a subset of 12 queries.
    rng = np.random.default_rng(0)
    n, chunk = 1_000_003, 1 << 17
    keys = _unit(rng.normal(size=(n, 8))).astype("float32")
    coords = np.stack(
        [rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)], 1
    ).astype("float32")
    gallery = gv.layers.GPSGallery(embed_dim=8)
    gallery.set(coords, keys)
    queries = _unit(rng.normal(size=(12, 8))).astype("float32")
    _check_search(gallery, keys, queries, 30.0, 5, 4, chunk)
    # Scoring functions were made for chunk-sized slices only (no call saw
    # more than `chunk` rows): 7 full chunks and the remainder.
    lengths = sorted({length for _, length in gallery._top_k_functions})
    assert lengths == [n - 7 * chunk, chunk]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_storage_scores_the_rounded_embeddings(dtype):
    # The stored embeddings are the float32 ones rounded to `dtype` (by
    # ml_dtypes / numpy, independently of the backend), scored in float32:
    # the search equals a brute-force search of the rounded keys, over
    # more points than one half-precision chunk (so in several chunks).
    import ml_dtypes

    rng = np.random.default_rng(0)
    n = gv.layers.gps_gallery.HALF_PRECISION_CHUNK + 4_321
    keys = _unit(rng.normal(size=(n, 8))).astype("float32")
    refs = gv.layers.ReferenceSet(embed_dim=8, embeddings_dtype=dtype)
    refs.set(random_gps(n, seed=3), keys)
    assert keras.backend.standardize_dtype(refs.embeddings.dtype) == dtype
    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    rounded = keys.astype(np_dtype).astype("float32")
    queries = _unit(rng.normal(size=(20, 8))).astype("float32")
    _check_search(refs, rounded, queries, 25.0, 6, 8, None)
    lengths = sorted({length for _, length in refs._top_k_functions})
    assert lengths == [4_321, gv.layers.gps_gallery.HALF_PRECISION_CHUNK]
    config = refs.get_config()
    assert config["embeddings_dtype"] == dtype
    same = gv.layers.ReferenceSet.from_config(config)
    assert same.embeddings_dtype == dtype and same.size == n


def test_embeddings_dtype_is_checked():
    with pytest.raises(ValueError, match="`embeddings_dtype` must be one of"):
        gv.layers.ReferenceSet(embed_dim=4, embeddings_dtype="int8")
    with pytest.raises(ValueError, match="`embeddings_dtype` must be one of"):
        small_geoclip(reference_dtype="float64")
    refs = gv.layers.ReferenceSet(embed_dim=4)
    refs.set(random_gps(3), np.eye(3, 4))
    with pytest.raises(ValueError, match="`embeddings_dtype` must be one of"):
        refs.set(random_gps(3), np.eye(3, 4), embeddings_dtype="half")
    assert refs.embeddings_dtype == "float32" and refs.size == 3


def test_gallery_keeps_its_own_copy():
    # The caller's arrays may change afterwards; the gallery must not.
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(6, 4))).astype("float32")
    coords = random_gps(6, seed=2)
    gallery = gv.layers.GPSGallery(embed_dim=4)
    gallery.set(coords, emb)
    want_emb, want_coords = emb.copy(), coords.copy()
    emb[:] = 0.0
    coords[:] = 0.0
    got = keras.ops.convert_to_numpy(gallery.embeddings)
    np.testing.assert_array_equal(got, want_emb)
    got = keras.ops.convert_to_numpy(gallery.coords)
    np.testing.assert_array_equal(got, want_coords)


def test_reference_set_layer():
    refs = gv.layers.ReferenceSet(size=0, embed_dim=4)
    with pytest.raises(ValueError, match="reference set is empty.*"):
        refs.search(np.ones((1, 4)), top_k=1)
    refs.set(random_gps(3), np.eye(3, 4))
    run_state_layer_test(refs, 0, 2)
    with pytest.raises(ValueError, match=r"`top_k` must be .* \[1, 3\]"):
        refs.search(np.ones((1, 4)), top_k=4)


def test_neighbour_density_against_pyproj():
    from pyproj import Geod

    geod = Geod(ellps="sphere", a=6371.0e3, b=6371.0e3)
    rng = np.random.default_rng(1)
    cand = random_gps(6, seed=2).astype("float64")[None]
    near = random_gps(4, seed=3).astype("float64")[None]
    w = rng.dirichlet(np.ones(4))[None]
    got = retrieval.neighbour_density(cand, near, w, bandwidth_km=800.0)
    want = np.zeros(6)
    for c in range(6):
        for k in range(4):
            d = geod.inv(
                near[0, k, 1], near[0, k, 0], cand[0, c, 1], cand[0, c, 0]
            )
            want[c] += w[0, k] * np.exp(-0.5 * (d[2] / 1000.0 / 800.0) ** 2)
    np.testing.assert_allclose(got[0], want, rtol=1e-4)  # float32 km


def test_repeats_mark_every_later_copy_in_its_row():
    # Reference: the definition, one candidate at a time.
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 3, (40, 25, 2)).astype("float64")
    coords[0, 3], coords[0, 7] = (-0.0, 1.0), (0.0, 1.0)  # equal floats
    expected = np.array(
        [
            [
                any((row[j] == row[m]).all() for m in range(j))
                for j in range(len(row))
            ]
            for row in coords
        ]
    )
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(density.repeats(coords), expected)


def test_density_modes_two_points_closed_form():
    # Two equally weighted points 40 km apart on the equator, bandwidth
    # 75 km: the density is unimodal (distance < 2 bandwidths) and, by
    # symmetry, peaks at the midpoint; both climbs end there, merged.
    dlon = 40.0 / (6371.0 * np.pi / 180.0)
    near = np.array([[[0.0, 10.0], [0.0, 10.0 + dlon]]])
    modes = retrieval.density_modes(near, np.array([[0.5, 0.5]]), 75.0, 50)
    np.testing.assert_allclose(modes[0, 0], [0.0, 10.0 + dlon / 2], atol=1e-3)
    np.testing.assert_array_equal(modes[0, 1], modes[0, 0])  # merged


def test_density_modes_of_an_isolated_weightless_neighbour_stay_finite():
    # The second neighbour has weight 0 (a softmax underflow) and is
    # 5,000 km from the first: no kernel reaches it, and it stays put.
    near = np.array([[[10.0, 10.0], [10.0, 55.0]]])
    modes = retrieval.density_modes(near, np.array([[1.0, 0.0]]), 75.0)
    np.testing.assert_array_equal(modes, near)


def test_density_modes_are_maxima_found_by_scipy():
    from pyproj import Geod
    from scipy.optimize import minimize

    geod = Geod(ellps="sphere", a=6371.0e3, b=6371.0e3)
    rng = np.random.default_rng(4)
    # Two clusters 400 km apart, each of 4 points within ~60 km.
    lon0, lat0, _ = geod.fwd(10.0, 45.0, 90.0, 400e3)
    centres = [(45.0, 10.0), (lat0, lon0)]
    near = np.array(
        [
            geod.fwd(c[1], c[0], rng.uniform(0, 360), rng.uniform(5, 60) * 1e3)
            for c in centres
            for _ in range(4)
        ]
    )[:, [1, 0]][None]
    w = rng.dirichlet(np.ones(8))[None]
    bandwidth = 50.0

    def minus_density(p):
        _, _, d = geod.inv(
            np.full(8, p[1]), np.full(8, p[0]), near[0, :, 1], near[0, :, 0]
        )
        return -(w[0] * np.exp(-0.5 * (d / 1e3 / bandwidth) ** 2)).sum()

    modes = retrieval.density_modes(near, w, bandwidth, steps=200)
    for k in range(8):
        want = minimize(
            minus_density,
            near[0, k],
            method="Nelder-Mead",
            options={"xatol": 1e-6, "fatol": 1e-12},
        ).x
        d = geod.inv(want[1], want[0], modes[0, k, 1], modes[0, k, 0])[2]
        # Within 1 km, or merged into a point within a tenth of the
        # bandwidth (a neighbour at the mode, or an earlier mode).
        assert d / 1e3 < 1.0 + 0.1 * bandwidth, (k, d)
    # One mode per cluster: the climbs from a cluster's points merge.
    assert len(np.unique(modes[0], axis=0)) == 2


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    gps = random_gps(512, seed=0, max_lat=70.0)
    x = toy_features(gps)
    model = small_geoclip(queue_size=128)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(x, gps, batch_size=128, epochs=2, verbose=0)
    model.set_gallery(random_gps(2000, seed=1), verbose=0)
    return model, x, gps


def test_modes_need_a_reference_set(trained):
    model, x, gps = trained
    model = gv.GeoCLIP.from_config(model.get_config())
    model.set_gallery(gps, verbose=0)
    for mode in ("reference", "hybrid"):
        with pytest.raises(ValueError, match="set_reference"):
            model.predict_gps(x[:2], mode=mode)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        model.predict_gps(x[:2], mode="knn")
    with pytest.raises(ValueError, match="`neighbours` must be an int >= 1"):
        model.predict_gps(x[:2], neighbours=0)
    with pytest.raises(ValueError, match="`bandwidth_km` must be a number"):
        model.predict_gps(x[:2], bandwidth_km=-1.0)
    with pytest.raises(ValueError, match="`mean_shift_steps` must be an int"):
        model.predict_gps(x[:2], mean_shift_steps=-1)
    for bad in (-0.5, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="`location_weight` must be a"):
            model.predict_gps(x[:2], location_weight=bad)
    with pytest.raises(ValueError, match="same length"):
        model.set_reference(x[:10], gps[:9], verbose=0)


def test_reference_mode_is_neighbour_voting(trained):
    model, x, gps = trained
    model.set_reference(x, gps, verbose=0)
    # A query that is a reference image finds itself first: with one
    # neighbour, the answer is its own location, with probability 1.
    coords, probs = model.predict_gps(
        x[:20], top_k=1, mode="reference", neighbours=1
    )
    np.testing.assert_allclose(coords[:, 0], gps[:20], atol=1e-5)
    np.testing.assert_allclose(probs, 1.0, atol=1e-6)
    # With 8 neighbours: the densest neighbour location, written out.
    emb = model.encode_image(x[:20])
    ref = model.encode_image(x)
    sims = emb @ ref.T
    near = np.argsort(-sims, axis=1)[:, :8]
    scale = float(keras.ops.convert_to_numpy(model.temperature()))
    w = np.exp(scale * np.take_along_axis(sims, near, 1))
    w /= w.sum(1, keepdims=True)
    loc = gps[near].astype("float64")
    d = np.asarray(
        gv.geo.pairwise_haversine_km(
            loc.reshape(-1, 2).astype("float32"),
            loc.reshape(-1, 2).astype("float32"),
        )
    ).reshape(20, 8, 20, 8)[np.arange(20), :, np.arange(20)]
    density = (np.exp(-0.5 * (d / 50.0) ** 2) * w[:, None, :]).sum(-1)
    options = {"neighbours": 8, "bandwidth_km": 50.0}
    coords, probs = model.predict_gps(
        x[:20], top_k=1, mode="reference", mean_shift_steps=0, **options
    )
    best = loc[np.arange(20), density.argmax(1)]
    np.testing.assert_allclose(coords[:, 0], best, atol=1e-4)
    np.testing.assert_allclose(
        probs[:, 0], density.max(1) / density.sum(1), rtol=1e-3
    )
    # With mean shift, the density's modes are candidates too: the answer
    # is the densest of the neighbours and their modes (tested above
    # against scipy), never less dense than without them.
    modes = retrieval.density_modes(loc, w, 50.0, steps=10)
    cands = np.concatenate([loc, modes], 1)
    dens = retrieval.neighbour_density(cands, loc, w, 50.0)
    coords, probs = model.predict_gps(
        x[:20], top_k=1, mode="reference", **options
    )
    want = cands[np.arange(20), dens.argmax(1)]
    np.testing.assert_allclose(coords[:, 0], want, atol=1e-3)
    assert (dens.max(1) >= density.max(1) - 1e-6).all()
    with pytest.raises(ValueError, match=r"`top_k` must be .* \[1, 8\]"):
        model.predict_gps(x[:2], top_k=9, mode="reference", neighbours=8)


def test_hybrid_rescores_gallery_and_neighbour_candidates(trained):
    model, x, gps = trained
    model.set_reference(x, gps, verbose=0)
    queries = toy_features(random_gps(10, seed=5, max_lat=70.0), seed=6)
    hybrid = dict(
        mode="hybrid", neighbours=4, gallery_candidates=6, bandwidth_km=50.0
    )
    # The formula, written out: candidates = 6 best gallery points + the 4
    # neighbours' locations; score = weight scale cos(img, loc) +
    # log(density + floor); probabilities = softmax over the 10
    # candidates. Weight 1 is the plain product of experts, 0 ranks by the
    # neighbours' density alone.
    emb = model.encode_image(queries)
    scale = float(keras.ops.convert_to_numpy(model.temperature()))
    gallery = keras.ops.convert_to_numpy(model.gallery.coords)
    g_loc = model.encode_location(gallery)
    g_best = np.argsort(-(emb @ g_loc.T), axis=1)[:, :6]
    ref = model.encode_image(x)
    n_best = np.argsort(-(emb @ ref.T), axis=1)[:, :4]
    w = np.exp(scale * np.take_along_axis(emb @ ref.T, n_best, 1))
    w /= w.sum(1, keepdims=True)
    cands = np.concatenate([gallery[g_best], gps[n_best]], 1)
    c_loc = model.encode_location(cands.reshape(-1, 2)).reshape(10, 10, -1)
    cos = np.einsum("ncd,nd->nc", c_loc, emb)
    density = retrieval.neighbour_density(
        cands.astype("float64"), gps[n_best].astype("float64"), w, 50.0
    )
    for weight in (1.0, 0.3, 0.01, 0.0):
        coords, probs = model.predict_gps(
            queries,
            top_k=3,
            mean_shift_steps=0,
            location_weight=weight,
            **hybrid,
        )
        assert coords.shape == (10, 3, 2) and probs.shape == (10, 3)
        score = weight * scale * cos + np.log(density + 0.01)
        p = np.exp(score - logsumexp(score, axis=1, keepdims=True))
        top = np.argmax(p, axis=1)
        np.testing.assert_allclose(
            coords[:, 0], cands[np.arange(10), top], atol=1e-4
        )
        np.testing.assert_allclose(probs[:, 0], p.max(1), rtol=2e-3)
    score = scale * cos + np.log(density + 0.01)  # weight 1 below
    # With mean shift: the modes join the candidates (and a repeated
    # candidate, e.g. a mode merged into a neighbour, counts once).
    modes = retrieval.density_modes(
        gps[n_best].astype("float64"), w, 50.0, steps=10
    )
    m_loc = model.encode_location(modes.reshape(-1, 2)).reshape(10, 4, -1)
    m_score = scale * np.einsum("ncd,nd->nc", m_loc, emb) + np.log(
        retrieval.neighbour_density(
            modes, gps[n_best].astype("float64"), w, 50.0
        )
        + 0.01
    )
    for row in range(10):
        everything = np.concatenate([cands[row], modes[row]])
        _, first = np.unique(everything, axis=0, return_index=True)
        keep = np.concatenate([score[row], m_score[row]])[first]
        everything = everything[first]
        q = np.exp(keep - logsumexp(keep))
        c, pr = model.predict_gps(
            queries[row : row + 1], top_k=1, location_weight=1.0, **hybrid
        )
        np.testing.assert_allclose(c[0, 0], everything[q.argmax()], atol=1e-3)
        np.testing.assert_allclose(pr[0, 0], q.max(), rtol=2e-3)


def test_reference_set_is_saved(trained, tmp_path):
    model, x, gps = trained
    model.set_reference(x[:100], gps[:100], verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = gv.load_model(path)
    assert loaded.reference.size == 100
    for mode in ("reference", "hybrid"):
        a = model.predict_gps(x[:5], top_k=2, mode=mode)
        b = loaded.predict_gps(x[:5], top_k=2, mode=mode)
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)


def test_float16_reference_predicts_like_float32_and_is_saved(
    trained, tmp_path
):
    # A float16 reference set holds the float32 model's embeddings rounded
    # to float16; its predictions are the float32 predictions over those
    # rounded embeddings, and it saves and reloads as float16.
    model, x, gps = trained
    half = gv.GeoCLIP.from_config(model.get_config())
    half.set_weights(model.get_weights())
    assert half.reference.embeddings_dtype == "float32"
    half.set_reference(x, gps, verbose=0, dtype="float16")
    assert half.get_config()["reference_dtype"] == "float16"
    emb = keras.ops.convert_to_numpy(half.reference.embeddings)
    assert emb.dtype == np.float16
    np.testing.assert_array_equal(
        emb, model.encode_image(x, verbose=0).astype("float16")
    )
    model.reference.set(gps, emb.astype("float32"))
    for mode in ("reference", "hybrid"):
        a = model.predict_gps(x[:40], top_k=3, mode=mode)
        b = half.predict_gps(x[:40], top_k=3, mode=mode)
        np.testing.assert_allclose(a[0], b[0], atol=1e-4)
        np.testing.assert_allclose(a[1], b[1], atol=1e-4)
    path = str(tmp_path / "half.keras")
    half.save(path)
    loaded = gv.load_model(path)
    assert loaded.reference.embeddings_dtype == "float16"
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded.reference.embeddings), emb
    )


def _numpy_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_multi_crop_averages_the_logits_before_the_softmax():
    # Reference: every crop scored against the whole gallery in numpy, the
    # logits averaged over crops, then the softmax (GeoCLIP's multi-crop).
    keras.utils.set_random_seed(0)
    gps = random_gps(256, seed=0, max_lat=80.0)
    model = small_geoclip(queue_size=64)
    model.compile(optimizer="adam", loss=gv.losses.GeoContrastiveLoss())
    model.fit(toy_features(gps), gps, batch_size=64, epochs=1, verbose=0)
    model.set_gallery(random_gps(700, seed=1), verbose=0)
    crops = np.stack([toy_features(gps[:12], seed=s) for s in range(5)], 1)
    coords, probs = model.predict_gps(crops, top_k=4, crops=True)
    keys = keras.ops.convert_to_numpy(model.gallery.embeddings)
    scale = float(keras.ops.convert_to_numpy(model.temperature()))
    logits = np.mean(
        [scale * model.encode_image(crops[:, c]) @ keys.T for c in range(5)],
        axis=0,
    )
    p = _numpy_softmax(logits.astype("float64"))
    best = np.argsort(-p, axis=1)[:, :4]
    gallery = keras.ops.convert_to_numpy(model.gallery.coords)
    np.testing.assert_array_equal(coords, gallery[best])
    np.testing.assert_allclose(
        probs, np.take_along_axis(p, best, 1), rtol=1e-4, atol=1e-7
    )
    # One crop is plain prediction; other modes take crops too.
    one = model.predict_gps(crops[:, :1], top_k=4, crops=True)
    plain = model.predict_gps(crops[:, 0], top_k=4)
    np.testing.assert_array_equal(one[0], plain[0])
    model.set_reference(toy_features(gps), gps, verbose=0)
    for mode in ("reference", "hybrid"):
        c, _ = model.predict_gps(crops, top_k=2, mode=mode, crops=True)
        assert c.shape == (12, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(N, C, \.\.\.\)"):
        model.predict_gps(crops[:, 0, 0], crops=True)


def test_five_and_ten_crop_views():
    x = np.random.default_rng(0).integers(0, 255, (2, 7, 9, 3), "uint8")
    five = gv.data.five_crop(x, 4)
    assert five.shape == (2, 5, 4, 4, 3)
    np.testing.assert_array_equal(five[:, 0], x[:, :4, :4])
    np.testing.assert_array_equal(five[:, 1], x[:, :4, 5:])
    np.testing.assert_array_equal(five[:, 2], x[:, 3:, :4])
    np.testing.assert_array_equal(five[:, 3], x[:, 3:, 5:])
    np.testing.assert_array_equal(five[:, 4], x[:, 1:5, 2:6])
    ten = gv.data.ten_crop(x, 4)
    assert ten.shape == (2, 10, 4, 4, 3)
    np.testing.assert_array_equal(ten[:, 5], x[:, :4, ::-1][:, :, :4])
    with pytest.raises(ValueError, match="`size` must be <="):
        gv.data.five_crop(x, 8)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        gv.data.five_crop(x[0], 4)
