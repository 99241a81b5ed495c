"""Max and average pooling over NCHW, forward and backward.

Geometry follows `windows`: output size by the floor rule or, with `ceil_mode`,
the Caffe/PyTorch ceil rule. Every function loops over the k*k window offsets
in row-major order and moves one strided slice per offset. Off NumPy padding is
never materialized; on NumPy max pooling copies groups of planes into the stride's
phases of -inf-padded planes, where every offset is one 1-D view (`PaddedGrid`),
and the groups spread over the threads of `kernels.threads`: the same operations
on each element in the same order, so the same bits, many times faster than slices
of 4-D maps.

Max pooling treats padding as -inf. Its backward recomputes the maxima from the
input and routes each output gradient to the first maximum of its window in
row-major order (as Caffe and PyTorch do), so no index tensor is kept.

Average pooling divides by the window area counting padding
(count_include_pad=True), except that a window which ceil_mode lets run past the
padded edge is clipped there and divides by the clipped area (PyTorch's rule).

On CuPy, float32 and float64 calls on C-contiguous arrays go to the CUDA kernels of
`vmem.kernels.cuda_pooling` instead -- one launch per pass, no scratch, the same sums
in the same order, so the same bits -- unless `VMEM_CUDA_POOLING` is set to
something other than "1".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.threads import current_threads, for_ranges, on_threads
from vmem.kernels.windows import offset_slices, offsets_2d, pool_output_size

Array = Any


def _check_gradient(dy: Array, expected: tuple[int, ...]) -> None:
    """The output gradient must have the output's shape: a kernel would read past it."""
    if tuple(dy.shape) != tuple(expected):
        raise ValueError(f"pooling backward: dy has shape {tuple(dy.shape)}, expected "
                         f"{tuple(expected)}")


def output_hw(x_shape: tuple[int, ...], k: int, stride: int, pad: int, ceil_mode: bool
              ) -> tuple[int, int]:
    h, w = x_shape[-2:]
    return (pool_output_size(h, k, stride, pad, ceil_mode),
            pool_output_size(w, k, stride, pad, ceil_mode))


def max_pool_forward(xp: Any, x: Array, k: int, stride: int, pad: int, ceil_mode: bool
                     ) -> Array:
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    kernels = kernel_module(xp, "pooling", x)
    if kernels is not None:
        return kernels.max_pool_forward(x, xp.empty((n, c, ho, wo), dtype=x.dtype), k, stride,
                                        pad)
    y = xp.empty((n, c, ho, wo), dtype=x.dtype)
    if not on_threads(xp):
        _window_maxima(xp, x, y, k, stride, pad)
        return y
    grid = PaddedGrid.of((h, w), k, stride, pad, (ho, wo))
    x_planes, y_planes = x.reshape(n * c, h, w), y.reshape(n * c, ho, wo)

    def maxima(lo: int, hi: int) -> None:
        phases = grid.phased(xp, x_planes[lo:hi])
        y_planes[lo:hi] = grid.windows(grid.maxima(xp, phases, hi - lo), hi - lo)

    _over_planes(xp, n * c, h * w, grid.forward_bytes(x.dtype.itemsize), maxima)
    return y


def _window_maxima(xp: Any, x: Array, y: Array, k: int, stride: int, pad: int) -> None:
    """y (written over) = the maximum of each window of x, padding as -inf."""
    h, w = x.shape[-2:]
    ho, wo = y.shape[-2:]
    y.fill(-xp.inf)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = y[:, :, orow, ocol]
        xp.maximum(view, x[:, :, irow, icol], out=view)


# Scratch of max pooling's backward pass by slices of the 4-D maps (off NumPy, where
# no CUDA kernel runs), whatever the batch: the recomputed maxima, the pending
# windows and one offset's hits, for as many samples at once as fit in this (at
# least one sample).
MAX_POOL_SCRATCH_BYTES = 64 * 2**20

#: Scratch of one max-pooling task on NumPy (`PaddedGrid.*_bytes` a plane), on one
#: thread and on more: as many planes as fit go together (at least one). On one
#: thread a task's passes then run in a core's cache. On more, each pass is long
#: enough that taking the GIL back after it (a thread woken on an idle core, ~0.1 ms
#: on a VM) costs little beside it, which matters more than the cache; and a pass over
#: few planes is still cut into about TASKS_PER_THREAD tasks a thread. Planes are
#: independent: the grouping changes no result.
MAX_POOL_TASK_BYTES = 2 << 20
MAX_POOL_THREADED_TASK_BYTES = 8 << 20


def _over_planes(xp: Any, planes: int, plane_elements: int, plane_bytes: int, work: Any
                 ) -> None:
    """work(lo, hi) over groups of planes of `plane_elements` input elements each
    (`MAX_POOL_TASK_BYTES` of scratch each on one thread, `MAX_POOL_THREADED_TASK_BYTES`
    on more, at least `threads.TASK_ELEMENTS` input elements), spread over the threads."""
    threads = current_threads()
    task_bytes = MAX_POOL_TASK_BYTES if threads == 1 else MAX_POOL_THREADED_TASK_BYTES
    for_ranges(xp, planes, work, max(1, plane_bytes), task_bytes * threads,
               item_elements=plane_elements)


@dataclass(frozen=True)
class PaddedGrid:
    """Max pooling of one geometry as 1-D passes over flat arrays, NumPy's fast case:
    a pass over a strided slice of a 4-D map runs one short inner loop per row, a pass
    over a 1-D view one long loop.

    Each plane (one channel of one sample) is padded with -inf (`pad` rows and
    columns before, at least `pad` after, more where ceil_mode's last window runs
    past) to a multiple of the stride s each way, and split into its s * s phases:
    phase (a, b) holds the padded elements (s * t + a, s * u + b) as a `hq` x `wq`
    plane, the planes one after another in a flat buffer with a -inf tail (stride 1:
    one phase, the padded planes themselves). Window (i, j) of plane p is grid point
    q = (p * hq + i) * wq + j, and its offset (ki, kj) reads element
    q + (ki // s) * wq + kj // s of phase (ki % s, kj % s): each offset is one
    contiguous 1-D view over every grid point at once. Grid points with i >= ho or
    j >= wo are no windows: forward drops their values, backward routes nothing from
    them.

    With padding as -inf each window's maximum is that of its input elements, taken
    offset after offset in row-major order as `_window_maxima` takes them: the same
    bits. Routing compares each offset's view with the maxima, so a window whose
    maximum is -inf would match its padding: such planes are routed the reference
    way (`_route_reference`)."""

    h: int
    w: int
    k: int
    stride: int
    pad: int
    ho: int
    wo: int
    hq: int
    wq: int

    @classmethod
    def of(cls, hw: tuple[int, int], k: int, stride: int, pad: int, out_hw: tuple[int, int]
           ) -> PaddedGrid:
        (h, w), (ho, wo) = hw, out_hw
        hq = -(-max(h + 2 * pad, stride * (ho - 1) + k) // stride)
        wq = -(-max(w + 2 * pad, stride * (wo - 1) + k) // stride)
        return cls(h, w, k, stride, pad, ho, wo, hq, wq)

    @property
    def phases(self) -> int:
        return self.stride * self.stride

    def points(self, planes: int) -> int:
        """Grid points over `planes` planes."""
        return planes * self.hq * self.wq

    def phase_size(self, planes: int) -> int:
        """A phase's planes and a tail: every offset's view of the grid stays inside."""
        reach = (self.k - 1) // self.stride
        return max(self.points(planes), self.points(planes) + reach * (self.wq + 1))

    def forward_bytes(self, itemsize: int) -> int:
        """Scratch a plane: its phases and the maxima over its grid."""
        return (self.phases * self.phase_size(1) + self.points(1)) * itemsize

    def backward_bytes(self, x_itemsize: int, dy_itemsize: int) -> int:
        """Scratch a plane: forward's, the gradient's phases, the gradient on the grid and
        one offset's share of it, the pending windows and one offset's hits."""
        return (self.forward_bytes(x_itemsize) + self.phases * self.phase_size(1) * dy_itemsize
                + self.points(1) * (2 * dy_itemsize + 2))

    def offsets(self) -> list[tuple[int, int]]:
        """Each window offset's phase and distance into it, row-major."""
        s = self.stride
        return [((ki % s) * s + kj % s, (ki // s) * self.wq + kj // s)
                for ki in range(self.k) for kj in range(self.k)]

    def view(self, phases: list[Array], offset: tuple[int, int], points: int) -> Array:
        """The elements that `offset` of every grid point reads (a 1-D view)."""
        phase, shift = offset
        return phases[phase][shift:shift + points]

    def windows(self, grid: Array, planes: int) -> Array:
        """The windows of a grid array: a (planes, Ho, Wo) view."""
        return grid.reshape(planes, self.hq, self.wq)[:, :self.ho, :self.wo]

    def _interiors(self) -> list[tuple[int, tuple[slice, slice], tuple[slice, slice]]]:
        """Per phase holding input elements: its index, the (rows, columns) of its
        plane that hold them and the strided (rows, columns) of the input they are."""
        s, found = self.stride, []
        for a in range(s):
            rows = offset_slices(self.hq, self.h, a, s, self.pad)
            for b in range(s):
                cols = offset_slices(self.wq, self.w, b, s, self.pad)
                if rows is not None and cols is not None:
                    found.append((a * s + b, (rows[0], cols[0]), (rows[1], cols[1])))
        return found

    def _planes(self, flat: Array, planes: int) -> Array:
        return flat[:self.points(planes)].reshape(planes, self.hq, self.wq)

    def phased(self, xp: Any, x: Array) -> list[Array]:
        """x (planes, H, W) in new flat phases, -inf around it."""
        planes = x.shape[0]
        phases = []
        for _ in range(self.phases):
            flat = xp.empty(self.phase_size(planes), dtype=x.dtype)
            flat.fill(-xp.inf)
            phases.append(flat)
        for index, (prows, pcols), (xrows, xcols) in self._interiors():
            self._planes(phases[index], planes)[:, prows, pcols] = x[:, xrows, xcols]
        return phases

    def gather(self, phases: list[Array], out: Array) -> None:
        """out (planes, H, W) = the input elements of `phases` (each in one phase)."""
        planes = out.shape[0]
        for index, (prows, pcols), (xrows, xcols) in self._interiors():
            out[:, xrows, xcols] = self._planes(phases[index], planes)[:, prows, pcols]

    def maxima(self, xp: Any, phases: list[Array], planes: int) -> Array:
        """The maximum of each grid point's window, a new 1-D array: offset (0, 0)'s
        values, then the maximum with each further offset's, in row-major order."""
        points = self.points(planes)
        first, *rest = self.offsets()
        y = self.view(phases, first, points).copy()
        for offset in rest:
            xp.maximum(y, self.view(phases, offset, points), out=y)
        return y


def max_pool_backward(xp: Any, x: Array, dy: Array, k: int, stride: int, pad: int,
                      ceil_mode: bool) -> Array:
    """dx for max pooling: each dy goes to the first maximum of its window. On NumPy
    over groups of planes (`_over_planes`), which are independent, so the grouping
    changes no result."""
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    _check_gradient(dy, (n, c, ho, wo))
    kernels = kernel_module(xp, "pooling", x, dy)
    if kernels is not None:  # no scratch at all
        return kernels.max_pool_backward(x, dy, xp.empty(x.shape, dtype=dy.dtype), k, stride,
                                         pad)
    dx = xp.empty(x.shape, dtype=dy.dtype)
    if not on_threads(xp):  # in groups of samples, their scratch within the bound
        per_sample = c * ho * wo * (x.dtype.itemsize + 2)
        for_ranges(xp, n, lambda lo, hi: _route_reference(xp, x[lo:hi], dy[lo:hi], dx[lo:hi],
                                                          k, stride, pad),
                   per_sample, MAX_POOL_SCRATCH_BYTES)
        return dx
    grid = PaddedGrid.of((h, w), k, stride, pad, (ho, wo))
    planes = [a.reshape(n * c, *a.shape[2:]) for a in (x, dy, dx)]

    def route(lo: int, hi: int) -> None:
        xs, dys, dxs = (a[lo:hi] for a in planes)
        if _has_neg_inf(xp, xs):
            _route_reference(xp, xs[:, None], dys[:, None], dxs[:, None], k, stride, pad)
        else:
            _route_on_grid(xp, grid, xs, dys, dxs)

    _over_planes(xp, n * c, h * w, grid.backward_bytes(x.dtype.itemsize, dy.dtype.itemsize),
                 route)
    return dx


def _has_neg_inf(xp: Any, x: Array) -> bool:
    """Whether x holds -inf (NaN aside: fmin passes over it)."""
    return x.size > 0 and bool(xp.fmin.reduce(x, axis=None) == -xp.inf)


def _route_on_grid(xp: Any, grid: PaddedGrid, x: Array, dy: Array, dx: Array) -> None:
    """dx (planes, H, W; written over) for planes x holding no -inf, by 1-D passes
    (`PaddedGrid`): the same comparisons and additions in the same order as
    `_route_reference`, so the same bits."""
    planes = x.shape[0]
    phases = grid.phased(xp, x)
    y = grid.maxima(xp, phases, planes)
    points = y.size
    dy_grid = xp.zeros(points, dtype=dy.dtype)  # 0 on grid points that are no window
    grid.windows(dy_grid, planes)[...] = dy
    pending = xp.zeros(points, dtype=bool)  # windows whose maximum is not yet found
    grid.windows(pending, planes)[...] = True
    hits = xp.empty(points, dtype=bool)
    # Where dy is finite, each offset adds dy * hit everywhere: dy where hit, else +-0,
    # which leaves every value as it was, since dx never holds -0 (it starts at +0 and
    # only sums, rounded to nearest, follow); a branch-free pass, far faster than
    # adding only where hit. An infinite or NaN dy would give NaN where no hit.
    share = xp.empty(points, dtype=dy.dtype) if _finite_sum(xp, dy) else None
    dphases = [xp.zeros(grid.phase_size(planes), dtype=dy.dtype) for _ in phases]
    for offset in grid.offsets():
        xp.equal(grid.view(phases, offset, points), y, out=hits)
        hits &= pending
        pending ^= hits  # hits is a subset of pending: clears the windows found here
        view = grid.view(dphases, offset, points)
        if share is None:
            xp.add(view, dy_grid, out=view, where=hits)
        else:
            xp.add(view, xp.multiply(dy_grid, hits, out=share), out=view)
    grid.gather(dphases, dx)


def _finite_sum(xp: Any, a: Array) -> bool:
    """Whether a's sum is finite: then every element of a is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(xp.isfinite(a.sum(dtype=a.dtype)))


def _route_reference(xp: Any, x: Array, dy: Array, dx: Array, k: int, stride: int,
                     pad: int) -> None:
    """dx (written over) by slices of the 4-D maps, one kernel offset at a time in
    row-major order: each dy to the first input element equal to its window's
    maximum, never to padding."""
    h, w = x.shape[-2:]
    ho, wo = dy.shape[-2:]
    dx.fill(0)
    y = xp.empty(dy.shape, dtype=x.dtype)
    _window_maxima(xp, x, y, k, stride, pad)
    pending = xp.ones(y.shape, dtype=bool)  # windows whose maximum is not yet found
    hits = xp.empty(y.shape, dtype=bool)  # one offset's hits, in a view of this
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        hit = xp.equal(x[:, :, irow, icol], y[:, :, orow, ocol],
                       out=hits[:, :, :orow.stop - orow.start, :ocol.stop - ocol.start])
        still = pending[:, :, orow, ocol]
        hit &= still
        still ^= hit  # hit is a subset of still: clears the windows found here
        view = dx[:, :, irow, icol]
        if on_threads(xp):  # adding only where hit: dx never holds -0, so the same bits
            xp.add(view, dy[:, :, orow, ocol], out=view, where=hit)
        else:
            view += xp.where(hit, dy[:, :, orow, ocol], 0)


def avg_pool_divisor(xp: Any, x_shape: tuple[int, ...], k: int, stride: int, pad: int,
                     ceil_mode: bool, dtype: Any) -> Array:
    """(Ho, Wo) window areas: the part of each window inside the padded input."""
    h, w = x_shape[-2:]
    ho, wo = output_hw(x_shape, k, stride, pad, ceil_mode)

    def extent(out: int, size: int) -> Array:
        start = xp.arange(out) * stride - pad
        return xp.minimum(start + k, size + pad) - start

    area = extent(ho, h)[:, None] * extent(wo, w)[None, :]
    return area.astype(dtype)


def avg_pool_forward(xp: Any, x: Array, k: int, stride: int, pad: int, ceil_mode: bool
                     ) -> Array:
    n, c, h, w = x.shape
    ho, wo = output_hw(x.shape, k, stride, pad, ceil_mode)
    kernels = kernel_module(xp, "pooling", x)
    if kernels is not None:
        return kernels.avg_pool_forward(x, xp.empty((n, c, ho, wo), dtype=x.dtype), k, stride,
                                        pad)
    y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = y[:, :, orow, ocol]
        view += x[:, :, irow, icol]
    y /= avg_pool_divisor(xp, x.shape, k, stride, pad, ceil_mode, x.dtype)
    return y


def avg_pool_backward(xp: Any, dy: Array, x_shape: tuple[int, ...], k: int, stride: int,
                      pad: int, ceil_mode: bool) -> Array:
    h, w = x_shape[-2:]
    ho, wo = output_hw(x_shape, k, stride, pad, ceil_mode)
    _check_gradient(dy, (*x_shape[:2], ho, wo))
    kernels = kernel_module(xp, "pooling", dy)
    if kernels is not None:
        return kernels.avg_pool_backward(dy, xp.empty(tuple(x_shape), dtype=dy.dtype), k,
                                         stride, pad)
    g = dy / avg_pool_divisor(xp, x_shape, k, stride, pad, ceil_mode, dy.dtype)
    dx = xp.zeros(tuple(x_shape), dtype=dy.dtype)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        view = dx[:, :, irow, icol]
        view += g[:, :, orow, ocol]
    return dx
