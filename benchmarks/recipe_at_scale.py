"""`recipes/paper.py` end to end on a generated corpus of `--photos` photos.

Writes a Blue Marble corpus (`gv.data.write_blue_marble_corpus`: JPEG
photos of `--image-size` pixels with their coordinates and admin labels,
0.5 % of them a test split) and a tiny random CLIP checkpoint (a ViT of 2
layers at 224 px, so the backbone costs little and the host's share of
the extraction shows), then runs the recipe's steps one by one, each in
its own process: `features`, `train` and `evaluate` for both methods,
`export`, with a small model (the recipe's options; the architecture does
not change the pipeline). It prints each step's time and peak memory
(the process's own), then runs `all` again, which must find every step
done. Everything is kept in `--work`; run again, it continues (the corpus
and CLIP are written once).

    KERAS_BACKEND=jax python benchmarks/recipe_at_scale.py --photos 100000 \\
        --work /tmp/recipe100k

Results: BENCHMARKS.md, "The recipe on 100 K generated photos".
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = [
    "--epochs", "1", "--batch-size", "512", "--queue-size", "1024",
    "--embed-dim", "64", "--location-hidden", "128",
    "--location-layers", "2", "--location-features", "64",
    "--checkpoints-per-epoch", "4", "--shuffle-buffer", "16384",
    "--gallery-size", "20000", "--extract-batch", "64",
]  # fmt: skip


def prepare(work, photos, image_size):
    import geovario_keras as gv
    from geovario_keras.testing.tiny_clip import write_tiny_clip

    corpus = os.path.join(work, "corpus")
    done = os.path.join(work, "corpus.done")
    if not os.path.exists(done):
        start = time.time()
        test = max(1, photos // 200)
        gv.data.write_blue_marble_corpus(
            corpus, photos - test, test, image_size=image_size
        )
        print(f"corpus: {photos} photos in {time.time() - start:.0f} s")
        open(done, "w").close()
    clip = os.path.join(work, "clip")
    if not os.path.isdir(clip):
        write_tiny_clip(clip, image_size=224, patch_size=32)
    return corpus, clip


def step(name, argv):
    """Runs `recipes/paper.py argv` and returns (seconds, peak MiB)."""
    start = time.time()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "recipes", "paper.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - start
    tail = [line for line in out.splitlines() if line.strip()][-3:]
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{out[-3000:]}")
    result = {"step": name, "seconds": round(seconds, 1)}
    result["peak_mib"] = round(usage.ru_maxrss / 1024)
    print(json.dumps(result), "|", " / ".join(tail)[-300:], flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--work", required=True)
    parser.add_argument(
        "--prepare-only", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.prepare_only:
        prepare(args.work, args.photos, args.image_size)
        return
    # In a child process: a step's peak memory (`wait4`) counts what its
    # process inherits at fork, so this process stays small.
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--prepare-only"]
        + ["--photos", str(args.photos), "--work", args.work]
        + ["--image-size", str(args.image_size)],
        check=True,
    )
    corpus = os.path.join(args.work, "corpus")
    clip = os.path.join(args.work, "clip")
    common = ["--run", os.path.join(args.work, "run"), "--corpus", corpus]
    common += ["--clip", clip, *MODEL]
    results = [step("features", ["features", *common])]
    for method in ("geoclip", "semivariogram"):
        for name in ("train", "evaluate", "export"):
            argv = [name, "--method", method, *common]
            results.append(step(f"{name} {method}", argv))
    results.append(step("all again (every step done)", ["all", *common]))
    with open(os.path.join(args.work, "run", "results.md")) as f:
        print(f.read())
    print(json.dumps(results))


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
