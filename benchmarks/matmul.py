"""Matmul peak of the current backend's library, per dtype.

A `(4096, 1024) @ (1024, 1024)` product (the shape of the location
encoder's hidden layers at batch 4096) in float32, bfloat16 and float16,
with the library behind `KERAS_BACKEND` called directly: `torch.matmul`,
`jax.jit(jnp.matmul)`, `tf.matmul` in a `tf.function` (XLA on a GPU, as
Keras compiles there). This is the ceiling the encoder figures are read
against. Where a dtype is emulated (bfloat16 on a CPU without bfloat16
arithmetic is ~100x slower in torch) fewer rows are timed.

Run: `KERAS_BACKEND=torch python benchmarks/matmul.py`.
"""

import argparse
import os
import time

import harness

SHAPE = (4096, 1024, 1024)


def kernel(backend, dtype, rows):
    n, k, m = SHAPE
    n = rows
    if backend == "torch":
        import torch

        device = harness.torch_device()
        a = torch.randn(n, k, device=device).to(getattr(torch, dtype))
        b = torch.randn(k, m, device=device).to(getattr(torch, dtype))
        return lambda: harness.torch_sync(a @ b)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((n, k), dtype)
        b = jnp.ones((k, m), dtype)
        f = jax.jit(jnp.matmul)
        return lambda: f(a, b).block_until_ready()
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    a = tf.ones((n, k), dtype)
    b = tf.ones((k, m), dtype)
    f = tf.function(tf.matmul, jit_compile=gpu)
    return lambda: f(a, b).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--max-seconds", type=float, default=1.0)
    args = harness.add_standard_args(parser).parse_args()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    _, k, m = SHAPE
    for dtype in args.dtypes:
        # Probe a small product, then size the timed one to the budget.
        probe = kernel(backend, dtype, 256)
        probe()
        start = time.perf_counter()
        probe()
        per_row = (time.perf_counter() - start) / 256
        rows = SHAPE[0]
        if per_row * rows > args.max_seconds:
            rows = max(64, int(args.max_seconds / per_row) // 64 * 64)
        fn = kernel(backend, dtype, rows)
        seconds, _ = harness.timed(fn, max(args.repeats, 5))
        harness.emit(
            {
                "benchmark": "matmul",
                "backend": backend,
                "dtype": dtype,
                "rows": rows,
                "gflops": 2 * rows * k * m / seconds / 1e9,
            },
            args.json,
        )


if __name__ == "__main__":
    main()
