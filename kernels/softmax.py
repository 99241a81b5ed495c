"""Softmax, log-softmax and cross-entropy along one axis, and the NumPy references of
the softmax kernels (`vmem.kernels.cuda_softmax`).

`softmax`, `log_softmax` and `cross_entropy` take the array module first and are what
the layers call. Max-subtracted, so large logits do not overflow and very negative
logits do not underflow the normalizer. Entries equal to -inf get probability 0
(log-probability -inf) as long as their row has one finite entry; a row that is all
-inf, or that contains +inf or NaN, has no distribution and gives NaN, as in PyTorch.
On CuPy float32 input (and float16, but for the loss) they run on the CUDA kernels of
`vmem.kernels.cuda_softmax` when `VMEM_CUDA_SOFTMAX=1` (off by default until those
kernels have run on a GPU), else on array code.

The references below (NumPy only, along the last axis) are the cpu implementation of
the kernels and the oracle their tests compare with. Each follows its kernel's
algorithm (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"):

- `safe_softmax`: three passes -- max, sum of exp(x - max), output;
- `online_softmax`: the pair (m, d), running max and normaliser, computed per block of
  columns and merged with the paper's associative operator (`merge_normalizers`),
  then the output pass;
- `softmax_topk`: values and indices of the k largest probabilities, ranked by the
  logit (softmax is monotonic; NaN ranks above +inf, -0.0 equals +0.0), exact ties
  by the lower index;
- `softmax_backward`, `cross_entropy_grad`.

float16 and bfloat16 inputs are computed in float32, float32 in float32, float64 in
float64; results have the input's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmem.kernels.cuda_module import kernels_on

Array = Any

#: Columns per block of the blocked online reference.
ONLINE_BLOCK = 256


def _cuda_kernels(xp: Any, x: Array, axis: int, loss: bool = False) -> Any:
    """The CUDA kernel module when it should take this call, else None: float32, and
    float16 where no loss is computed (the loss kernels take float32)."""
    if not kernels_on(xp, "softmax"):
        return None
    dtypes = (np.float32,) if loss else (np.float32, np.float16)
    if x.dtype not in dtypes or x.ndim < 1 or axis not in (-1, x.ndim - 1) or x.size == 0:
        return None
    from vmem.kernels import cuda_softmax

    return cuda_softmax


def log_softmax(xp: Any, x: Array, axis: int = -1) -> Array:
    kernels = _cuda_kernels(xp, x, axis)
    if kernels is not None:
        return kernels.log_softmax(xp.ascontiguousarray(x))
    z = x - x.max(axis=axis, keepdims=True)
    lse = xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
    z -= lse
    return z


def softmax(xp: Any, x: Array, axis: int = -1) -> Array:
    kernels = _cuda_kernels(xp, x, axis)
    if kernels is not None:
        return kernels.online_softmax(xp.ascontiguousarray(x))
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def cross_entropy(xp: Any, logits: Array, labels: Array) -> tuple[Array, Array]:
    """(mean over rows of -log softmax(logits)[label], softmax(logits)) for logits
    (N, C) and integer labels (N,) in [0, C). The loss is a 0-d array of the
    logits' dtype."""
    kernels = _cuda_kernels(xp, logits, 1, loss=True) if logits.ndim == 2 else None
    if kernels is not None:
        return kernels.cross_entropy(xp.ascontiguousarray(logits), labels)
    n = logits.shape[0]
    logp = log_softmax(xp, logits, axis=1)
    loss = -logp[xp.arange(n), labels].mean()
    probs = xp.exp(logp, out=logp)
    return xp.asarray(loss, dtype=logits.dtype), probs


# ------------------------------------------------------------------ the references


def _is_floating(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _check(x: Any, fn: str) -> np.ndarray:
    """x as a NumPy array of a floating dtype with at least one axis."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{fn}: needs a NumPy array, got {type(x).__name__}")
    if not _is_floating(x.dtype):
        raise ValueError(f"{fn}: needs a floating dtype (float16, bfloat16, float32, "
                         f"float64), got {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{fn}: needs an array with at least one axis, got a 0-d array")
    return x


def merge_normalizers(m_a: np.ndarray, d_a: np.ndarray, m_b: np.ndarray, d_b: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The paper's operator [m_a, d_a] (+) [m_b, d_b] =
    [max, d_a e^(m_a - max) + d_b e^(m_b - max)], elementwise over arrays of pairs.

    Written as the kernels compute it: the max ignores NaN (fmax), and exponentials are
    taken against the max, or 0 when the max is -inf, so (-inf, 0) is the identity, a
    NaN in d survives, and a pair whose max is +inf gets d = NaN. Associative and
    commutative up to rounding."""
    m = np.fmax(m_a, m_b)
    ref = np.where(m == -np.inf, 0, m).astype(m.dtype, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        d = d_a * np.exp(m_a - ref) + d_b * np.exp(m_b - ref)
    return m, d


def _block_normalizers(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) of each row of a block of columns, as the kernels' per-thread step."""
    m = np.fmax.reduce(xb, axis=-1)
    ref = np.where(m == -np.inf, 0, m).astype(m.dtype, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.exp(xb - ref[..., None]).sum(axis=-1)
    return m, d


def online_normalizer(x: np.ndarray, block: int = ONLINE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) of every row of x (shape x.shape[:-1]): the pair of each block of `block`
    columns, merged pairwise as a tree (the shape of a GPU reduction), in the compute
    dtype. A row of no columns gives the identity (-inf, 0)."""
    x = _check(x, "online_normalizer")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"online_normalizer: block must be a positive integer, got {block!r}")
    xa = x.astype(_compute_dtype(x.dtype), copy=False)
    n = xa.shape[-1]
    if n == 0:
        shape = xa.shape[:-1]
        return np.full(shape, -np.inf, xa.dtype), np.zeros(shape, xa.dtype)
    parts = [_block_normalizers(xa[..., j:j + block]) for j in range(0, n, block)]
    while len(parts) > 1:
        merged = [merge_normalizers(*parts[i], *parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            merged.append(parts[-1])
        parts = merged
    return parts[0]


def online_softmax(x: np.ndarray, block: int = ONLINE_BLOCK) -> np.ndarray:
    """Softmax along the last axis from the online normaliser: y = e^(x - m) / d."""
    x = _check(x, "online_softmax")
    m, d = online_normalizer(x, block)
    xa = x.astype(m.dtype, copy=False)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        y = np.exp(xa - m[..., None]) / d[..., None]
    return y.astype(x.dtype, copy=False)


def safe_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax along the last axis in the paper's three passes: m = max x;
    d = sum e^(x - m); y = e^(x - m) / d."""
    x = _check(x, "safe_softmax")
    xa = x.astype(_compute_dtype(x.dtype), copy=False)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.fmax.reduce(xa, axis=-1, keepdims=True) if xa.shape[-1] else xa[..., :1]
        d = np.exp(xa - m).sum(axis=-1, keepdims=True)
        y = np.exp(xa - m) / d
    return y.astype(x.dtype, copy=False)


def order_keys(x: np.ndarray) -> np.ndarray:
    """Unsigned integers that order as the values of x, NaN above +inf and -0.0 equal
    to +0.0: the high word of the top-k kernels' codes (for float32)."""
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
    b = np.ascontiguousarray(x).view(bits).copy()
    sign = bits(1) << bits(8 * x.dtype.itemsize - 1)
    b[b == sign] = 0  # -0.0 -> +0.0
    key = np.where(b & sign, ~b, b | sign)
    key[np.isnan(x)] = np.iinfo(bits).max
    return key


def softmax_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the k largest probabilities of softmax along the last axis,
    best first: shapes (..., k), values in x's dtype, indices int64. Ranked by the
    logit; exact ties by the lower index; k from 1 to the row length."""
    x = _check(x, "softmax_topk")
    n = x.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"softmax_topk: k must be an integer, got {k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"softmax_topk: k must be between 1 and the row length {n}, got {k}")
    m, d = online_normalizer(x)
    # A stable sort of the complemented keys: larger logit first, equal keys in index order.
    order = np.argsort(~order_keys(x), axis=-1, kind="stable")[..., :k].astype(np.int64)
    top = np.take_along_axis(x, order, axis=-1).astype(m.dtype, copy=False)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = np.exp(top - m[..., None]) / d[..., None]
    return values.astype(x.dtype, copy=False), order


def softmax_backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(y * dy)) along the last axis, for y = softmax(x)."""
    y = _check(y, "softmax_backward")
    dy = _check(dy, "softmax_backward")
    if y.shape != dy.shape:
        raise ValueError(f"softmax_backward: y and dy differ in shape, {y.shape} and {dy.shape}")
    dtype = np.dtype(np.float64) if np.float64 in (y.dtype, dy.dtype) else np.dtype(np.float32)
    ya, ga = y.astype(dtype, copy=False), dy.astype(dtype, copy=False)
    dx = ya * (ga - (ya * ga).sum(axis=-1, keepdims=True))
    return dx.astype(y.dtype, copy=False)


def cross_entropy_grad(probs: np.ndarray, labels: np.ndarray, scale: float | None = None
                       ) -> np.ndarray:
    """(probs - onehot(labels)) * scale for probabilities (N, C) and integer labels (N,)
    in [0, C); scale 1/N by default: the gradient of the mean cross-entropy."""
    probs = _check(probs, "cross_entropy_grad")
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"cross_entropy_grad: needs probabilities (N, C), got shape {probs.shape}")
    n, c = probs.shape
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy_grad: needs integer labels of shape ({n},), got "
                         f"{labels.dtype} labels of shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"cross_entropy_grad: labels must lie in [0, {c}), got "
                         f"[{labels.min()}, {labels.max()}]")
    scale = 1.0 / n if scale is None else float(scale)
    g = probs.astype(_compute_dtype(probs.dtype), copy=True)
    g[np.arange(n), labels] -= 1
    g *= scale
    return g.astype(probs.dtype, copy=False)
