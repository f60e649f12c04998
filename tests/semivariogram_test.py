import gstools as gs
import keras
import numpy as np
import pytest

import geovario_keras as gv
from geovario_keras.semivariogram import models
from tests.testing import random_gps
from tests.testing import to_numpy

KM = 6371.0


def _gstools_features(model, n=1200, k=6, seed=0):
    """k independent fields of `model` on n points: features z / sqrt(k).

    Then 0.5 * ||f_i - f_j||^2 has expectation gamma(h) of one field.
    """
    gps = random_gps(n, seed=seed, max_lat=80.0)
    fields = []
    for i in range(k):
        srf = gs.SRF(model, seed=seed * 100 + i)
        fields.append(srf((gps[:, 0], gps[:, 1])))
    return gps, np.stack(fields, 1).astype("float32") / np.sqrt(k)


def test_models_numpy_and_ops_agree_and_effective_range():
    h = np.linspace(0, 8000, 101).astype("float32")
    for name, alpha in [
        ("stable", 0.7),
        ("exponential", 1.0),
        ("gaussian", 2.0),
        ("spherical", 1.0),
    ]:
        fit = gv.semivariogram.VariogramFit(
            family=name,
            nugget=0.1,
            psill=0.5,
            length_scale=1500.0,
            alpha=alpha,
            converged=True,
            effective_range_km=models.effective_range(name, 1500.0, alpha),
        )
        np.testing.assert_allclose(
            to_numpy(models.evaluate_ops(h, fit.packed())),
            fit(h),
            rtol=1e-5,
            atol=1e-6,
        )
        rho = fit.effective_range_km
        assert fit(rho) == pytest.approx(0.1 + 0.95 * 0.5, rel=1e-4)
    # Closed forms: exponential ln(20) * length, gaussian sqrt(ln 20).
    assert models.effective_range("exponential", 1.0) == pytest.approx(
        np.log(20)
    )
    assert models.effective_range("gaussian", 1.0) == pytest.approx(
        np.sqrt(np.log(20))
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.7, 2.0])
def test_power_of_a_tensor_exponent_matches_numpy(alpha):
    # The variogram's u ** alpha (a tensor exponent), 0 and 1e-30 included.
    from geovario_keras import backend

    u = np.array([0.0, 1e-30, 1e-8, 0.01, 0.5, 1.0, 3.0, 40.0], "float32")
    got = to_numpy(backend.power(u, np.float32(alpha)))
    want = u.astype("float64") ** alpha
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-37)


def test_streaming_estimator_matches_brute_force():
    gps = random_gps(300, seed=1)
    f = np.random.default_rng(0).normal(size=(300, 5)).astype("float32")
    edges = [0, 500, 2000, 5000, 10000, 20100]
    sv = gv.semivariogram.EmpiricalSemivariogram(edges)
    sv.update_from_features(gps, f, block_size=64)  # several blocks merged
    # Brute force in float64 with pyproj-free numpy haversine.
    lat, lon = (
        np.radians(gps[:, 0].astype("float64")),
        np.radians(gps[:, 1].astype("float64")),
    )
    a = (
        np.sin((lat[:, None] - lat[None]) / 2) ** 2
        + np.cos(lat[:, None])
        * np.cos(lat[None])
        * np.sin((lon[:, None] - lon[None]) / 2) ** 2
    )
    h = 2 * KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    d = 0.5 * ((f[:, None, :].astype("float64") - f[None]) ** 2).sum(-1)
    iu = np.triu_indices(300, 1)
    h, d = h[iu], d[iu]
    for k in range(len(edges) - 1):
        sel = (h >= edges[k]) & (h < edges[k + 1])
        assert sv.count[k] == sel.sum()
        assert sv.mean[k] == pytest.approx(d[sel].mean(), rel=1e-5)
        assert sv.variance()[k] == pytest.approx(d[sel].var(ddof=1), rel=1e-3)


@pytest.mark.parametrize(
    "edges",
    [
        None,  # the default edges: a 25 km grid
        [100.0, 350.0, 1000.0, 20100.0],  # a 50 km grid from 100 km
        [0.0, 12.5, 333.3, 5000.0],  # not whole km: no grid
        list(np.arange(0.0, 20101.0, 100.0)),  # > 64 edges, on a grid
        list(np.arange(0.5, 9000.0, 100.0)),  # > 64 edges, no grid
    ],
)
def test_batch_statistics_bin_as_numpy_digitize(edges):
    from geovario_keras.semivariogram.empirical import batch_statistics
    from geovario_keras.semivariogram.empirical import check_bin_edges

    edges = check_bin_edges(edges)
    rng = np.random.default_rng(3)
    e32 = edges.astype("float32")
    # Every edge, the floats just below and above it, and random distances.
    h = np.concatenate(
        [
            e32,
            np.nextafter(e32, np.float32(-1)),
            np.nextafter(e32, np.float32(1e9)),
            rng.uniform(-10, 21000, 5000).astype("float32"),
            [np.nan],
        ]
    ).astype("float32")
    h = h[(h == 0) | ~(np.abs(h) < 1e-30)]  # XLA flushes denormals to 0
    d = rng.uniform(0, 2, h.shape).astype("float32")
    count, mean, m2 = (to_numpy(v) for v in batch_statistics(h, d, edges))
    index = np.digitize(h, e32) - 1
    for k in range(len(edges) - 1):
        sel = index == k
        assert count[k] == sel.sum(), k
        if sel.any():
            np.testing.assert_allclose(mean[k], d[sel].mean(), rtol=1e-5)


def test_in_graph_merge_stays_accurate_in_float32():
    # 2,000 merges of 1,000 pairs each: the merged mean keeps float32
    # precision although the count exceeds what raw float32 sums resolve.
    state = gv.semivariogram.SemivariogramState([0.0, 100.0, 200.0])
    rng = np.random.default_rng(0)
    all_d = []
    for _ in range(200):
        d = (0.5 + 0.1 * rng.normal(size=(10, 1000))).astype("float32")
        h = np.full((10, 1000), 50.0, "float32")
        state.accumulate(h, d)
        all_d.append(d)
    count, mean, _ = state.statistics()
    assert count[0] == 2_000_000 and count[1] == 0
    assert mean[0] == pytest.approx(
        np.concatenate(all_d).astype("float64").mean(), rel=1e-5
    )


_EXP = gs.Exponential(
    latlon=True, geo_scale=gs.KM_SCALE, var=1.0, len_scale=700.0, nugget=0.1
)
_GAU = gs.Gaussian(
    latlon=True, geo_scale=gs.KM_SCALE, var=0.8, len_scale=600.0, nugget=0.05
)


@pytest.mark.parametrize(
    "gs_model, ours, length_scale, alpha",
    [
        (_EXP, "exponential", 700.0, 1.0),
        (_EXP, "stable", 700.0, 1.0),
        # gstools' Gaussian rescales by sqrt(pi)/2: ours is 2 l / sqrt(pi).
        (_GAU, "gaussian", 600.0 * 2.0 / np.sqrt(np.pi), 2.0),
    ],
)
def test_recovers_known_gstools_variogram(gs_model, ours, length_scale, alpha):
    gps, f = _gstools_features(gs_model)
    edges = np.concatenate(
        [np.arange(0, 1000, 100), np.arange(1000, 4001, 250)]
    )
    sv = gv.semivariogram.EmpiricalSemivariogram(edges)
    sv.update_from_features(gps, f)
    fit = gv.semivariogram.fit_variogram(*sv.result(), family=ours)
    assert fit.converged
    true_sill = gs_model.var + gs_model.nugget
    assert fit.sill == pytest.approx(true_sill, rel=0.15)
    assert fit.nugget == pytest.approx(gs_model.nugget, abs=0.1)
    # gstools' latlon models use chordal distance; at these ranges the
    # chord is within 1 % of the arc.
    true_range = models.effective_range(ours, length_scale, alpha)
    assert fit.effective_range_km == pytest.approx(true_range, rel=0.25)
    if ours == "stable":
        assert fit.alpha == pytest.approx(alpha, abs=0.3)


def test_fit_agrees_with_gstools_fit_variogram_on_same_bins():
    model = gs.Exponential(
        latlon=True, geo_scale=gs.KM_SCALE, var=1.0, len_scale=600.0, nugget=0.2
    )
    gps, f = _gstools_features(model, seed=3)
    sv = gv.semivariogram.EmpiricalSemivariogram(np.arange(0, 3001, 150))
    sv.update_from_features(gps, f)
    centers, gamma, counts = sv.result()
    ours = gv.semivariogram.fit_variogram(
        centers, gamma, counts, family="exponential"
    )
    ref = gs.Exponential(dim=2)
    # gstools multiplies residuals by `weights`: sqrt(n / mean n) is ours.
    ref.fit_variogram(
        centers,
        gamma,
        nugget=True,
        loss="soft_l1",
        weights=np.sqrt(counts / counts.mean()),
    )
    h = np.linspace(0, 3000, 61)
    np.testing.assert_allclose(ours(h), ref.variogram(h), atol=0.03 * ours.sill)
    assert ours.sill == pytest.approx(ref.sill, rel=0.05)
    assert ours.length_scale == pytest.approx(ref.len_scale, rel=0.1)


def test_cressie_weighting_minimises_cressies_criterion():
    # Cressie (1985): minimise sum_k n_k (gamma_k / gamma(h_k) - 1)^2. The
    # reference minimises it directly (Nelder-Mead, closed-form exponential
    # variogram); a large f_scale makes the soft-L1 loss least squares.
    from scipy import optimize

    # A curve whose first lags rise faster than an exponential can follow,
    # with pair counts growing with distance (as over the sphere).
    h = np.r_[12.5, 37.5, 62.5, 87.5, np.arange(150.0, 5000.0, 200.0)]
    gamma = 1.0 - np.exp(-np.sqrt(h / 300.0))
    counts = 50.0 * h

    def curve(p):
        nugget, psill, length = p
        return nugget + psill * (1.0 - np.exp(-h / length))

    def cressie(p):
        if p[0] < 0 or p[1] <= 0 or p[2] <= 0:
            return np.inf
        return np.sum(counts * (gamma / curve(p) - 1.0) ** 2)

    def squares(p):
        return np.sum(counts * (curve(p) - gamma) ** 2)

    ref = optimize.minimize(
        cressie,
        [0.1, 0.9, 500.0],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40000},
    )
    fits = {
        w: gv.semivariogram.fit_variogram(
            h, gamma, counts, family="exponential", weighting=w, f_scale=1e6
        )
        for w in ("counts", "cressie")
    }
    params = {w: [f.nugget, f.psill, f.length_scale] for w, f in fits.items()}
    assert all(f.converged for f in fits.values())
    assert cressie(params["cressie"]) <= ref.fun * (1 + 1e-3)
    np.testing.assert_allclose(params["cressie"], ref.x, rtol=1e-2)
    # Each weighting minimises its own criterion, and they differ here.
    assert cressie(params["counts"]) > 1.01 * cressie(params["cressie"])
    assert squares(params["cressie"]) > 1.01 * squares(params["counts"])


def test_weighting_is_checked():
    with pytest.raises(ValueError, match="`weighting` must be one of"):
        gv.semivariogram.fit_variogram(
            [1, 2, 3, 4], [1, 2, 3, 4], [1, 1, 1, 1], weighting="equal"
        )
    with pytest.raises(ValueError, match="`weighting` must be one of"):
        gv.callbacks.SemivariogramCallback(weighting="pairs")


@pytest.mark.parametrize(
    "gamma, counts, match",
    [
        (np.full(10, 0.3), np.full(10, 100), "flat"),
        (np.linspace(1.0, 0.2, 10), np.full(10, 100), "does not rise"),
        (
            np.linspace(0.1, 1.0, 10),
            np.r_[np.full(3, 100), np.zeros(7)],
            "only 3 bins",
        ),
    ],
)
def test_degenerate_fits_fall_back_with_a_warning(gamma, counts, match):
    centers = np.linspace(50, 5000, 10)
    with pytest.warns(RuntimeWarning, match=match):
        fit = gv.semivariogram.fit_variogram(centers, gamma, counts)
    assert not fit.converged
    packed = fit.packed()
    assert np.all(np.isfinite(packed))
    assert models.PackedParams.unpack(packed).active == 0.0


def test_fit_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`family` must be one of"):
        gv.semivariogram.fit_variogram([1, 2], [1, 2], [1, 1], family="cubic")
    with pytest.raises(ValueError, match="same length"):
        gv.semivariogram.fit_variogram([1, 2], [1], [1, 1])
    with pytest.raises(ValueError, match="bin_edges_km"):
        gv.semivariogram.EmpiricalSemivariogram([0, 10, 5])


def test_the_removed_model_keyword_is_refused():
    # "model" also names Keras models; the variogram family is `family`
    # (the pre-release alias `model=` is gone).
    h = np.linspace(50.0, 5000.0, 30)
    args = (h, 0.5 * (1 - np.exp(-h / 900.0)), np.full(30, 10.0))
    with pytest.raises(TypeError, match="model"):
        gv.semivariogram.fit_variogram(*args, model="exponential")
    with pytest.raises(TypeError, match="model"):
        gv.semivariogram.VariogramFit(model="spherical")
    with pytest.raises(TypeError, match="model"):
        gv.callbacks.SemivariogramCallback(model="gaussian")
    assert not hasattr(gv.semivariogram, "MODELS")
    with pytest.raises(ValueError, match='is now `"near_scaling"`'):
        gv.losses.SemivariogramContrastiveLoss(mode="thesis")


def test_packed_params_names_the_packed_vector():
    fit = gv.semivariogram.VariogramFit(
        "stable",
        nugget=0.1,
        psill=0.7,
        length_scale=400.0,
        alpha=1.5,
        converged=True,
    )
    params = models.PackedParams.unpack(fit.packed())
    assert params.family_code == models.FAMILY_CODES["stable"]
    assert params.sill == pytest.approx(0.8)
    assert params.effective_range == pytest.approx(
        400.0 * np.log(20.0) ** (1 / 1.5), rel=1e-6
    )
    assert params.active == 1.0
    assert models.PARAM_NAMES == params._fields
    # A tensor is named the same way (one operator; in-graph).
    as_tensor = models.PackedParams.unpack(
        keras.ops.convert_to_tensor(fit.packed())
    )
    np.testing.assert_array_equal(
        [float(to_numpy(v)) for v in as_tensor], fit.packed()
    )


def test_fused_step_statistics_equal_operator_by_operator():
    # TensorFlow runs the step's statistics XLA-compiled (`backend.fused`):
    # both ways must give numpy's per-bin counts and means of the negatives
    # at other coordinates, and the negative counts.
    from geovario_keras import backend

    state = gv.semivariogram.SemivariogramState()
    rng = np.random.default_rng(5)
    b, c = 8, 40
    candidates = np.stack(
        [rng.uniform(-80, 80, c), rng.uniform(-180, 180, c)], 1
    ).astype("float32")
    candidates[20] = candidates[3]  # a queue copy of a batch row
    distance = to_numpy(
        gv.geo.pairwise_haversine_km(candidates[:b], candidates)
    )
    args = (
        candidates,
        distance,
        rng.uniform(0, 2, (b, c)).astype("float32"),
        rng.uniform(size=(b, c)) < 0.9,
        rng.uniform(size=(b, c)) < 0.2,
        rng.uniform(size=(b, c)) < 0.2,
    )
    # numpy: the negatives apart from their row's coordinates, binned.
    cand, h, d, neg, false, hard = args
    same = np.all(cand[:b, None, :] == cand[None, :, :], -1)
    apart = neg & ~same
    edges = np.asarray(state.bin_edges_km, "float32")
    index = np.digitize(h, edges) - 1
    want_count = np.zeros(len(edges) - 1)
    want_mean = np.zeros(len(edges) - 1)
    for k in range(len(edges) - 1):
        sel = apart & (index == k)
        want_count[k] = sel.sum()
        want_mean[k] = d[sel].mean() if sel.any() else 0.0
    want_negatives = [neg.sum(), (neg & false).sum(), (neg & hard).sum()]
    assert same[3, 20] and want_count.sum() > 0
    for method in (
        state._step_statistics,
        backend.fused(state._step_statistics),
    ):
        count, mean, _, negatives = (to_numpy(v) for v in method(*args))
        np.testing.assert_array_equal(count, want_count)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(negatives, want_negatives)


@pytest.mark.parametrize("family", ["stable", "spherical"])
def test_fused_pair_values_match_numpy(family):
    # The step's distances, dissimilarities and variogram values, one
    # XLA-compiled call on TensorFlow (`backend.fused`, where the JAX
    # formulations are used: the arcsine polynomial, `exp(a log u)`), and
    # operator by operator: both as numpy's float64 haversine, `1 - cos`
    # and variogram.
    from geovario_keras import backend

    state = gv.semivariogram.SemivariogramState()
    fit = gv.semivariogram.VariogramFit(
        family,
        nugget=0.1,
        psill=0.7,
        length_scale=800.0,
        alpha=1.5,
        converged=True,
    )
    state.set_fit(fit)
    rng = np.random.default_rng(7)
    b, c = 8, 40
    gps = random_gps(c, seed=7)
    gps[5] = gps[2]  # identical points: 0 km
    feats = rng.normal(size=(c, 16)).astype("float32")
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    lat, lon = np.radians(gps[:, 0]), np.radians(gps[:, 1])
    hav = (
        np.sin((lat[None, :] - lat[:b, None]) / 2) ** 2
        + np.cos(lat[:b, None])
        * np.cos(lat[None, :])
        * np.sin((lon[None, :] - lon[:b, None]) / 2) ** 2
    )
    want_h = 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(hav, 0, 1)))
    want_gamma = gv.semivariogram.models.evaluate(
        want_h, family, 0.1, 0.7, 800.0, alpha=1.5
    )
    args = (gps[:b], gps, feats[:b], feats)
    for method in (state._pair_values, backend.fused(state._pair_values)):
        h, d, gamma = (to_numpy(v).astype("float64") for v in method(*args))
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=0.05)
        np.testing.assert_allclose(d, 1 - feats[:b] @ feats.T, atol=1e-6)
        np.testing.assert_allclose(gamma, want_gamma, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile only"
)
@pytest.mark.parametrize("size", [5, 20_001])
def test_segment_sum_inside_torch_compile_matches_numpy(size):
    # Inside torch.compile, per-chunk index_adds summed over the chunks.
    import torch

    from geovario_keras import backend

    rng = np.random.default_rng(size)
    index = rng.integers(0, 35, size)
    values = rng.normal(size=size).astype("float32")
    fn = torch.compile(
        lambda v, i: backend.segment_sum(v, i, 35), fullgraph=True
    )
    got = to_numpy(fn(torch.tensor(values), torch.tensor(index)))
    want = np.bincount(index, values.astype("float64"), minlength=35)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
