"""Runs every benchmark, side by side with the reference, and prints tables.

Each measurement runs in its own process (so peak memory is its own, and
no two libraries' thread pools compete), one after another, in this one
run: the matmul peaks, the location encoder and per-query latency
(`encoder.py`), and the training step (`train_step.py`), for the
reference PyTorch GeoCLIP and for geovario-keras on each backend and dtype
policy. Then it prints Markdown tables of figures and ratios, and the
performance goals with the measured value against each.

Run (after `make install`):

    .venv/bin/python benchmarks/run_all.py            # the full set
    .venv/bin/python benchmarks/run_all.py --quick    # a 2-3 minute smoke run

`--out DIR` keeps the raw results (`results.jsonl`) and the tables
(`tables.md`). On a CUDA machine the same command measures the GPU: torch
and JAX pick it up by their normal means.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402

GOALS = {
    "fp32": 0.95,
    "bf16": 2.0,
    "agreement": 0.99,
    "overhead": 0.05,
    "query": 1000.0,
}


def run_job(script, backend, args, results_path, log):
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONUNBUFFERED="1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.join(HERE, script)] + args
    cmd += ["--json", results_path]
    label = f"KERAS_BACKEND={backend} {script} {' '.join(args)}"
    print(f"[run_all] {label}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    log.write(f"$ {label}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"[run_all]   FAILED ({elapsed:.0f} s): {' | '.join(tail)}")
        return label
    print(f"[run_all]   done in {elapsed:.0f} s", flush=True)
    return None


def top1_agreement(save_dir, backend, policy):
    """Share of queries whose top-1 gallery point is float32's."""
    path = os.path.join(save_dir, f"{backend}-{policy}.npz")
    base = os.path.join(save_dir, f"{backend}-float32.npz")
    if not (os.path.exists(path) and os.path.exists(base)):
        return None
    low, ref = np.load(path), np.load(base)
    n = len(low["gallery"])
    a = np.argmax(low["queries"] @ low["gallery"].T, axis=1)
    b = np.argmax(ref["queries"] @ ref["gallery"][:n].T, axis=1)
    return float(np.mean(a == b))


def mib(memory):
    host = f"{memory['host_rss']:,.0f}"
    if memory.get("host_increase") is not None:
        host += f" (+{memory['host_increase']:,.0f})"
    if memory.get("device") is not None:
        return f"{host} / {memory['device']:,.0f}"
    return host


def tables(results, save_dir, failures):
    out = []
    emit = out.append
    matmul = [r for r in results if r["benchmark"] == "matmul"]
    enc = [r for r in results if r["benchmark"] == "encoder"]
    train = [r for r in results if r["benchmark"] == "train_step"]
    # The reference library's float32 matmul is the peak read against.
    peak32 = next(
        (
            r["gflops"]
            for r in matmul
            if r["dtype"] == "float32" and r["backend"] == "torch"
        ),
        None,
    )

    if matmul:
        emit("### Matmul peak (4096x1024 @ 1024x1024), same run\n")
        emit("| library | device | float32 | bfloat16 | float16 |")
        emit("|---|---|---|---|---|")
        for backend in dict.fromkeys(r["backend"] for r in matmul):
            row = {r["dtype"]: r for r in matmul if r["backend"] == backend}
            cells = []
            for dtype in ("float32", "bfloat16", "float16"):
                r = row.get(dtype)
                cells.append(
                    "-" if r is None else f"{r['gflops']:,.1f} GFLOP/s"
                )
            device = next(iter(row.values()))["device"]
            emit(f"| {backend} | {device} | " + " | ".join(cells) + " |")
        emit("")

    ref = next((r for r in enc if r["impl"] == "reference"), None)
    if enc:
        emit("### Location encoder over the GeoCLIP gallery\n")
        emit(
            "| implementation | backend | policy | points | points/s | "
            "GFLOP/s | of torch fp32 peak | vs reference | warm-up s | "
            "top-1 = fp32 | peak MiB (host / device) |"
        )
        emit("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in enc:
            ratio = (
                f"{r['points_per_s'] / ref['points_per_s']:.2f}x"
                if ref
                else "-"
            )
            share = "-"
            if r["impl"] == "keras" and r["policy"] != "float32":
                agreement = top1_agreement(save_dir, r["backend"], r["policy"])
                if agreement is not None:
                    r["agreement"] = agreement
                    share = f"{100 * agreement:.2f} %"
            of_peak = f"{r['gflops'] / peak32:.2f}" if peak32 else "-"
            emit(
                f"| {r['name']} | {r['backend']} | {r['policy']} | "
                f"{r['points']:,} | {r['points_per_s']:,.0f} | "
                f"{r['gflops']:.0f} | {of_peak} | {ratio} | "
                f"{r['encode_warmup_s']:.1f} | {share} | "
                f"{mib(r['encode_memory_mib'])} |"
            )
        emit("")
        emit("### One query, top-5 over the gallery\n")
        emit(
            "| implementation | backend | policy | gallery | ms per query | "
            "faster than the reference | warm-up s | peak MiB |"
        )
        emit("|---|---|---|---|---|---|---|---|")
        for r in enc:
            # The reference re-encodes its whole gallery per query: scale
            # to the same gallery size when ours was cut.
            speedup = "-"
            if ref and r is not ref:
                ref_s = ref["query_s"] * r["points"] / ref["points"]
                speedup = f"{ref_s / r['query_s']:,.0f}x"
                r["query_speedup"] = ref_s / r["query_s"]
            emit(
                f"| {r['name']} | {r['backend']} | {r['policy']} | "
                f"{r['points']:,} | {r['query_s'] * 1e3:,.1f} | {speedup} | "
                f"{r['query_warmup_s']:.2f} | {mib(r['query_memory_mib'])} |"
            )
        emit("")

    inter = [r for r in results if r["benchmark"] == "interleaved"]
    if inter:
        emit(
            "### Encoder, float32, reference and ours taking turns in one "
            "process\n"
        )
        emit(
            "| backend | points | reference points/s | ours points/s | "
            "vs reference |"
        )
        emit("|---|---|---|---|---|")
        for r in inter:
            emit(
                f"| {r['backend']} | {r['points']:,} | "
                f"{r['reference_points_per_s']:,.0f} | "
                f"{r['points_per_s']:,.0f} | {r['ratio']:.2f}x |"
            )
        emit("")

    tref = next((r for r in train if r["impl"] == "reference"), None)
    if train:
        emit(
            "### Training step: batch 512, queue 4096, 768-d features, "
            "full-size encoder\n"
        )
        emit(
            "| implementation | backend | policy | loss | XLA | s per step | "
            "vs reference | semivariogram overhead | warm-up s | peak MiB |"
        )
        emit("|---|---|---|---|---|---|---|---|---|---|")
        for r in train:
            ratio = f"{tref['step_s'] / r['step_s']:.2f}x" if tref else "-"
            overhead = "-"
            if r["loss"] == "semivariogram":
                base = next(
                    (
                        b
                        for b in train
                        if b["impl"] == "keras"
                        and b["loss"] == "geo"
                        and b["backend"] == r["backend"]
                        and b["policy"] == r["policy"]
                    ),
                    None,
                )
                if base:
                    r["overhead"] = r["step_s"] / base["step_s"] - 1.0
                    overhead = f"{100 * r['overhead']:+.1f} %"
            emit(
                f"| {r['name']} | {r['backend']} | {r['policy']} | "
                f"{r['loss']} | {'yes' if r['jit'] else 'no'} | "
                f"{r['step_s']:.3f} | {ratio} | {overhead} | "
                f"{r['warmup_s']:.1f} | {mib(r['memory_mib'])} |"
            )
        emit("")

    emit("### Goals\n")
    emit("| goal | target | measured | met |")
    emit("|---|---|---|---|")

    def goal(name, target, values, higher=True):
        if not values:
            emit(f"| {name} | {target} | not measured | - |")
            return
        for label, value, shown in values:
            ok = value >= target if higher else value <= target
            emit(
                f"| {name} ({label}) | {target} | {shown} | "
                f"{'yes' if ok else '**no**'} |"
            )

    ours = [r for r in enc if r["impl"] == "keras"]
    if ref:
        goal(
            "fp32 encoder throughput vs reference",
            GOALS["fp32"],
            [
                (r["backend"], v, f"{v:.2f}x")
                for r in ours
                if r["policy"] == "float32"
                for v in [r["points_per_s"] / ref["points_per_s"]]
            ],
        )
        bf16 = [r for r in ours if r["policy"] == "mixed_bfloat16"]
        if bf16:
            best = max(bf16, key=lambda r: r["points_per_s"])
            v = best["points_per_s"] / ref["points_per_s"]
            goal(
                "mixed_bfloat16 throughput vs reference, best backend",
                GOALS["bf16"],
                [(best["backend"], v, f"{v:.2f}x")],
            )
        goal(
            "top-1 unchanged vs float32",
            GOALS["agreement"],
            [
                (
                    f"{r['backend']} {r['policy']}",
                    r["agreement"],
                    f"{100 * r['agreement']:.2f} %",
                )
                for r in ours
                if "agreement" in r
            ],
        )
        goal(
            "per-query speed-up vs re-encoding",
            GOALS["query"],
            [
                (
                    f"{r['backend']} {r['policy']}",
                    r["query_speedup"],
                    f"{r['query_speedup']:,.0f}x",
                )
                for r in ours
                if "query_speedup" in r and r["policy"] == "float32"
            ],
        )
    goal(
        "fp32 encoder throughput vs reference, same process",
        GOALS["fp32"],
        [(r["backend"], r["ratio"], f"{r['ratio']:.2f}x") for r in inter],
    )
    goal(
        "semivariogram overhead of the step",
        GOALS["overhead"],
        [
            (
                f"{r['backend']} {r['policy']}",
                r["overhead"],
                f"{100 * r['overhead']:+.1f} %",
            )
            for r in train
            if "overhead" in r
        ],
        higher=False,
    )
    if failures:
        emit("\nFailed runs (see the log):")
        for label in failures:
            emit(f"- {label}")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backends", nargs="+", default=["tensorflow", "jax", "torch"]
    )
    parser.add_argument(
        "--policies", nargs="+", default=["float32", "mixed_bfloat16"]
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=["matmul", "encoder", "interleaved", "train"],
        choices=("matmul", "encoder", "interleaved", "train"),
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20K points, 2 repeats, 1 step, float32 only: a smoke run",
    )
    parser.add_argument("--out", default=None, help="keep results here")
    args = parser.parse_args()
    if args.quick:
        args.points, args.repeats, args.steps = 20_000, 2, 1
        args.policies = ["float32"]
    if not os.path.exists(harness.DEFAULT_WHEEL):
        sys.exit(
            f"The geoclip wheel is missing ({harness.DEFAULT_WHEEL}); run "
            "`make install` (it downloads it, hash pinned) or set "
            "GEOVARIO_GEOCLIP_WHEEL."
        )
    out = args.out or tempfile.mkdtemp(prefix="geovario_bench_")
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.jsonl")
    if os.path.exists(results_path):
        os.remove(results_path)
    save = os.path.join(out, "embeddings")
    common_args = ["--repeats", str(args.repeats)]
    failures = []
    start = time.perf_counter()
    print(f"[run_all] {harness.machine()}", flush=True)
    with open(os.path.join(out, "log.txt"), "w") as log:

        def job(script, backend, extra):
            label = run_job(
                script, backend, extra + common_args, results_path, log
            )
            if label:
                failures.append(label)

        if "matmul" in args.only:
            # torch always: the reference's own library sets the peak.
            for backend in dict.fromkeys(["torch"] + args.backends):
                job("matmul.py", backend, [])
        if "encoder" in args.only:
            enc = ["--points", str(args.points), "--save", save]
            job("encoder.py", "torch", ["--impl", "reference"] + enc)
            for policy in args.policies:
                for backend in args.backends:
                    job(
                        "encoder.py",
                        backend,
                        ["--impl", "keras", "--policy", policy] + enc,
                    )
        if "interleaved" in args.only:
            for backend in args.backends:
                job("interleaved.py", backend, [])
        if "train" in args.only:
            steps = ["--steps", str(args.steps)]
            job("train_step.py", "torch", ["--impl", "reference"] + steps)
            for backend in args.backends:
                job("train_step.py", backend, ["--impl", "keras"] + steps)
    results = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = [json.loads(line) for line in f if line.strip()]
    text = tables(results, save, failures)
    header = (
        f"Machine: {harness.machine()}\n"
        f"Settings: points {args.points}, repeats {args.repeats} (median), "
        f"train steps per repeat {args.steps}; total "
        f"{time.perf_counter() - start:.0f} s\n"
    )
    print("\n" + header + "\n" + text)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(header + "\n" + text + "\n")
    print(f"\n[run_all] raw results and log in {out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
