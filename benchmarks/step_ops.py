"""Operators per training step at GeoCLIP's size, ours against the reference.

At the training size of `train_step.py` (batch 512, GPS queue 4096, 768-d
features, the full-size encoders), the number of operators one training
step runs: on a GPU each is (at least) one kernel launch, so at this size
the count, more than the arithmetic, sets the step's host cost.

- `--impl reference` (PyTorch): top-level ATen operators per step of the
  geoclip 1.3.0 wheel's own `train()` on its own model (torch profiler;
  operators called by other operators are not counted again).
- `--impl keras`, `KERAS_BACKEND=torch`: the same count for one
  `train_on_batch` of ours, per loss (`geo`, `semivariogram` with a fitted
  variogram set so every branch runs).
- `--impl keras`, `KERAS_BACKEND=jax`: the compiled training step's XLA
  fusions and instructions in the entry computation (each fusion is one
  kernel on a GPU), per loss.

    python benchmarks/step_ops.py --impl reference
    KERAS_BACKEND=torch python benchmarks/step_ops.py --impl keras --tiny
    KERAS_BACKEND=torch python benchmarks/step_ops.py --impl keras
    KERAS_BACKEND=jax python benchmarks/step_ops.py --impl keras

Results: BENCHMARKS.md, "Per-step overhead".
"""

import re

import harness
import train_step
from train_step import BATCH


def top_level_aten_ops(fn, steps):
    """Top-level ATen operators per step of `fn()` (which runs `steps`)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    top = [
        e
        for e in prof.events()
        if e.name.startswith("aten::")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    ]
    return len(top) / steps


def count_reference(args, gallery):
    import contextlib
    import io

    import torch

    from geovario_keras.testing import reference_geoclip as geoclip_ref

    model = geoclip_ref.reference_geoclip(
        args.wheel, queue_size=train_step.QUEUE
    ).train()
    train = geoclip_ref.reference_train_function(args.wheel)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-5)
    x, y = train_step.batches(gallery, args.steps)
    loader = [
        (torch.from_numpy(x[i : i + BATCH]), torch.from_numpy(y[i : i + BATCH]))
        for i in range(0, len(x), BATCH)
    ]

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.redirect_stderr(io.StringIO()):
                train(loader, model, optimizer, 0, BATCH, "cpu")

    run()  # warm-up
    return {"geo": {"aten_ops_per_step": top_level_aten_ops(run, args.steps)}}


def count_keras(args, gallery):
    import keras

    batch = BATCH
    if args.tiny:  # step_overhead.py's model, batch and queue
        import step_overhead

        batch = step_overhead.BATCH
    x, y = train_step.batches(gallery, args.steps * BATCH // batch + 1)
    x, y = x[: args.steps * batch], y[: args.steps * batch]
    out = {}
    for loss in ("geo", "semivariogram"):
        if args.tiny:
            name = "plain" if loss == "geo" else loss
            model = step_overhead.tiny_model(name)
        else:
            model = train_step.keras_model(args, gallery, loss)
        model.train_on_batch(x[:batch], y[:batch])  # builds and compiles
        if keras.backend.backend() == "torch":

            def run(model=model):
                for i in range(0, len(x), batch):
                    model.train_on_batch(x[i : i + batch], y[i : i + batch])

            count = top_level_aten_ops(run, args.steps)
            out[loss] = {"aten_ops_per_step": count}
        elif keras.backend.backend() == "jax":
            out[loss] = xla_counts(model, x[:batch], y[:batch])
    return out


def xla_counts(model, x, y):
    """Fusions and instructions of the entry computation of the compiled
    training step (what `fit` runs per step)."""
    import jax

    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
        purge_model_variables=False,
    )
    text = jax.jit(model.train_step).lower(state, (x, y)).compile().as_text()
    entry = text[text.index("ENTRY") :]
    entry = entry[: entry.index("\n}")]
    lines = [line for line in entry.splitlines()[1:] if " = " in line]
    fusions = [line for line in lines if re.search(r"\bfusion\(", line)]
    return {"xla_fusions": len(fusions), "xla_entry_instructions": len(lines)}


def main():
    parser = harness.implementation_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="step_overhead.py's tiny model (batch 64, queue 256) instead",
    )
    parser.add_argument("--jit-compile", default="auto", help="(train_step)")
    args = parser.parse_args()
    args.jit_compile = "auto"

    import keras

    import geovario_keras as gv

    gallery = gv.pretrained.load_geoclip_gallery(args.wheel)
    if args.impl == "reference":
        counts, backend = count_reference(args, gallery), "torch (reference)"
    else:
        counts, backend = count_keras(args, gallery), keras.backend.backend()
    for loss, count in counts.items():
        harness.emit(
            {"benchmark": "step_ops", "impl": backend, "loss": loss, **count},
            args.json,
        )


if __name__ == "__main__":
    main()
