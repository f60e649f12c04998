"""Test helpers: run a SavedModel the way TF Serving would.

`rest_predict` applies TF Serving's REST `predict` JSON encoding
(tensorflow_serving/g3doc/api_rest.md) to a loaded signature: the row format
(`"instances"`: one item per example; with a single named input the item is
that input's value, otherwise an object of named inputs) answers
`{"predictions": [...]}`, a list of per-example values (one named output) or
objects (several); the columnar format (`"inputs"`: the tensor, or an object
of named tensors) answers `{"outputs": ...}`, the tensor or an object of
named tensors. Only float inputs are handled (all our signatures).
"""

import json
import os
import subprocess
import sys

import numpy as np


def rest_predict(saved_model, request):
    """`request` (dict or JSON str) -> response dict, as TF Serving."""
    import tensorflow as tf

    if isinstance(request, str):
        request = json.loads(request)
    name = request.get("signature_name", "serving_default")
    fn = saved_model.signatures[name]
    specs = fn.structured_input_signature[1]
    if "instances" in request:
        rows = request["instances"]
        if len(specs) == 1:
            (key,) = specs
            inputs = {key: rows}
        else:
            inputs = {k: [row[k] for row in rows] for k in specs}
    else:
        columns = request["inputs"]
        if len(specs) == 1 and not isinstance(columns, dict):
            (key,) = specs
            columns = {key: columns}
        inputs = columns
    if set(inputs) != set(specs):
        raise ValueError(f"inputs {sorted(inputs)} != {sorted(specs)}")
    tensors = {
        k: tf.constant(np.asarray(v, specs[k].dtype.as_numpy_dtype))
        for k, v in inputs.items()
    }
    outputs = {k: v.numpy() for k, v in fn(**tensors).items()}
    if "instances" in request:
        n = len(request["instances"])
        if len(outputs) == 1:
            (value,) = outputs.values()
            return {"predictions": value.tolist()}
        return {
            "predictions": [
                {k: v[i].tolist() for k, v in outputs.items()} for i in range(n)
            ]
        }
    if len(outputs) == 1:
        (value,) = outputs.values()
        return {"outputs": value.tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def run_python(code, env=None, timeout=600):
    """Runs `code` in a fresh interpreter; returns stdout, raises on error."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc.stdout
