"""# Train one GeoCLIP on real imagery, then look at what it learned

A notebook-like walk through one run: data → model → `fit` with the
semivariogram callback → evaluate (distance and admin-level accuracy) →
plots (the fitted variogram, the error histogram, a world map of errors) →
save the `.keras` file (and optionally a SavedModel for TF Serving).

Run: `python recipes/train.py [--method semivariogram] [--epochs 8]
[--seed 0] [--full] [--data-parallel] [--false-range-km 250]`; backend
from `KERAS_BACKEND`.
`--data-parallel` trains on every local device (JAX: keras.distribution,
TensorFlow: tf.distribute.MirroredStrategy) with global negatives.
`--job-addresses H0:P,H1:P --process-id I` trains in a job of several
processes, one per host or per GPU, started with the same arguments but
their own id (JAX: jax.distributed; TensorFlow: MultiWorkerMirroredStrategy;
README, "More than one device").
`recipes/evaluate.py` scores the saved model again; `recipes/compare.py`
is the multi-seed comparison.
"""

import argparse
import contextlib
import os
import sys
import tempfile

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiment  # noqa: E402
import reporting  # noqa: E402

import geovario_keras as gv  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # progress shows in logs too

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument(
    "--method", default="semivariogram", choices=list(experiment.METHODS)
)
parser.add_argument("--epochs", type=int, default=8)
parser.add_argument(
    "--false-range-km",
    type=experiment.false_range_km,
    default=experiment.DEMO_FALSE_RANGE_KM,
    help="false-negative range of the semivariogram losses, km, or 'fitted' "
    "(the package default); default: %(default)s, as in compare.py",
)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--full", action="store_true")
parser.add_argument(
    "--data-parallel",
    action="store_true",
    help="train on every local device (JAX or TensorFlow)",
)
parser.add_argument(
    "--job-addresses",
    default=os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"),
    help="train in a job of several processes (one per host or per GPU): "
    "'host:port' of each process, comma-separated, process 0's first (JAX "
    "needs only that one, with --num-processes); the same on every process",
)
parser.add_argument(
    "--num-processes",
    type=int,
    default=os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"),
    help="processes in the job (default: one per address)",
)
parser.add_argument(
    "--process-id",
    type=int,
    default=os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID"),
    help="this process's index in the job, 0 to N-1 (0 writes the outputs)",
)
parser.add_argument(
    "--failure-timeout",
    type=int,
    default=100,
    help="seconds after which a job stops when a process is lost",
)
parser.add_argument("--data-dir", default=experiment.DEFAULT_DATA_DIR)
parser.add_argument("--out", default=os.path.join("artifacts", "train"))
parser.add_argument("--export", default="", help="SavedModel base folder")
experiment.add_jit_compile_argument(parser)
args = parser.parse_args()
# Data parallel: set up first (a job of several processes must be joined
# before anything runs on the backend).
scope = None
if args.job_addresses:
    scope = experiment.data_parallel_scope(
        args.job_addresses,
        args.num_processes,
        args.process_id,
        args.failure_timeout,
    )
elif args.data_parallel:
    scope = experiment.data_parallel_scope()
chief = gv.backend.process_index() == 0  # writes the outputs
os.makedirs(args.out, exist_ok=True)
print(f"backend: {keras.backend.backend()}, method: {args.method}")

# ## 1. Data (built on first use; prints its build time, size and split)
builder, train, test = experiment.load_blue_marble(args.full, args.data_dir)
gallery = experiment.gallery_for(test["gps"])

# ## 2. Model and loss (recipes/experiment.py: a small CNN on the patch, a
# GeoCLIP location encoder with sigmas 1, 16, 256, a queue of 1024)
with scope or contextlib.nullcontext():
    model, history, seconds, callbacks = experiment.train(
        args.method,
        train,
        args.seed,
        args.epochs,
        verbose=2,
        false_range_km=args.false_range_km,
        jit_compile=args.jit_compile,
    )
print(f"trained in {seconds:.0f} s (jit_compile={model.jit_compile})")
model_path = os.path.join(args.out, f"geoclip_{args.method}.keras")
if gv.backend.process_count() > 1:
    # Every process saves (a save may run collectives; process 0 into
    # --out), then evaluates its own local copy of the model.
    target = model_path
    if not chief:
        target = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(target)
    keras.distribution.set_distribution(None)
    model = keras.models.load_model(target)

# ## 3. Evaluate: top-1 over the GeoNames gallery
report, coords, probs = experiment.evaluate(model, test, gallery)
for key, value in report.items():
    print(
        f"  {key:>12}: {value:.2f}"
        if isinstance(value, float)
        else f"  {key:>12}: {value}"
    )

if not chief:  # process 0 draws and saves
    sys.exit(0)

# ## 4. Plots
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

errors = np.asarray(gv.geo.haversine_km(coords[:, 0], test["gps"]))
saved = []
if callbacks:
    path = os.path.join(args.out, "variogram.png")
    callbacks[0].plot(callbacks[0].last_empirical, callbacks[0].last_fit, path)
    saved.append(path)

fig, ax = plt.subplots(figsize=(7, 4))
ax.hist(errors, bins=np.logspace(0, np.log10(20100), 40), color="tab:blue")
ax.set_xscale("log")
for t in gv.metrics.THRESHOLDS_KM:
    ax.axvline(t, color="grey", lw=0.8, ls="--")
ax.set_xlabel("great-circle error (km)")
ax.set_ylabel("test images")
ax.set_title(f"{args.method}: median {np.median(errors):.0f} km")
fig.tight_layout()
path = os.path.join(args.out, "error_histogram.png")
fig.savefig(path, dpi=100)
plt.close(fig)
saved.append(path)

path = os.path.join(args.out, "error_map.png")
reporting.error_map(test["gps"], errors, path, f"{args.method}: test errors")
saved.append(path)

# ## 5. Save (the gallery is part of the model state) and export
if gv.backend.process_count() == 1:
    model.save(model_path)
saved.append(model_path)
if args.export:
    saved.append(gv.export.export_saved_model(model, args.export, top_k=5))
print("wrote " + ", ".join(saved))
