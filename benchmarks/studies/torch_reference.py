"""GeoCLIP and the semivariogram loss in plain PyTorch, for comparison.

This module is an independent implementation of the published
specifications, written from the papers and the reference code's layout,
not from geovario-keras, so that training it beside `gv.GeoCLIP` on the
same data (`independent.py`) tests the package's code against another
code of the same method:

- **GeoCLIP** (Vivanco Cepeda et al. 2023): Equal Earth projection,
  frozen random Fourier features per scale (sigmas 1, 16, 256; 256
  features), ReLU MLP branches (2 x 512 hidden, 256-d output) summed, an
  MLP image head (512 -> 256), `exp(logit_scale) * cos` logits (started
  at log(1/0.07), not capped, as the reference), a FIFO queue of raw GPS
  re-encoded every step (masked until filled), torch's default
  `nn.Linear` initialisation and `torch.optim.Adam` defaults.
- **The semivariogram weighting** (Chen et al. 2025), `SemivariogramTorch`:
  streaming bin sums of the cosine dissimilarity of stop-gradient image
  embeddings (batch against batch and a feature queue aligned with the
  GPS queue; positives and identical coordinates left out) over
  great-circle distance bins from 0 to 20,100 km (finer below 1,000 km);
  at each epoch's end a stable model
  `nugget + psill (1 - exp(-(h / l)^alpha))` fitted by
  `scipy.optimize.least_squares` (soft-L1, weights sqrt(pairs));
  effective range `rho = l (ln 20)^(1 / alpha)` (95 % of the partial
  sill); a fit that explains under half of the pair-weighted spread of
  the bins, or whose range lies beyond the largest distance seen, is not
  used (no weighting until the next fit). From the first trusted fit on,
  negatives with `h <= rho` that look more alike than the fit expects
  (`r = gamma(h) - d > 0`) get weight 0.2, those with `h > rho` and
  `r > 0` weight `min(exp(2 r / sill), 5)`, as `logit + log w`.

`tests/benchmarks_test.py` checks the weighting against the package's
loss, the fit against a closed form and `keras_style_adam` against
`keras.optimizers.Adam`.
"""

import math
import os

import numpy as np


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
    start=None,
):
    """Trains the plain-PyTorch GeoCLIP; returns `predict(test_x, gallery)`.

    `init`: "default" (`nn.Linear`'s), "zero_bias", "glorot" (Keras's
    Dense: Glorot-uniform kernels, zero biases), "glorot_image" or
    "glorot_location" (one tower only); any other name leaves the
    default. `start(model)`, when given, then sets the initial weights.
    `eps`: Adam's epsilon; `adam`: "torch" (`torch.optim.Adam`) or
    "keras" (`keras_style_adam`). `logit_cap`: a cap of
    `exp(logit_scale)` (None: none, as the reference). `loss_name`:
    "geoclip" or "semivariogram". `trace`: a list to append each step's
    loss to.
    """
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
    if start is not None:  # e.g. another implementation's initial weights
        start(model)
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
