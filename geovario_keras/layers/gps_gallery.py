"""Retrieval over a cached gallery of GPS coordinates."""

import keras
import numpy as np
from keras import ops

from geovario_keras import backend
from geovario_keras.api_export import register
from geovario_keras.utils import add_state
from geovario_keras.utils import check_int

# `search` holds at most LOGITS_PER_CALL float32 logits (64 MB) per call.
# Sets of up to 2**20 points are scored in place by blocks of queries;
# larger ones in chunks sized for blocks of up to SEARCH_QUERY_BLOCK queries
# (one query scores up to 16 M points in place, 256 queries chunks of
# 65,536).
LOGITS_PER_CALL = 1 << 24
SEARCH_QUERY_BLOCK = 256
# Embeddings stored in half precision are scored in float32 chunks of at
# most this many points (a float32 copy of 128 MB at 512-d), never as a
# float32 copy of the whole set.
HALF_PRECISION_CHUNK = 1 << 16
EMBEDDING_DTYPES = ("float32", "float16", "bfloat16")


def _chunk_top_k(keys, query, scale, top_k, top_k_fn=None):
    """Top-k scaled scores of `query` against `keys`, and their logsumexp.

    `top_k_fn(logits, k) -> (values, indices)`; default `keras.ops.top_k`.
    """
    # (K @ q^T)^T, not q @ K^T: the latter makes TensorFlow and JAX copy
    # the transposed (M, D) set on every call (BENCHMARKS.md). Keys stored
    # in half precision are scored in float32.
    query = ops.cast(query, "float32")
    keys = ops.cast(keys, "float32")
    logits = scale * ops.transpose(ops.matmul(keys, ops.transpose(query)))
    if top_k_fn is None:
        values, index = ops.top_k(logits, k=top_k)
    else:
        values, index = top_k_fn(logits, top_k)
    return values, index, ops.logsumexp(logits, axis=-1, keepdims=True)


def _as_dtype(x, dtype, copy):
    if backend.is_tensor(x):
        return ops.cast(x, dtype)
    if dtype == "bfloat16":  # numpy has no bfloat16: the backend casts
        return ops.cast(np.asarray(x, "float32"), dtype)
    x = np.array(x, dtype, copy=True if copy else None)
    return x if copy else backend.shared_host_tensor(x)


def check_dtype(embeddings_dtype):
    """`embeddings_dtype` if in `EMBEDDING_DTYPES`, else a `ValueError`."""
    if embeddings_dtype not in EMBEDDING_DTYPES:
        raise ValueError(
            f"`embeddings_dtype` must be one of {EMBEDDING_DTYPES}; got "
            f"{embeddings_dtype!r}."
        )
    return embeddings_dtype


def _merge_top_k(best, part, top_k):
    """Running merge of `(values, indices, log_normaliser)` top-k blocks."""
    if best is None:
        return part[0], part[1], part[2][:, 0]
    v = np.concatenate([best[0], part[0]], axis=1)
    i = np.concatenate([best[1], part[1]], axis=1)
    keep = np.argsort(-v, axis=1, kind="stable")[:, :top_k]
    log_norm = np.logaddexp(best[2], part[2][:, 0])
    return (
        np.take_along_axis(v, keep, 1),
        np.take_along_axis(i, keep, 1),
        log_norm,
    )


@register
class GPSGallery(keras.layers.Layer):
    """Top-k retrieval over a gallery of coordinates and their embeddings.

    Prediction in GeoCLIP is retrieval: every query image is scored against
    the location embeddings of a fixed gallery of coordinates (100K points in
    the paper). The reference implementation re-encodes the whole gallery on
    every call; this layer keeps the encoded gallery as non-trainable state,
    saved with the model and baked into exported SavedModels.
    `GeoCLIP.set_gallery` fills it; loading weights resizes it to the
    saved gallery.

    `call` scores normalised query embeddings against the gallery as
    `scale * q . g` and returns the `top_k` best coordinates with their
    probabilities: the softmax over the **whole** gallery, as in GeoCLIP.

    Args:
        size: int >= 0. Number of gallery points (0: empty).
        embed_dim: int. Embedding size.
        embeddings_dtype: `"float32"` (default), `"float16"` or
            `"bfloat16"`: how the embeddings are stored. Half precision
            halves the memory of a large set; scores are still computed in
            float32 (chunk by chunk), so only the stored values are rounded
            (float16: relative error <= 2**-11 per component).
        **kwargs: base `keras.layers.Layer` arguments.

    Call arguments:
        query_embeddings: `(N, embed_dim)` normalised query embeddings.
        scale: float or scalar tensor. Multiplies the cosine similarities
            (GeoCLIP: `exp(logit_scale)`).
        top_k: int in `[1, size]`.
        top_k_fn: `fn(logits, k) -> (values, indices)`; default
            `keras.ops.top_k`.

    Returns:
        `(coords (N, top_k, 2), probs (N, top_k))`, best first.

    Example:

    >>> gallery = GPSGallery(size=0, embed_dim=2)
    >>> gallery.set(np.array([[10.0, 20.0], [-5.0, 40.0]]),
    ...             np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> coords, probs = gallery(np.array([[0.0, 1.0]]), scale=1.0, top_k=1)
    >>> keras.ops.convert_to_numpy(coords).tolist()
    [[[-5.0, 40.0]]]
    """

    def __init__(
        self, size=0, embed_dim=512, embeddings_dtype="float32", **kwargs
    ):
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"`size` must be an int >= 0; got {size!r}.")
        self.size = size
        self.embed_dim = embed_dim
        self.embeddings_dtype = check_dtype(embeddings_dtype)
        self._make_variables(size)
        self.built = True

    @property
    def input_dtype(self):
        # Queries are scored in float32 under any dtype policy.
        return "float32"

    def _make_variables(self, size, coords=None, embeddings=None):
        self.coords = add_state(self, "coords", (size, 2), "float32", coords)
        self.embeddings = add_state(
            self,
            "embeddings",
            (size, self.embed_dim),
            self.embeddings_dtype,
            embeddings,
        )
        # Traced top-k functions hold the variables they saw: a new pair of
        # variables starts a new cache (kept out of Keras tracking).
        self.__dict__["_top_k_functions"] = {}

    def set(self, coords, embeddings, copy=True, embeddings_dtype=None):
        """Stores `coords (M, 2)` and `embeddings (M, embed_dim)`.

        Args:
            coords: `(M, 2)` latitude, longitude in degrees.
            embeddings: `(M, embed_dim)` normalised embeddings (stored as
                `embeddings_dtype`).
            copy: bool. False lets the state keep a numpy `embeddings` of
                the storage dtype itself where the backend can (PyTorch on
                the CPU), saving a copy of a large set: for buffers nobody
                modifies afterwards (`set_gallery` passes its own).
            embeddings_dtype: None (keep the layer's) or a new storage
                dtype from `EMBEDDING_DTYPES`.
        """
        size = int(coords.shape[0])
        old_dtype = self.embeddings_dtype
        if embeddings_dtype is not None:
            self.embeddings_dtype = check_dtype(embeddings_dtype)
        if tuple(embeddings.shape) != (size, self.embed_dim):
            raise ValueError(
                f"`embeddings` must have shape ({size}, {self.embed_dim}); "
                f"got {tuple(embeddings.shape)}."
            )
        # Host arrays stay on the host until the variable takes them (under
        # a sharded layout they go to their devices directly).
        coords = _as_dtype(coords, "float32", copy=True)  # small: a copy
        embeddings = _as_dtype(embeddings, self.embeddings_dtype, copy)
        if size != self.size or self.embeddings_dtype != old_dtype:
            # The shape changes: replace the variables (untracked on delete),
            # created from the values (no zero-filled copy of a large set).
            old = self.coords, self.embeddings, self._top_k_functions
            del self.coords
            del self.embeddings
            try:
                self._make_variables(size, coords, embeddings)
            except Exception as error:  # e.g. JAX's IndivisibleError
                self.coords, self.embeddings = old[:2]  # unchanged
                self.__dict__["_top_k_functions"] = old[2]
                self.embeddings_dtype = old_dtype
                if "divide" not in str(error):
                    raise
                raise ValueError(
                    f"A {self._what} of {size} points cannot be sharded "
                    "evenly by the layout of the current "
                    "`keras.distribution`: give it a multiple of the number "
                    f"of shards of its first axis. ({error})"
                ) from error
            self.size = size
            return
        self.coords.assign(coords)
        self.embeddings.assign(embeddings)

    def load_own_variables(self, store):
        # A saved gallery of another size (e.g. `load_weights` into a model
        # built with the default `gallery_size=0`) takes its stored size.
        if sorted(store.keys()) == ["0", "1"]:
            coords = np.asarray(store["0"])
            if coords.shape != (self.size, 2):
                self.set(coords, np.asarray(store["1"]))
                return
        super().load_own_variables(store)

    # How `check_top_k` names the set and the method that fills it.
    _what, _setter = "gallery", "model.set_gallery(gps)"

    def check_top_k(self, top_k, name="top_k"):
        """Raises a `ValueError` unless the set is filled and `top_k` fits."""
        if self.size == 0:
            raise ValueError(
                f"The {self._what} is empty: call `{self._setter}` with at "
                "least one point first."
            )
        if not isinstance(top_k, (int, np.integer)) or not (
            1 <= top_k <= self.size
        ):
            raise ValueError(
                f"`{name}` must be an int in [1, {self.size}] (the "
                f"{self._what} size); got {top_k!r}."
            )

    def call(self, query_embeddings, scale=1.0, top_k=5, top_k_fn=None):
        keys = ops.convert_to_tensor(self.embeddings)
        values, index, log_norm = _chunk_top_k(
            keys, query_embeddings, scale, top_k, top_k_fn
        )
        coords = ops.take(ops.convert_to_tensor(self.coords), index, axis=0)
        return coords, ops.exp(values - log_norm)

    def retrieve(
        self,
        query_embeddings,
        scale=1.0,
        top_k=5,
        batch_size=None,
        chunk_size=None,
    ):
        """`call` over numpy queries in blocks; returns numpy arrays.

        Args:
            query_embeddings: `(N, embed_dim)` normalised embeddings.
            scale: as in `call`.
            top_k: int in `[1, size]`.
            batch_size, chunk_size: as in `search`.

        Returns:
            `(coords (N, top_k, 2), probs (N, top_k))` numpy arrays.
        """
        logits, index, log_norm = self.search(
            query_embeddings, scale, top_k, batch_size, chunk_size
        )
        coords = self.coords_at(index)
        return coords, np.exp(logits - log_norm[:, None]).astype("float32")

    def coords_at(self, index):
        """The coordinates of the points `index` (ints, any shape).

        Gathered where the coordinates live, so a call moves only the rows
        asked for to the host (the whole coordinates are 80 MB for 10 M
        points).

        Returns:
            float32 numpy array of shape `index.shape + (2,)`.
        """
        index = np.asarray(index)
        rows = ops.take(
            ops.convert_to_tensor(self.coords),
            ops.convert_to_tensor(index.reshape(-1).astype("int32")),
            axis=0,
        )
        return ops.convert_to_numpy(rows).reshape(index.shape + (2,))

    def search(
        self,
        query_embeddings,
        scale=1.0,
        top_k=5,
        batch_size=None,
        chunk_size=None,
    ):
        """Top-k search in bounded memory, for sets of any size.

        Blocks of `batch_size` queries are scored against the set
        `chunk_size` points at a time, and the per-chunk top-k are merged
        as they come (their softmax normalisers combined), so the logits
        held at once are `batch_size x chunk_size`, however large the set.
        A set no larger than a chunk is scored in place; larger ones are
        sliced chunk by chunk inside the scoring function.

        Args:
            query_embeddings: `(N, embed_dim)` normalised embeddings.
            scale: float or scalar. Multiplies the cosine similarities.
            top_k: int in `[1, size]`.
            batch_size: int or None. Queries per block; default: blocks
                of about 64 MB of logits for sets up to 2**20 points, else
                up to 256.
            chunk_size: int or None. Set points scored at once; default:
                the whole set up to 2**20 points, else about 64 MB of
                logits for the block (2**24 points for one query, 65,536
                for 256); 65,536 for half-precision storage.

        Returns:
            `(logits (N, top_k), indices (N, top_k), log_normaliser (N,))`
            numpy: the best scaled similarities (best first), their row in
            the set, and the logsumexp of the scaled similarities over the
            whole set (so `exp(logits - log_normaliser)` are probabilities).
        """
        self.check_top_k(top_k)
        top_k = int(top_k)
        query_embeddings = np.asarray(query_embeddings, "float32")
        if chunk_size is None and self.embeddings_dtype != "float32":
            chunk_size = min(self.size, HALF_PRECISION_CHUNK)
        if chunk_size is None and self.size <= LOGITS_PER_CALL // 16:
            chunk_size = self.size  # in place, blocks of >= 16 queries
        if chunk_size is None:
            n = max(1, len(query_embeddings))
            block = batch_size or min(n, SEARCH_QUERY_BLOCK)
            block = check_int("batch_size", block)
            chunk = max(1, LOGITS_PER_CALL // block)
        else:
            chunk = check_int("chunk_size", chunk_size)
            block = batch_size or max(
                1, LOGITS_PER_CALL // min(chunk, self.size)
            )
            block = check_int("batch_size", block)
        chunk = min(chunk, self.size)
        scale = ops.convert_to_tensor(scale, "float32")
        # Chunks are sliced from the variable inside the scoring function
        # (a view on PyTorch, a chunk-sized buffer elsewhere): no copy of
        # the whole set is made.
        chunks = [
            (start, min(chunk, self.size - start))
            for start in range(0, self.size, chunk)
        ]
        out = ([], [], [])
        for start in range(0, len(query_embeddings), block):
            q = ops.convert_to_tensor(query_embeddings[start : start + block])
            best = None
            for offset, length in chunks:
                fn = self._top_k_function(min(top_k, length), length)
                origin = ops.convert_to_tensor([offset, 0], "int32")
                v, i, n = (
                    ops.convert_to_numpy(t) for t in fn(q, scale, origin)
                )
                best = _merge_top_k(best, (v, i + offset, n), top_k)
            for acc, value in zip(out, best):
                acc.append(value)
        if not out[0]:
            empty = np.zeros((0, top_k))
            return empty.astype("float32"), empty.astype("int64"), empty[:, 0]
        return tuple(np.concatenate(parts) for parts in out)

    def _top_k_function(self, top_k, length):
        # Scores against rows [origin[0], origin[0] + length) of the set,
        # read from the variable inside the traced function (a tensor
        # argument would be a copy of the set on every call). One trace per
        # (top_k, length): every chunk but the last has the same length.
        # Compiled where that reads the variables live (JAX: one `jax.jit`
        # taking their values; TensorFlow: a `tf.function`). XLA on the CPU
        # still copies a sliced chunk (BENCHMARKS.md), hence chunks only
        # beyond what one call can score in place.
        cache = self.__dict__["_top_k_functions"]
        if (top_k, length) not in cache:

            def fn(layer, args):
                q, scale, origin = args
                keys = ops.convert_to_tensor(layer.embeddings)
                if length != layer.size:
                    keys = ops.slice(keys, origin, (length, layer.embed_dim))
                return _chunk_top_k(keys, q, scale, top_k)

            compiled = backend.inference_function(self, fn)
            cache[(top_k, length)] = lambda q, scale, origin: compiled(
                (q, scale, origin)
            )
        return cache[(top_k, length)]

    def compute_output_shape(self, query_embeddings_shape, top_k=5, **kwargs):
        n = query_embeddings_shape[0]
        return (n, top_k, 2), (n, top_k)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "size": self.size,
                "embed_dim": self.embed_dim,
                "embeddings_dtype": self.embeddings_dtype,
            }
        )
        return config


@register
class ReferenceSet(GPSGallery):
    """Geotagged reference images: normalised image embeddings and coords.

    The state behind retrieval-augmented prediction: `GeoCLIP.set_reference`
    encodes a set of geotagged images (typically the training set) and keeps
    their L2-normalised image embeddings with their coordinates, saved with
    the model like the gallery. `search` finds the nearest reference images
    of each query (cosine similarity, chunked for references of millions);
    `gv.retrieval` votes over their locations.

    Args:
        size: int >= 0. Number of reference images (0: empty).
        embed_dim: int. Embedding size.
        **kwargs: base `keras.layers.Layer` arguments.

    Example:

    >>> refs = ReferenceSet(size=0, embed_dim=2)
    >>> refs.set(np.array([[10.0, 20.0], [-5.0, 40.0]]),
    ...          np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> sims, index, _ = refs.search(np.array([[0.6, 0.8]]), top_k=2)
    >>> index.tolist(), np.round(sims.astype("float64"), 2).tolist()
    ([[1, 0]], [[0.8, 0.6]])
    """

    _what, _setter = "reference set", "model.set_reference(x, gps)"
