"""Shared helpers of the benchmark scripts: timing, memory, devices, output.

Every benchmark script measures **one** implementation (the reference
PyTorch GeoCLIP, or geovario-keras on the backend named by `KERAS_BACKEND`)
in its own process, so that peak memory is that implementation's alone.
`run_all.py` runs them one after another in one run and prints the tables.
With `--json FILE` a script appends its result as one JSON line to `FILE`.
"""

import json
import os
import platform
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# GeoCLIP's location encoder: per Fourier branch a 512 -> 1024 -> 1024 ->
# 1024 -> 512 MLP, three branches; 2 FLOP per multiply-add.
FLOP_PER_POINT = 3 * 2 * (512 * 1024 + 2 * 1024 * 1024 + 1024 * 512)

DEFAULT_WHEEL = os.environ.get(
    "GEOVARIO_GEOCLIP_WHEEL",
    os.path.join(ROOT, ".cache", "geoclip", "geoclip-1.3.0-py3-none-any.whl"),
)


def timed(fn, repeats, sync=None):
    """`(median seconds of `repeats` runs, seconds of the warm-up run)`.

    The first call is the warm-up (it includes compilation) and is timed
    apart. `sync(result)` waits for asynchronous devices (GPU, JAX).
    """
    sync = sync or (lambda result: result)
    start = time.perf_counter()
    sync(fn())
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup


def taking_turns(fns, repeats):
    """Times several implementations that take turns, pass by pass.

    Each function in the dict `fns` is called once as a warm-up (timed
    apart), then all of them in turn, `repeats` times, so that the drift of
    a shared machine hits them alike. Returns `(median seconds per name,
    warm-up seconds per name)`.
    """
    warmup = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        warmup[name] = time.perf_counter() - start
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}, warmup


# ------------------------------------------------------------------ memory
def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mib():
    """The resident set size now, MiB (None where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_memory():
    """Starts a new peak-memory window (host RSS and accelerator)."""
    try:  # Linux >= 4.0: "5" resets the VmHWM high-water mark.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def peak_memory_mib():
    """`{"host_rss": MiB, "device": MiB or None}` since the last reset.

    Host: the resident-set high-water mark (VmHWM, or `ru_maxrss` where the
    kernel cannot reset it). Device: the torch CUDA allocator's peak, or
    JAX's `peak_bytes_in_use` (JAX cannot reset it: a process high-water
    mark); None on CPU.
    """
    host = _status_kib("VmHWM")
    if host is None:
        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    device = None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.max_memory_allocated() / 2**20
    if device is None and "jax" in sys.modules:
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                device = stats["peak_bytes_in_use"] / 2**20
    return {"host_rss": host / 1024, "device": device}


# ----------------------------------------------------------------- devices
def torch_device():
    """The device torch runs on: CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(result=None):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result


def device_description():
    """What the current backend computes on, in words."""
    backend = os.environ.get("KERAS_BACKEND", "")
    try:
        if backend == "jax":
            import jax

            d = jax.devices()[0]
            return f"{d.platform}:{d.device_kind}"
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            return "gpu" if gpus else "cpu"
        import torch

        if torch.cuda.is_available():
            return "cuda:" + torch.cuda.get_device_name(0)
    except Exception as e:  # a description must never fail a benchmark
        return f"unknown ({e})"
    return "cpu"


def machine():
    """One line about this machine and the library versions."""
    info = [platform.processor() or platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info = [line.split(":", 1)[1].strip()]
                    break
    except OSError:
        pass
    info.append(f"{os.cpu_count()} cores")
    versions = []
    for name in ("keras", "tensorflow", "jax", "torch", "numpy"):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            pass
    return ", ".join(info) + "; " + ", ".join(versions)


# ------------------------------------------------------------------ output
def emit(result, json_path=None):
    """Prints `result` and appends it to `json_path` as one JSON line."""
    result = dict(result)
    result.setdefault("device", device_description())
    print(json.dumps(result), flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def implementation_parser(doc):
    """A parser with `--impl`, `--policy` and the standard arguments."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--impl", choices=("reference", "keras"), required=True)
    parser.add_argument("--policy", default="float32", choices=POLICIES)
    return add_standard_args(parser)


def add_standard_args(parser):
    parser.add_argument("--wheel", default=DEFAULT_WHEEL)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="append results here")
    return parser


def typical_variogram_fit():
    """A typical fit of the embedded data (range ~1,500 km): set on a model
    trained with the semivariogram loss, false and hard negatives occur and
    every branch of the loss runs."""
    import geovario_keras as gv

    return gv.semivariogram.VariogramFit(
        family="exponential",
        nugget=0.2,
        psill=0.6,
        length_scale=500.0,
        sill=0.8,
        effective_range_km=1500.0,
        converged=True,
    )


def run_child(script, argv, backend, json_path=None):
    """`script argv` in a fresh process on `backend`; its last output line
    parsed as JSON (and appended to `json_path`), or None if it failed."""
    import subprocess

    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = subprocess.run(
        [sys.executable, os.path.abspath(script), *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        print(out.stderr[-3000:])
        return None
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(row, flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def epoch_timer(times, key, excluded=None):
    """A Keras callback appending each epoch's seconds to `times[key]`,
    less `excluded[-1]` when given (time spent by an earlier callback's
    `on_epoch_end` that is not the epoch's own)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            if excluded:
                seconds -= excluded[-1]
            times.setdefault(key, []).append(seconds)

    return EpochTimer()
