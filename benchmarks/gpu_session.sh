#!/usr/bin/env bash
# The GPU section of BENCHMARKS.md in one command, for a lent GPU machine
# whose Python has PyTorch and JAX but neither Keras nor TensorFlow.
#
# Here, once (downloads Keras and its two missing pure-Python or manylinux
# needs for that machine's Python 3.12 into .whl/, which git ignores):
#
#     make gpu-wheels
#
# There, from the repository root, carrying `.whl` and `.cache/geoclip`
# (the reference wheel, 40 MB), with a limit of 600 s (the stages' own
# limits add up to 560 s):
#
#     OUT=/some/dir bash benchmarks/gpu_session.sh
#
# It writes to $OUT (default artifacts/gpu): versions.txt (GPU, driver,
# library versions, the commit if given as GEOVARIO_COMMIT), log.txt (every
# stage's output), tables.md (run_all.py's tables and goals) and
# results.jsonl (every figure). The stages run in the order of the issue's
# goals, each under its own time limit, so that a stage that overruns
# leaves the others' results. QUICK=1 runs each stage small (a smoke test
# of this script, on any machine).
set -u
out=${OUT:-artifacts/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# No TensorFlow there: Keras must not start on its default backend (the
# stages set KERAS_BACKEND for each measurement themselves).
export KERAS_BACKEND=${KERAS_BACKEND:-jax}

if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/geovario_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/geovario_site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    date -u
    echo "commit: ${GEOVARIO_COMMIT:-unknown}"
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"
    "$py" - <<'EOF'
import platform
print("python", platform.python_version())
for name in ("keras", "jax", "torch", "numpy", "scipy"):
    try:
        module = __import__(name)
        print(name, module.__version__)
    except ImportError as error:
        print(name, "missing:", error)
try:
    import jax
    print("jax devices", jax.devices())
except Exception as error:  # noqa: BLE001
    print("jax devices: none", error)
try:
    import torch
    if torch.cuda.is_available():
        print("torch device", torch.cuda.get_device_name(0))
except ImportError:
    pass
EOF
} >"$out/versions.txt" 2>&1
cat "$out/versions.txt"

results="$out/results.jsonl"
log="$out/log.txt"
: >"$log"
stage() {
    # stage NAME SECONDS COMMAND...: its output appended to log.txt.
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds} s): $*" | tee -a "$log"
    local start=$SECONDS
    timeout "$seconds" "$@" >>"$log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$log"
}

if [ "${QUICK:-0}" = 1 ]; then
    steps=10 repeats=1 points=2000 gallery=(2000) queries=16 only=(--quick)
else
    steps=100 repeats=3 points=100000 gallery=(100000) queries=1024 only=()
fi

# 1. The per-step overhead: JAX, PyTorch eager and compiled, both losses.
stage step_overhead 200 "$py" benchmarks/step_overhead.py \
    --backends jax torch --torch-compile --steps "$steps" \
    --repeats "$repeats" --json "$results"
# 2. Encoder (float32, mixed_bfloat16) and one query against the reference,
#    and the full-size training step: run_all.py's tables and goals.
run_all_dir=$(mktemp -d)
stage run_all 280 "$py" benchmarks/run_all.py --backends jax torch \
    --points "$points" --repeats "$repeats" "${only[@]}" \
    --out "$run_all_dir"
cp "$run_all_dir/tables.md" "$out/tables.md" 2>/dev/null
cat "$run_all_dir/results.jsonl" >>"$results" 2>/dev/null
cat "$run_all_dir/log.txt" >>"$log" 2>/dev/null
# 3. Batched queries over the 100 K gallery (512-d, batches of 1,024).
stage large_gallery 80 "$py" benchmarks/large_gallery.py \
    --points "${gallery[@]}" --dim 512 --queries "$queries" \
    --backends jax torch --json "$results"
echo "results in $out"
