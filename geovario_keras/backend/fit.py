"""What `GeoCLIP.fit` needs per backend: state kept readable when a step
raises (JAX), in-memory arrays in a new order every epoch (TensorFlow) and
a compiled step that does not re-check the model's attributes at every
call (PyTorch) (`backend.state_kept_on_error`, `fresh_order_arguments`,
`step_function`)."""

import contextlib
import inspect
import math
import random
import warnings

import keras
import numpy as np

from geovario_keras.backend import NAME
from geovario_keras.backend.inference import is_tensor


def model_variables(model):
    """Every variable of `model`, its metrics and its built optimizer,
    once each (what a step or a checkpoint load may change)."""
    found = list(model.variables) + list(model.metrics_variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        found += list(optimizer.variables)
    return list({id(v): v for v in found}.values())


@contextlib.contextmanager
def state_kept_on_error(model):
    """Keeps `model`'s variables readable when `fit`/`evaluate` raises.

    JAX's Keras trainer detaches the variables' values while it trains
    (they travel through the jitted steps) and attaches the new ones at the
    end of an epoch. An exception before that, for instance a bad batch
    refused by `checked_features`, left every variable without a value:
    the model could no longer be read, saved or trained. On the way out of
    such an exception the last state the trainer holds is attached (the
    steps that ran count), else the values from before the call. Other
    backends keep their variables in place: nothing to do there.
    """
    if NAME != "jax":
        yield
        return
    before = [(v, v._value) for v in model_variables(model)]
    try:
        yield
    except BaseException:
        if getattr(model, "_jax_state", None):
            model.jax_state_sync()
        for variable, value in before:
            if variable._value is None and value is not None:
                variable.assign(value)
        raise


# ------------------------------------------------------ compiled steps
def _guard_kept(entry):
    # Every check but those on the layers' plain Python attributes: the
    # batch's (shapes, dtypes, structure), the global state's (grad mode),
    # the layers' tensors' (shape, dtype, `requires_grad`: a layer made
    # untrainable) and whether their gradients exist (Keras's step zeroes
    # them when they do: the first step is traced without, the others
    # with).
    return (
        not entry.orig_guard.source.is_unspecialized_nn_module()
        or entry.guard_type == "TENSOR_MATCH"
        or entry.name.endswith(".grad")
    )


def _kept_guards(entries):
    return [_guard_kept(entry) for entry in entries]


def step_function(function, model=None):
    """Keras's step `function`, compiled as JAX and TensorFlow compile it.

    With `jit_compile=True` on PyTorch, Keras hands its step to
    `torch.compile`, whose compiled code is guarded: before every call,
    TorchDynamo re-checks what the step read while it was traced, to
    recompile if something changed, among them the Python attributes of the
    model's layers (thousands of checks for a GeoCLIP). At a small model's
    size these checks cost a quarter of the step (BENCHMARKS.md,
    "Per-step overhead"). Here the step is compiled without the checks on
    the layers' plain attributes; those on the batch (shapes, dtypes,
    structure), on the global state, on the layers' tensors and on whether
    their gradients exist stay, so a smaller last batch, `sample_weight`
    or a layer made untrainable still compile anew. Another attribute of a
    layer changed after the first step (not a variable: their values are
    inputs) takes effect at the next `compile()`, as on JAX and TensorFlow,
    whose steps are traced once.

    Each step keeps its graphs apart (`torch.compile`'s
    `isolate_recompiles`): TorchDynamo otherwise shares graphs between all
    compiled calls of the same code (Keras's step function and the model
    classes' `train_step`) and, without the attribute checks, would run one
    model's graph for another model of the same classes, or the graph of a
    model's previous `compile()` (another loss, another optimizer setting).
    A torch without `isolate_recompiles` keeps Keras's step, with every
    check. Other backends, eager steps and functions already converted:
    returned unchanged.

    Where TorchDynamo cannot build the reduced checks, the step falls back
    to Keras's, with a warning. A step with a graph break may have run in
    part before that failure: until the first call that succeeds, the
    state of `model` (its variables, metrics' and optimizer's; a copy
    taken before each such call) is put back before the step runs again,
    so that the GPS queue, the statistics and the metrics count the batch
    once. A failure after a successful call (a new batch shape compiling)
    is not undone, and the warning says so.
    """
    if NAME != "torch" or getattr(function, "_geovario_step", False):
        return function
    original = getattr(function, "_torchdynamo_orig_callable", None)
    if original is None:  # eager
        return function
    import torch

    if "isolate_recompiles" not in inspect.signature(torch.compile).parameters:
        return function  # graphs shared: only every check tells them apart
    compiled = torch.compile(
        original,
        options={"guard_filter_fn": _kept_guards},
        isolate_recompiles=True,
    )
    current = [compiled]
    succeeded = [False]

    def step(*args, **kwargs):
        # Until a compiled call succeeds (the first compiles), a copy of
        # the state to put back if compiling fails after part of the step
        # ran; none once the step has fallen back to Keras's.
        saved = None
        if model is not None and not succeeded[0] and current[0] is compiled:
            saved = [
                (v, v.value.detach().clone()) for v in model_variables(model)
            ]
        try:
            out = current[0](*args, **kwargs)
        except torch._dynamo.exc.InternalTorchDynamoError as error:
            # TorchDynamo 2.13 builds the guards twice when some are left
            # out, and fails on a numpy array converted inside the step
            # (two tensors where it expects one): Keras's own compiled
            # step then, with every check.
            if current[0] is function:
                raise
            if saved is not None:
                for variable, value in saved:
                    variable.assign(value)
            warnings.warn(
                "The compiled training step failed to compile without "
                "TorchDynamo's checks of the layers' attributes "
                f"({type(error).__name__}: {str(error)[:200]}); it runs as "
                "Keras compiles it, with every check (slower per step). "
                "Numpy arrays converted inside a layer's `call` cause "
                "this: make them tensors once, outside the step."
                + (
                    ""
                    if saved is not None
                    else " The step that failed may have run in part before "
                    "it failed, then ran again whole: the state it updates "
                    "(the GPS queue, statistics, metrics) may count that "
                    "batch twice."
                ),
                stacklevel=2,
            )
            current[0] = function
            return function(*args, **kwargs)
        succeeded[0] = True
        return out

    step._geovario_step = True
    return step


# ----------------------------------------------------------- data order
def _is_array(x):
    return isinstance(x, np.ndarray) or is_tensor(x)


def _rows(x):
    return int(keras.tree.flatten(x)[0].shape[0])


def _take(arrays, start, stop):
    return keras.tree.map_structure(lambda t: t[start:stop], arrays)


def _tf_fresh_order(arrays, batch_size):
    """`arrays` as a `tf.data.Dataset` of batches in a new order per epoch.

    The shuffle of row indices has a seed drawn from Python's `random`
    (which `keras.utils.set_random_seed` sets) and reshuffles at every
    iteration, i.e. every epoch: a new permutation each epoch, the same
    sequence of permutations for the same seed.
    """
    import tensorflow as tf

    n = _rows(arrays)
    order = tf.data.Dataset.range(n).shuffle(
        n, seed=random.randint(0, 2**31 - 1), reshuffle_each_iteration=True
    )
    data = tf.data.Dataset.from_tensors(arrays).repeat()

    def gather(indices, values):
        return tf.nest.map_structure(lambda t: tf.gather(t, indices), values)

    dataset = tf.data.Dataset.zip((order.batch(batch_size), data))
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    policy = tf.data.experimental.AutoShardPolicy.DATA
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def fresh_order_arguments(a):
    """`fit`'s bound arguments `a`, fed in a new order every epoch.

    On TensorFlow, Keras's array adapter draws each epoch's permutation with
    an unseeded `tf.random.shuffle` inside a data set that is iterated anew
    each epoch; once a global seed is set (`keras.utils.set_random_seed`,
    as reproducible notebooks do), every epoch replays the first epoch's
    order, and the same batches meet the same queue negatives each epoch.
    For in-memory arrays with `shuffle=True` this hands Keras a `tf.data`
    pipeline that reshuffles every epoch instead (`validation_split` is
    applied first, to the last rows, as Keras does). JAX and PyTorch draw a
    new order per epoch already: `a` is returned unchanged there, and for
    data sets, generators, `shuffle=False`/`"batch"` or `class_weight`.
    """
    arrays = [a.get("x"), a.get("y")]
    if a.get("sample_weight") is not None:
        arrays.append(a["sample_weight"])
    if (
        NAME != "tensorflow"
        or a.get("shuffle", True) is not True
        or a.get("class_weight") is not None
        or not all(_is_array(t) for t in keras.tree.flatten(arrays))
    ):
        return a
    arrays = tuple(arrays)
    split = a.pop("validation_split", None) or 0.0
    if split and a.get("validation_data") is None:
        at = int(math.floor(_rows(arrays) * (1.0 - split)))
        a["validation_data"] = _take(arrays, at, None)
        arrays = _take(arrays, 0, at)
    a["x"] = _tf_fresh_order(arrays, a.pop("batch_size", None) or 32)
    for name in ("y", "sample_weight"):
        a.pop(name, None)
    a["shuffle"] = False  # the data set shuffles itself (Keras would warn)
    return a
