"""Softmax, log-softmax and cross-entropy along one axis.

Max-subtracted, so large logits do not overflow and very negative logits do not
underflow the normalizer. Entries equal to -inf get probability 0 (log-probability
-inf) as long as their row has one finite entry; a row that is all -inf, or that
contains +inf or NaN, has no distribution and gives NaN, as in PyTorch.
"""

from __future__ import annotations

from typing import Any

Array = Any


def log_softmax(xp: Any, x: Array, axis: int = -1) -> Array:
    z = x - x.max(axis=axis, keepdims=True)
    lse = xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
    z -= lse
    return z


def softmax(xp: Any, x: Array, axis: int = -1) -> Array:
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def cross_entropy(xp: Any, logits: Array, labels: Array) -> tuple[Array, Array]:
    """(mean over rows of -log softmax(logits)[label], softmax(logits)) for logits
    (N, C) and integer labels (N,) in [0, C). The loss is a 0-d array of the
    logits' dtype."""
    n = logits.shape[0]
    logp = log_softmax(xp, logits, axis=1)
    loss = -logp[xp.arange(n), labels].mean()
    probs = xp.exp(logp, out=logp)
    return xp.asarray(loss, dtype=logits.dtype), probs
