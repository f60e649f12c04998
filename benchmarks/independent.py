"""geovario-keras against an independent plain-PyTorch GeoCLIP, same data.

Trains one configuration with the plain GeoCLIP loss (and, with
`--losses ... semivariogram`, the semivariogram loss of Chen et al. 2025)
twice on the default Blue Marble data, with the same inputs, budget and
evaluation:

- **geovario-keras** (`gv.GeoCLIP`, the backend of `KERAS_BACKEND`), and
- **plain PyTorch**: this file's own implementation of the published
  specification (Vivanco Cepeda et al. 2023), written from the paper and the
  reference code's layout, not from geovario-keras: Equal Earth projection,
  frozen random Fourier features per scale, ReLU MLP branches summed, an MLP
  image head, `exp(logit_scale) * cos` logits (started at log(1/0.07), not
  capped, as the reference), a FIFO queue of raw GPS re-encoded every step
  (masked until filled), torch's default `nn.Linear` initialisation and
  `torch.optim.Adam` defaults.

Configuration: inputs are the flattened patches (uint8 / 255), image head
512 -> 256, location encoder sigmas (1, 16, 256) with 256 Fourier
features, 2 x 512 hidden and a 256-d output, queue 2048, batch 256, Adam
1e-3, no GPS noise in either. Both are scored by top-1 retrieval over the
same GeoNames gallery; the accuracies are computed here with numpy.

The semivariogram loss on the torch side is this file's own code of the
specification (`SemivariogramTorch` below): streaming bin sums of the
cosine dissimilarity of stop-gradient image embeddings (batch against
batch and a feature queue aligned with the GPS queue; positives and
identical coordinates left out) over great-circle distance bins from 0 to
20,100 km (finer below 1,000 km); at each epoch's end a stable model
`nugget + psill (1 - exp(-(h / l)^alpha))` fitted by
`scipy.optimize.least_squares` (soft-L1, weights sqrt(pairs)); effective
range `rho = l (ln 20)^(1 / alpha)` (95 % of the partial sill); a fit that
explains under half of the pair-weighted spread of the bins, or whose
range lies beyond the largest distance seen, is not used (no weighting
until the next fit), as the package's fit falls back. From the first
trusted fit on, negatives with `h <= rho` that look more alike than the
fit expects (`r = gamma(h) - d > 0`) get weight 0.2, those with `h > rho`
and `r > 0` weight `min(exp(2 r / sill), 5)`, as `logit + log w`.

Options isolate the initialisation: `--keras-init torch` gives the Keras
model torch's `nn.Linear` kernel initialiser, U(+-1/sqrt(fan_in));
`--torch-init glorot` gives the torch model Keras's (Glorot-uniform
kernels, zero biases). `--torch-adam-eps 1e-7` uses Keras's Adam epsilon,
and `--torch-adam keras` Keras's Adam update rule (where the epsilon is
added). `--trace` prints both sides' loss step by step.
`--torch-logit-cap 0 100` runs the torch model without (the reference)
and with CLIP's cap of the temperature at 100, which geovario-keras has.
`--data-order shared` feeds the Keras model the torch side's batches in
the torch side's order (otherwise each shuffles for itself), so that with
`--torch-init copy_keras_glorot` the two start from the same weights and
see the same batches: what still differs is the code.

Run: `KERAS_BACKEND=jax python benchmarks/independent.py [--epochs 10]
[--seeds 0 1] [--keras-init glorot torch] [--torch-init default glorot]
[--losses geoclip semivariogram] [--data-order own|shared]`.
Results: BENCHMARKS.md.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "recipes"))

THRESHOLDS_KM = (25, 200, 750, 2500)


def haversine_km(a, b):
    """Great-circle km between rows of `a` and `b` (degrees), numpy."""
    a, b = np.radians(a), np.radians(b)
    h = (
        np.sin((b[:, 0] - a[:, 0]) / 2) ** 2
        + np.cos(a[:, 0])
        * np.cos(b[:, 0])
        * np.sin((b[:, 1] - a[:, 1]) / 2) ** 2
    )
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def scores(pred, true):
    d = haversine_km(pred, true)
    out = {f"acc_{t}km": 100.0 * np.mean(d <= t) for t in THRESHOLDS_KM}
    out["median_km"] = float(np.median(d))
    return out


# ------------------------------------------------------ plain PyTorch
def torch_geoclip(in_dim, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def equal_earth(gps):
        a1, a2, a3, a4 = 1.340264, -0.081106, 0.000893, 0.003796
        lat, lon = torch.deg2rad(gps[:, 0]), torch.deg2rad(gps[:, 1])
        theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
        t2 = theta**2
        t6 = t2**3
        x = (
            2
            * math.sqrt(3)
            * lon
            * torch.cos(theta)
            / (3 * (9 * a4 * t6 * t2 + 7 * a3 * t6 + 3 * a2 * t2 + a1))
        )
        y = theta * (a4 * t6 * t2 + a3 * t6 + a2 * t2 + a1)
        return torch.stack([x, y], 1) * 66.50336 / 180.0

    class Branch(nn.Module):
        def __init__(self, sigma):
            super().__init__()
            self.register_buffer("b", torch.randn(256, 2) * sigma)
            self.mlp = nn.Sequential(
                nn.Linear(512, 512),
                nn.ReLU(),
                nn.Linear(512, 512),
                nn.ReLU(),
                nn.Linear(512, 256),
            )

        def forward(self, p):
            v = 2 * math.pi * p @ self.b.T
            return self.mlp(torch.cat([torch.cos(v), torch.sin(v)], 1))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = nn.Sequential(
                nn.Linear(in_dim, 512), nn.ReLU(), nn.Linear(512, 256)
            )
            self.branches = nn.ModuleList(Branch(s) for s in (1, 16, 256))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def locations(self, gps):
            p = equal_earth(gps)
            return nn.functional.normalize(
                sum(b(p) for b in self.branches), dim=1
            )

        def images(self, x):
            return nn.functional.normalize(self.image(x), dim=1)

    return Model()


def bin_edges_km():
    """0-20,100 km: 25 km steps to 100, 100 km to 1,000, then coarser."""
    edges = [0.0, 25.0, 50.0, 75.0]
    edges += list(np.arange(100.0, 1000.0, 100.0))
    edges += list(np.arange(1000.0, 3000.0, 250.0))
    edges += list(np.arange(3000.0, 5000.0, 500.0))
    edges += [5000.0, 6000.0, 7000.0, 8000.0, 10000.0, 12500.0, 15000.0]
    return np.array(edges + [17500.0, 20100.0])


class SemivariogramTorch:
    """The semivariogram weighting, written for this comparison in torch."""

    def __init__(self, queue, dim, w_false=0.2, beta=2.0, w_max=5.0):
        import torch

        self.edges = bin_edges_km()
        self.sums = np.zeros(len(self.edges) - 1)
        self.counts = np.zeros(len(self.edges) - 1)
        self.features = torch.zeros(queue, dim)
        self.fit = None  # (nugget, psill, length, alpha, rho)
        self.w_false, self.beta, self.w_max = w_false, beta, w_max

    @staticmethod
    def distance_km(a, b):
        import torch

        a, b = torch.deg2rad(a), torch.deg2rad(b)
        dlat = b[None, :, 0] - a[:, None, 0]
        dlon = b[None, :, 1] - a[:, None, 1]
        h = (
            torch.sin(dlat / 2) ** 2
            + torch.cos(a[:, None, 0])
            * torch.cos(b[None, :, 0])
            * torch.sin(dlon / 2) ** 2
        )
        return 2 * 6371.0 * torch.arcsin(torch.sqrt(h.clamp(0, 1)))

    def gamma(self, h):
        import torch

        nugget, psill, length, alpha, _ = self.fit
        return nugget + psill * (1 - torch.exp(-((h / length) ** alpha)))

    def weigh(self, logits, img, gps, cand_gps, filled):
        """Accumulates the step's pairs; returns the re-weighted logits."""
        import torch

        b = len(gps)
        feats = torch.cat([img.detach(), self.features[:filled]], 0)
        h = self.distance_km(gps, cand_gps)
        d = 1.0 - img.detach() @ feats.T
        negative = torch.ones_like(h, dtype=torch.bool)
        negative[torch.arange(b), torch.arange(b)] = False
        apart = negative & (gps[:, None, :] != cand_gps[None]).any(-1)
        k = np.digitize(h[apart].numpy(), self.edges) - 1
        ok = (k >= 0) & (k < len(self.sums))
        np.add.at(self.sums, k[ok], d[apart].numpy()[ok])
        np.add.at(self.counts, k[ok], 1)
        if self.fit is None:
            return logits
        return self.adjust(logits, h, d, negative)

    def adjust(self, logits, h, d, negative):
        """`logits + log w` for the negatives (the fitted variogram's)."""
        import torch

        r = self.gamma(h) - d
        rho, sill = self.fit[4], self.fit[0] + self.fit[1]
        false = negative & (h <= rho) & (r > 0)
        hard = negative & (h > rho) & (r > 0)
        log_hard = torch.clamp(self.beta * r / sill, max=math.log(self.w_max))
        out = torch.where(hard, logits + log_hard, logits)
        return torch.where(false, logits + math.log(self.w_false), out)

    def enqueue(self, img, ptr):
        self.features[ptr : ptr + len(img)] = img.detach()

    def refit(self):
        """Fits the stable model to the pairs since the last fit."""
        from scipy.optimize import least_squares

        use = self.counts >= 10
        h = 0.5 * (self.edges[:-1] + self.edges[1:])[use]
        g = self.sums[use] / self.counts[use]
        w = np.sqrt(self.counts[use] / self.counts[use].mean())
        self.counts_used = self.counts[use].copy()
        self.sums[:] = 0
        self.counts[:] = 0

        def residual(p):
            nugget, psill, length, alpha = p
            return w * (
                nugget + psill * (1 - np.exp(-((h / length) ** alpha))) - g
            )

        p0 = [max(g.min(), 0.0), g.max() - g.min(), np.median(h), 1.0]
        res = least_squares(
            residual,
            p0,
            bounds=([0, 0, 1e-3, 0.05], [np.inf, np.inf, 4 * h.max(), 2.0]),
            loss="soft_l1",
            f_scale=0.1 * (g.max() - g.min()),
        )
        nugget, psill, length, alpha = res.x
        rho = length * math.log(20.0) ** (1.0 / alpha)
        # Not trusted (no weighting until the next fit), as the package's
        # rules say: a fit explaining under half of the pair-weighted
        # spread of the bins, or a range beyond the largest distance seen.
        n = self.counts_used
        spread = np.sum(n * (g - np.average(g, weights=n)) ** 2)
        r2 = 1.0 - np.sum(n * (residual(res.x) / w) ** 2) / spread
        trusted = res.success and r2 >= 0.5 and rho <= h.max()
        self.fit = (nugget, psill, length, alpha, rho) if trusted else None
        return (nugget, psill, length, alpha, rho, r2, trusted)


def keras_style_adam(params, lr, eps):
    """Adam with Keras's update rule, for `--torch-adam keras`.

    torch divides the bias-corrected first moment by `sqrt(v_hat) + eps`;
    Keras folds both corrections into the step size and adds `eps` to the
    *uncorrected* `sqrt(v)`: `p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m /
    (sqrt(v) + eps)`, so its epsilon weighs ~30 times more in the first
    steps (sqrt(1 - 0.999) ~ 0.03).
    """
    import torch

    class KerasAdam(torch.optim.Optimizer):
        def __init__(self):
            super().__init__(params, {"lr": lr})
            self.t = 0

        @torch.no_grad()
        def step(self):
            self.t += 1
            b1, b2 = 0.9, 0.999
            for group in self.param_groups:
                alpha = group["lr"] * math.sqrt(1 - b2**self.t)
                alpha /= 1 - b1**self.t
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                    m, v = state["m"], state["v"]
                    m.mul_(b1).add_(p.grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    p.sub_(alpha * m / (v.sqrt() + eps))

    return KerasAdam()


def train_torch(
    train_x,
    train_gps,
    epochs,
    seed,
    init,
    eps,
    logit_cap=None,
    batch=256,
    queue=2048,
    loss_name="geoclip",
    shuffle_seed=None,
    trace=None,
    adam="torch",
):
    import torch

    torch.set_num_threads(os.cpu_count())
    model = torch_geoclip(train_x.shape[1], seed)
    # Keras's Dense defaults (Glorot kernels, zero biases) on all layers,
    # or on the image or location tower only; or zero biases only.
    towers = {
        "glorot": model,
        "glorot_image": model.image,
        "glorot_location": model.branches,
        "zero_bias": model,
    }
    if init.startswith("copy_keras_"):  # the Keras model's start
        keras_init, parts = {
            "copy_keras_glorot": ("glorot", ("dense", "fourier")),
            "copy_keras_torch": ("torch", ("dense", "fourier")),
            "copy_keras_torch_dense": ("torch", ("dense",)),
            "copy_keras_torch_fourier": ("torch", ("fourier",)),
        }[init]
        _copy_keras_start(model, seed, keras_init, parts)
    for layer in towers[init].modules() if init in towers else ():
        if isinstance(layer, torch.nn.Linear):
            if init != "zero_bias":
                torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    if adam == "keras":
        opt = keras_style_adam(list(model.parameters()), 1e-3, eps)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=eps)
    steps = epochs * (len(train_x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed if shuffle_seed is None else shuffle_seed)
    q = torch.zeros(queue, 2)
    filled, ptr = 0, 0
    x_all = torch.from_numpy(train_x)
    g_all = torch.from_numpy(train_gps)
    sv = None
    if loss_name == "semivariogram":
        sv = SemivariogramTorch(queue, model.image[-1].out_features)
    for _ in range(epochs):
        order = rng.permutation(len(train_x))
        for s in range(len(train_x) // batch):
            idx = torch.from_numpy(order[s * batch : (s + 1) * batch])
            x, g = x_all[idx], g_all[idx]
            cand = torch.cat([g, q[:filled]], 0)
            scale = model.logit_scale
            if logit_cap is not None:  # as CLIP's clamp (and Keras's)
                scale = scale.clamp(max=math.log(logit_cap))
            img = model.images(x)
            logits = scale.exp() * (img @ model.locations(cand).T)
            if sv is not None:
                logits = sv.weigh(logits, img, g, cand, filled)
            loss = torch.nn.functional.cross_entropy(
                logits, torch.arange(batch)
            )
            if trace is not None:
                trace.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            q[ptr : ptr + batch] = g  # queue % batch == 0
            if sv is not None:
                sv.enqueue(img, ptr)
            ptr = (ptr + batch) % queue
            filled = min(queue, filled + batch)
        if sv is not None:
            fit = sv.refit()
            if os.environ.get("INDEPENDENT_VERBOSE"):
                print(
                    "  torch fit: nugget %.3f psill %.3f length %.0f alpha "
                    "%.2f range %.0f km, R2 %.2f, trusted %s" % fit
                )
    model.eval()

    def predict(test_x, gallery):
        with torch.no_grad():
            loc = torch.cat(
                [
                    model.locations(torch.from_numpy(gallery[i : i + 8192]))
                    for i in range(0, len(gallery), 8192)
                ]
            )
            img = model.images(torch.from_numpy(test_x))
            return gallery[(img @ loc.T).argmax(1).numpy()]

    return predict


def _copy_keras_start(model, seed, init, parts=("dense", "fourier")):
    """Loads the initial weights of `train_keras(init=init)`'s model (same
    seed) into the torch model: kernels (transposed), biases, the Fourier
    matrices and the logit scale, so both start from the same numbers and
    only the training code differs."""
    import keras
    import torch

    keras_model = make_keras_model(seed, init)
    keras_model.build((None, model.image[0].in_features))

    def value(layer, name):
        w = getattr(layer, name)
        return torch.from_numpy(np.array(keras.ops.convert_to_numpy(w)))

    def load(linear, dense):
        with torch.no_grad():
            linear.weight.copy_(value(dense, "kernel").T)
            linear.bias.copy_(value(dense, "bias"))

    image = keras_model.image_encoder
    if "dense" in parts:
        load(model.image[0], image.hidden)
        load(model.image[2], image.head)
    enc = keras_model.location_encoder
    for i, branch in enumerate(model.branches):
        layers = {
            w.path.split("/")[-2]: w for w in enc.weights if f"_{i}" in w.path
        }
        if "fourier" in parts:
            with torch.no_grad():
                branch.b.copy_(
                    torch.from_numpy(
                        np.array(keras.ops.convert_to_numpy(layers[f"rff_{i}"]))
                    )
                )
        names = ("dense_0", "dense_1", "head") if "dense" in parts else ()
        for j, name in zip((0, 2, 4), names):
            kernel = [
                w
                for w in enc.weights
                if w.path.endswith(f"branch_{i}_{name}/kernel")
            ][0]
            bias = [
                w
                for w in enc.weights
                if w.path.endswith(f"branch_{i}_{name}/bias")
            ][0]
            with torch.no_grad():
                branch.mlp[j].weight.copy_(
                    torch.from_numpy(np.array(kernel.numpy())).T
                )
                branch.mlp[j].bias.copy_(
                    torch.from_numpy(np.array(bias.numpy()))
                )
    with torch.no_grad():
        model.logit_scale.copy_(
            torch.tensor(float(keras_model.logit_scale.numpy()))
        )
        # Same start, same forward pass: the two implementations' location
        # and image embeddings of a few inputs must agree.
        rng = np.random.default_rng(0)
        gps = rng.uniform([-80, -180], [80, 180], (64, 2)).astype("float32")
        x = rng.uniform(0, 1, (8, model.image[0].in_features))
        x = x.astype("float32")
        loc = model.locations(torch.from_numpy(gps)).numpy()
        img = model.images(torch.from_numpy(x)).numpy()
    print(
        "  copied start: max |location embedding difference| "
        f"{np.abs(loc - keras_model.encode_location(gps)).max():.1e}, "
        f"image {np.abs(img - keras_model.encode_image(x)).max():.1e}"
    )


# ------------------------------------------------------ geovario-keras
def make_keras_model(seed, init):
    """The geovario-keras model of this comparison (not yet trained)."""
    import keras

    import geovario_keras as gv

    keras.utils.set_random_seed(seed)
    dense = {}
    if init == "torch":  # torch.nn.Linear's kernel: U(+-1/sqrt(fan_in))
        dense = {
            "kernel_initializer": keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform"
            )
        }
    return gv.GeoCLIP(
        image_encoder=gv.layers.ImageEncoder(
            None, embed_dim=256, hidden_units=512, **dense
        ),
        location_encoder=gv.layers.LocationEncoder(
            sigmas=(1, 16, 256),
            num_features=256,
            hidden_units=512,
            hidden_layers=2,
            embed_dim=256,
            seed=seed,
            **dense,
        ),
        queue_size=2048,
        gps_noise_m=(0.0, 0.0),
        seed=seed,
    )


def shared_order_batches(train_x, train_gps, batch, seed, epochs):
    """A `keras.utils.PyDataset` in the torch side's data order.

    Epoch `e` visits `order[e] = rng.permutation(N)` (one numpy generator
    seeded with `seed`, one permutation per epoch, as `train_torch` draws
    them) in `N // batch` full batches; the last partial batch is dropped,
    as on the torch side. Item `k` is batch `k % (N // batch)` of epoch
    `k // (N // batch)`, so `fit(..., steps_per_epoch=N // batch,
    shuffle=False)` reads the items in order without relying on Keras's
    epoch hooks.
    """
    import keras

    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(len(train_x)) for _ in range(epochs)]
    )
    steps = len(train_x) // batch

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return epochs * steps

        def __getitem__(self, k):
            e, i = divmod(k, steps)
            start = e * len(train_x) + i * batch
            idx = order[start : start + batch]
            return train_x[idx], train_gps[idx]

    return Batches(), steps


def StepLosses(trace):
    """A callback appending each training step's own loss to `trace`.

    Keras logs the running mean of the epoch; step `k`'s loss is
    `k * mean_k - (k - 1) * mean_(k-1)`.
    """
    import keras

    class Callback(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.mean = 0.0

        def on_train_batch_end(self, batch, logs=None):
            mean = float(logs["loss"])
            trace.append((batch + 1) * mean - batch * self.mean)
            self.mean = mean

    return Callback()


def train_keras(
    train_x,
    train_gps,
    epochs,
    seed,
    init,
    batch=256,
    loss_name="geoclip",
    shared_order=False,
    trace=None,
):
    import keras

    import geovario_keras as gv

    model = make_keras_model(seed, init)
    steps = epochs * (len(train_x) // batch)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    loss, callbacks = None, []
    if loss_name == "semivariogram":
        loss = gv.losses.SemivariogramContrastiveLoss()
        callbacks = [
            gv.callbacks.SemivariogramCallback(
                verbose=int(bool(os.environ.get("INDEPENDENT_VERBOSE")))
            )
        ]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    if trace is not None:
        callbacks = callbacks + [StepLosses(trace)]
    if shared_order:
        data, steps = shared_order_batches(
            train_x, train_gps, batch, seed, epochs
        )
        data, kwargs = (data,), {"steps_per_epoch": steps, "shuffle": False}
    else:  # Keras's own shuffle; the last partial batch is trained on
        data, kwargs = (train_x, train_gps), {"batch_size": batch}
    model.fit(*data, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs)
    if loss_name == "semivariogram":
        print(
            f"  keras range {callbacks[0].last_fit.effective_range_km:.0f} km"
        )

    def predict(test_x, gallery):
        model.set_gallery(gallery, verbose=0)
        return model.predict_gps(test_x, top_k=1)[0][:, 0]

    return predict


def print_traces(traces):
    """Step-by-step loss of torch and Keras, and how far apart they are."""
    for (loss_name, seed, impl), torch_loss in traces.items():
        if impl != "torch" or (loss_name, seed, "keras") not in traces:
            continue
        a = np.asarray(torch_loss)
        b = np.asarray(traces[(loss_name, seed, "keras")])
        n = min(len(a), len(b))
        diff = np.abs(a[:n] - b[:n])
        print(f"\nstep losses, {loss_name} loss, seed {seed} ({n} steps):")
        for step in (1, 2, 5, 10, 20, 50, 100, 200, 300, n):
            if step <= n:
                print(
                    f"  step {step:>4}: torch {a[step - 1]:.5f}, keras "
                    f"{b[step - 1]:.5f}, |diff| {diff[step - 1]:.2e}; "
                    f"max |diff| so far {diff[:step].max():.2e}"
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keras-init", nargs="*", default=["glorot", "torch"])
    parser.add_argument(
        "--torch-init",
        nargs="*",
        default=["default"],
        help="'default' (nn.Linear's), 'zero_bias' (nn.Linear's kernels, "
        "zero biases), 'glorot' (Keras's Dense), 'glorot_image' or "
        "'glorot_location' (Keras's Dense in one tower only), "
        "'copy_keras_glorot' / 'copy_keras_torch' (the exact initial "
        "weights of the Keras model with --keras-init glorot / torch, same "
        "seed; '_dense' or '_fourier' copies only those)",
    )
    parser.add_argument("--torch-adam-eps", type=float, default=1e-8)
    parser.add_argument(
        "--torch-adam",
        choices=("torch", "keras"),
        default="torch",
        help="torch.optim.Adam, or Adam with Keras's update rule (epsilon "
        "on the uncorrected sqrt(v); give --torch-adam-eps 1e-7 for "
        "Keras's value)",
    )
    parser.add_argument(
        "--torch-shuffle-seed",
        type=int,
        default=None,
        help="seed of the torch side's data order (default: the run's seed;"
        " the initial weights still come from the run's seed)",
    )
    parser.add_argument(
        "--data-order",
        choices=("own", "shared"),
        default="own",
        help="own: each side shuffles for itself (Keras also trains on the "
        "last partial batch); shared: the Keras side visits the torch "
        "side's batches in the same order (full batches only)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="record every training step's loss on both sides and print "
        "how far apart they are (use with --data-order shared and "
        "--torch-init copy_keras_glorot --keras-init glorot)",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        default=["geoclip"],
        choices=["geoclip", "semivariogram"],
    )
    parser.add_argument(
        "--torch-logit-cap",
        type=float,
        nargs="*",
        default=[0.0],
        help="caps of exp(logit_scale) on the torch side (0: none, as the "
        "reference; geovario-keras caps at 100, as CLIP); one run each",
    )
    parser.add_argument(
        "--data-dir", default=os.path.join("artifacts", "tensorflow_datasets")
    )
    args = parser.parse_args()

    import common
    import keras

    import geovario_keras as gv

    _, train, test = common.load_blue_marble(data_dir=args.data_dir)
    gallery = common.gallery_for(test["gps"])

    def flat(images):
        return (images.reshape(len(images), -1) / 255.0).astype("float32")

    train_x, test_x = flat(train["image"]), flat(test["image"])
    train_gps = train["gps"].astype("float32")
    print(
        f"keras {keras.__version__} ({keras.backend.backend()}), "
        f"geovario-keras {gv.__version__}; {len(train_x)} train / "
        f"{len(test_x)} test, inputs {train_x.shape[1]}-d, gallery "
        f"{len(gallery)}, {args.epochs} epochs"
    )
    runs = [
        (
            f"plain PyTorch, {i} init"
            + (f", cap {c:g}" if c else "")
            + (", Keras's Adam rule" if args.torch_adam == "keras" else ""),
            ("torch", (i, c or None)),
        )
        for i in args.torch_init
        for c in args.torch_logit_cap
    ]
    runs += [
        (f"geovario-keras, {i} init", ("keras", i)) for i in args.keras_init
    ]
    runs = [
        (name + ("" if loss == "geoclip" else f", {loss} loss"), run, loss)
        for loss in args.losses
        for name, run in runs
    ]
    rows, traces = {}, {}
    for name, (impl, init), loss_name in runs:
        for seed in args.seeds:
            start = time.time()
            if impl == "torch":
                predict = train_torch(
                    train_x,
                    train_gps,
                    args.epochs,
                    seed,
                    init[0],
                    args.torch_adam_eps,
                    logit_cap=init[1],
                    loss_name=loss_name,
                    shuffle_seed=args.torch_shuffle_seed,
                    trace=traces.setdefault((loss_name, seed, "torch"), [])
                    if args.trace
                    else None,
                    adam=args.torch_adam,
                )
            else:
                predict = train_keras(
                    train_x,
                    train_gps,
                    args.epochs,
                    seed,
                    init,
                    loss_name=loss_name,
                    shared_order=args.data_order == "shared",
                    trace=traces.setdefault((loss_name, seed, "keras"), [])
                    if args.trace
                    else None,
                )
            r = scores(predict(test_x, gallery), test["gps"])
            rows.setdefault(name, []).append(r)
            print(
                f"{name:>32} seed {seed}: "
                + " / ".join(f"{r[f'acc_{t}km']:.1f}" for t in THRESHOLDS_KM)
                + f", median {r['median_km']:.0f} km "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
    if args.trace:
        print_traces(traces)
    print("\n| implementation | 25 km | 200 km | 750 km | 2500 km | median |")
    print("|---|---|---|---|---|---|")
    for name, rs in rows.items():
        mean = {k: np.mean([r[k] for r in rs]) for k in rs[0]}
        print(
            f"| {name} | "
            + " | ".join(f"{mean[f'acc_{t}km']:.1f}" for t in THRESHOLDS_KM)
            + f" | {mean['median_km']:.0f} km |"
        )


if __name__ == "__main__":
    main()
