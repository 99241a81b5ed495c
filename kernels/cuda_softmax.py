"""Softmax kernels for CuPy in CUDA C (RawModule, compiled by NVRTC on first use).

**Not yet run on a GPU.** The CUDA C below, every instantiation (the float16 ones
included), compiles with nvcc 13.0 for sm_90 and with NVRTC 13.5 under the options CuPy
14.2's RawModule uses (`scripts/nvrtc-check`: 350 kernels in 22 s on a 2-core CPU). Its
logic (indexing, barriers, warp shuffles, the merges, the float16 conversions) has run
on the CPU under a thread-per-CUDA-thread emulator against the NumPy references of
`vmem.kernels.softmax`; the emulator converts float16 in integer arithmetic, the GPU
with its cvt instructions. It has never executed on a real device, so its speed and its
behaviour under the real memory model are unverified until `tests/gpu/` and
`vmem bench` run on one.

float32, and for the softmax, log-softmax and top-k kernels float16 too (read and
written as float16, computed in float32, as the NumPy references do); the loss and
backward kernels take float32 (the layers' dtype). Every function takes C-contiguous
CuPy arrays, works along the last axis (rows = everything before it), and returns CuPy
arrays of its input's dtype.

Kernels (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"):

- safe softmax, three passes (max; sum of exponentials; output): the paper's baseline.
- online softmax: one pass for the pair (m, d) -- running max and normaliser -- merged
  across threads, warps and blocks with the paper's operator
  [m_a, d_a] (+) [m_b, d_b] = [max, d_a e^(m_a - max) + d_b e^(m_b - max)], then the
  output pass. Four ways to cover a row, chosen by `plan_rows`:
  * ``warp``: one warp per row (rows up to 1024 columns), the row held in registers:
    read once, written once, no block barrier;
  * ``block``: one block per row (up to 16384 columns), the row held in registers;
  * ``stream``: one block per row for longer rows when there are enough rows to fill
    the GPU: a pass for (m, d), then a pass that re-reads (mostly from L2) and writes;
  * ``split``: few long rows (16 x 1,048,576): each row is cut into chunks, one block
    per chunk writes its partial (m, d); a second kernel, one block per chunk, merges
    the row's partials (the same merge in every block, so every block gets the same
    bits) and writes its chunk -- in reverse block order, so the chunks read last by
    the first kernel are still in L2.
- fused online softmax + top-k (k <= 32): one read of the input; each thread keeps
  (m, d) and a sorted list of its k best (logit, index) codes in registers; the lists
  of a row are merged by k rounds of a warp/block arg-max. Few long rows: partial
  lists and pairs per chunk, merged by a small second kernel.
- log-softmax; softmax + per-row cross-entropy (the loss layer's forward); the fused
  gradient of the mean cross-entropy (p - onehot) / N; the gradient from saved
  probabilities; softmax backward dx = y (dy - sum(y dy)).

Special values follow the NumPy references: an entry -inf gets probability 0; a row
that is all -inf, or holds +inf or NaN, gives NaN throughout. Top-k ranks by the
logit (softmax is monotonic), NaN above +inf, -0.0 equal to +0.0, exact ties by the
lower index.

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vmem.kernels.cuda_module import HALF_SOURCE, LauncherSlot

Array = Any

#: NVRTC options. CuPy adds the architecture of the current device itself.
NVRTC_OPTIONS = ("--std=c++17",)

#: The largest k the fused top-k kernels accept.
MAX_TOPK = 32
#: Per-thread top-k list lengths compiled (k is rounded up to one of these).
TOPK_LIST_SIZES = (4, 8, 16, 32)

#: Floats of a row one thread holds in registers in the ``warp`` and ``block`` paths.
REGISTER_FLOATS = 32
#: Longest row held in registers (512 threads x 32 floats).
REGISTER_COLS = 16384
#: Longest row of the ``warp`` path.
WARP_COLS = 32 * REGISTER_FLOATS
#: Threads per block of the ``stream`` and ``split`` paths and of top-k blocks.
STREAM_THREADS = 512
SPLIT_THREADS = 256
TOPK_THREADS = 256
#: A split path cuts rows into chunks of at least this many elements ...
MIN_CHUNK = 4096
#: ... aiming at this many blocks per multiprocessor.
BLOCKS_PER_SM = 8

MODE_SOFTMAX, MODE_LOG_SOFTMAX, MODE_CROSS_ENTROPY, MODE_CE_GRAD = 0, 1, 2, 3
#: The CUDA element type of each dtype the kernels take (float16 travels as its bits).
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float16): "Half"}
#: The dtypes of the loss and backward kernels.
FLOAT32_ONLY = (np.dtype(np.float32),)
METHODS = ("auto", "warp", "block", "stream", "split")

SOURCE = HALF_SOURCE + r"""
// vmem softmax kernels: float32, and float16 in and out computed in float32. Not yet run
// on a GPU (see kernels/cuda_softmax.py).
#define VMEM_FULL_MASK 0xffffffffu

__device__ __forceinline__ float vmem_neg_inf() { return __uint_as_float(0xff800000u); }

__device__ __forceinline__ long long vmem_min_ll(long long a, long long b) { return a < b ? a : b; }

// ---------------------------------------------------------------- (m, d) pairs

struct MD { float m; float d; };

// Own aligned structs rather than CUDA's float2/float4, so the source needs no header
// under NVRTC; alignas(16) makes the compiler emit 16-byte loads and stores.
struct alignas(8) Pair { float m, d; };
struct alignas(16) Quad { float x, y, z, w; };

// float16 travels as its bits: Half and its conversions are cuda_half.cuh's (HALF_SOURCE).
struct alignas(16) Half8 { unsigned short h[8]; };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(Half v) { return half_to_float(v.bits); }

template <typename T> struct From;
template <> struct From<float> {
    static __device__ __forceinline__ float conv(float v) { return v; }
};
template <> struct From<Half> {
    static __device__ __forceinline__ Half conv(float v) {
        Half h;
        h.bits = float_to_half(v);
        return h;
    }
};

__device__ __forceinline__ MD md_make(float m, float d) { MD r; r.m = m; r.d = d; return r; }

__device__ __forceinline__ MD md_identity() { return md_make(vmem_neg_inf(), 0.0f); }

// The point exponentials are taken against: the max, or 0 when the max is -inf (every
// element -inf or NaN), so that exp(-inf - ref) = 0 and a NaN stays NaN.
__device__ __forceinline__ float md_ref(float m) { return m == vmem_neg_inf() ? 0.0f : m; }

// The paper's operator. Commutative bit for bit (max, and a sum of two products).
__device__ __forceinline__ MD md_merge(MD a, MD b) {
    const float m = fmaxf(a.m, b.m);
    const float r = md_ref(m);
    return md_make(m, a.d * __expf(a.m - r) + b.d * __expf(b.m - r));
}

// The pair of N values (-inf pads contribute nothing).
template <int N>
__device__ __forceinline__ MD md_of(const float (&v)[N]) {
    float m = vmem_neg_inf();
#pragma unroll
    for (int i = 0; i < N; ++i) m = fmaxf(m, v[i]);
    const float r = md_ref(m);
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < N; ++i) d += __expf(v[i] - r);
    return md_make(m, d);
}

// Butterfly over a warp: every lane ends with the same bits.
__device__ __forceinline__ MD md_warp_reduce(MD v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const MD w = md_make(__shfl_xor_sync(VMEM_FULL_MASK, v.m, o),
                             __shfl_xor_sync(VMEM_FULL_MASK, v.d, o));
        v = md_merge(v, w);
    }
    return v;
}

// Over the TPR threads of a row (a warp, or the whole block); every thread gets the result.
template <int TPR>
__device__ __forceinline__ MD md_row_reduce(MD v) {
    v = md_warp_reduce(v);
    if constexpr (TPR > 32) {
        __shared__ MD md_part[32];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (lane == 0) md_part[warp] = v;
        __syncthreads();
        v = md_warp_reduce(lane < TPR / 32 ? md_part[lane] : md_identity());
        __syncthreads();  // md_part may be written again by a later reduction
    }
    return v;
}

__device__ __forceinline__ float op_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float op_sum(float a, float b) { return a + b; }

template <bool MAX>
__device__ __forceinline__ float warp_reduce_f(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(VMEM_FULL_MASK, v, o);
        v = MAX ? op_max(v, w) : op_sum(v, w);
    }
    return v;
}

template <int TPR, bool MAX>
__device__ __forceinline__ float row_reduce_f(float v) {
    v = warp_reduce_f<MAX>(v);
    if constexpr (TPR > 32) {
        __shared__ float f_part[32];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (lane == 0) f_part[warp] = v;
        __syncthreads();
        v = warp_reduce_f<MAX>(lane < TPR / 32 ? f_part[lane] : (MAX ? vmem_neg_inf() : 0.0f));
        __syncthreads();
    }
    return v;
}

// ---------------------------------------------------------------- vector access

// Index i counts vectors of VEC elements of type T, loaded as and stored from float32;
// the wide vectors (4 floats, 8 halves) need 16-byte aligned rows.
template <typename T, int VEC> struct Vec;

template <typename T> struct Vec<T, 1> {
    static __device__ __forceinline__ void load(const T* p, long long i, float* v) {
        v[0] = to_float(p[i]);
    }
    static __device__ __forceinline__ void store(T* p, long long i, const float* v) {
        p[i] = From<T>::conv(v[0]);
    }
};

template <> struct Vec<float, 4> {
    static __device__ __forceinline__ void load(const float* p, long long i, float* v) {
        const Quad t = reinterpret_cast<const Quad*>(p)[i];
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    }
    static __device__ __forceinline__ void store(float* p, long long i, const float* v) {
        Quad t;
        t.x = v[0]; t.y = v[1]; t.z = v[2]; t.w = v[3];
        reinterpret_cast<Quad*>(p)[i] = t;
    }
};

template <> struct Vec<Half, 8> {
    static __device__ __forceinline__ void load(const Half* p, long long i, float* v) {
        const Half8 t = reinterpret_cast<const Half8*>(p)[i];
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = half_to_float(t.h[e]);
    }
    static __device__ __forceinline__ void store(Half* p, long long i, const float* v) {
        Half8 t;
#pragma unroll
        for (int e = 0; e < 8; ++e) t.h[e] = float_to_half(v[e]);
        reinterpret_cast<Half8*>(p)[i] = t;
    }
};

// Loads in flight per thread in the streaming loops: 64 bytes of float4, 32 of half8.
template <int VEC> struct Unroll { static constexpr int value = VEC == 1 ? 8 : 16 / VEC; };

template <typename T, int VEC>
__device__ __forceinline__ void load_or_pad(const T* p, long long i, long long n, float* v) {
    if (i < n) {
        Vec<T, VEC>::load(p, i, v);
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[e] = vmem_neg_inf();
    }
}

// ---------------------------------------------------------------- outputs

// MODE 0 softmax, 1 log-softmax, 2 softmax (+ the row's loss elsewhere),
// 3 gradient of the mean cross-entropy, (p - onehot) * scale.
template <int MODE>
__device__ __forceinline__ float emit(float v, long long col, long long label, float m,
                                      float inv_d, float log_d, float scale) {
    if constexpr (MODE == 1) {
        return v - m - log_d;
    } else if constexpr (MODE == 3) {
        const float p = __expf(v - m) * inv_d;
        return (p - (col == label ? 1.0f : 0.0f)) * scale;
    } else {
        return __expf(v - m) * inv_d;
    }
}

// The row's label, or -1 (no onehot, NaN loss) when out of range or not needed.
template <int MODE>
__device__ __forceinline__ long long row_label(const long long* labels, long long row, int cols) {
    if constexpr (MODE >= 2) {
        const long long l = labels[row];
        return (l >= 0 && l < cols) ? l : -1;
    } else {
        return -1;
    }
}

// -log softmax(x)[label] = log d + m - x[label].
template <typename T, int MODE>
__device__ __forceinline__ void write_loss(const T* xr, long long label, MD md,
                                           float* row_loss, long long row) {
    if constexpr (MODE >= 2) {
        row_loss[row] = label >= 0 ? logf(md.d) + md.m - to_float(xr[label])
                                   : __uint_as_float(0x7fc00000u);
    }
}

// Streams vectors [vbeg, vend) of a row: thread t takes vbeg + t, + STRIDE, ...
template <typename T, int VEC, int STRIDE>
__device__ __forceinline__ MD md_scan(const T* xr, long long vbeg, long long vend, int t) {
    constexpr int U = Unroll<VEC>::value;
    MD acc = md_identity();
    for (long long j0 = vbeg + t; j0 < vend; j0 += (long long)STRIDE * U) {
        float v[U * VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            load_or_pad<T, VEC>(xr, j0 + (long long)u * STRIDE, vend, v + u * VEC);
        acc = md_merge(acc, md_of(v));
    }
    return acc;
}

template <typename T, int VEC, int STRIDE, int MODE>
__device__ __forceinline__ void emit_scan(const T* xr, T* yr, long long vbeg,
                                          long long vend, int t, MD md, long long label,
                                          float scale) {
    constexpr int U = Unroll<VEC>::value;
    const float inv_d = 1.0f / md.d;
    const float log_d = logf(md.d);
    for (long long j0 = vbeg + t; j0 < vend; j0 += (long long)STRIDE * U) {
        float v[U * VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            load_or_pad<T, VEC>(xr, j0 + (long long)u * STRIDE, vend, v + u * VEC);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const long long j = j0 + (long long)u * STRIDE;
            if (j < vend) {
                float o[VEC];
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                    o[e] = emit<MODE>(v[u * VEC + e], j * VEC + e, label, md.m, inv_d, log_d,
                                      scale);
                Vec<T, VEC>::store(yr, j, o);
            }
        }
    }
}

// ---------------------------------------------------------------- online softmax

// Rows in registers. TPR threads per row: 32 (a warp; four rows per 128-thread block)
// or the whole block. Each thread holds ITEMS vectors of VEC floats: read once, written once.
template <typename T, int VEC, int ITEMS, int TPR, int MODE>
__global__ void __launch_bounds__(TPR < 128 ? 128 : TPR)
online_rows(const T* x, T* y, long long rows, int cols, const long long* labels,
            float* row_loss, float scale) {
    constexpr int BLOCK = TPR < 128 ? 128 : TPR;
    const int t = threadIdx.x % TPR;
    const long long row = (long long)blockIdx.x * (BLOCK / TPR) + threadIdx.x / TPR;
    if (TPR < BLOCK && row >= rows) return;  // whole warps leave; warp rows use no block barrier
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    const long long nvec = cols / VEC;
    float v[ITEMS * VEC];
#pragma unroll
    for (int k = 0; k < ITEMS; ++k)
        load_or_pad<T, VEC>(xr, t + (long long)k * TPR, nvec, v + k * VEC);
    const MD md = md_row_reduce<TPR>(md_of(v));
    const long long label = row_label<MODE>(labels, row, cols);
    const float inv_d = 1.0f / md.d;
    const float log_d = logf(md.d);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
        const long long j = t + (long long)k * TPR;
        if (j < nvec) {
            float o[VEC];
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                o[e] = emit<MODE>(v[k * VEC + e], j * VEC + e, label, md.m, inv_d, log_d, scale);
            Vec<T, VEC>::store(yr, j, o);
        }
    }
    if (t == 0) write_loss<T, MODE>(xr, label, md, row_loss, row);
}

// One block per row; the second pass re-reads the row (from L2 when it is still there).
template <typename T, int VEC, int THREADS, int MODE>
__global__ void __launch_bounds__(THREADS)
online_stream(const T* x, T* y, long long rows, int cols, const long long* labels,
              float* row_loss, float scale) {
    const long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    const long long nvec = cols / VEC;
    const MD md = md_row_reduce<THREADS>(md_scan<T, VEC, THREADS>(xr, 0, nvec, threadIdx.x));
    const long long label = row_label<MODE>(labels, row, cols);
    emit_scan<T, VEC, THREADS, MODE>(xr, yr, 0, nvec, threadIdx.x, md, label, scale);
    if (threadIdx.x == 0) write_loss<T, MODE>(xr, label, md, row_loss, row);
}

// The chunk of a split row that block b covers: row b / splits, chunk s = b % splits,
// the row's vectors [vbeg, vend).
struct SplitChunk { long long row, s, vbeg, vend; };

template <int VEC>
__device__ __forceinline__ SplitChunk split_chunk(long long b, int cols, int splits,
                                                  long long chunk_vec) {
    SplitChunk c;
    c.row = b / splits;
    c.s = b % splits;
    c.vbeg = c.s * chunk_vec;
    c.vend = vmem_min_ll(c.vbeg + chunk_vec, (long long)(cols / VEC));
    return c;
}

// Split rows, kernel 1 of 2: block b = row * splits + s writes the pair of chunk s.
template <typename T, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS)
online_partials(const T* x, long long rows, int cols, int splits, long long chunk_vec,
                Pair* partials) {
    const long long b = blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    const MD md =
        md_row_reduce<THREADS>(md_scan<T, VEC, THREADS>(xr, c.vbeg, c.vend, threadIdx.x));
    if (threadIdx.x == 0) { Pair p; p.m = md.m; p.d = md.d; partials[b] = p; }
}

// The merged pair of a row's partials; the same order in every block, so the same bits.
template <int THREADS>
__device__ __forceinline__ MD merge_partials(const Pair* partials, long long row, int splits) {
    MD md = md_identity();
    for (int i = threadIdx.x; i < splits; i += THREADS) {
        const Pair p = partials[row * splits + i];
        md = md_merge(md, md_make(p.m, p.d));
    }
    return md_row_reduce<THREADS>(md);
}

// Split rows, kernel 2 of 2: merge the row's partials, write chunk s. Blocks run in reverse
// order of kernel 1, so the chunks it read last are still in L2 when they are read again.
template <typename T, int VEC, int THREADS, int MODE>
__global__ void __launch_bounds__(THREADS)
online_split_output(const T* x, T* y, long long rows, int cols, int splits,
                    long long chunk_vec, const Pair* partials, const long long* labels,
                    float* row_loss, float scale) {
    const long long b = (long long)gridDim.x - 1 - blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    T* yr = y + c.row * cols;
    const MD md = merge_partials<THREADS>(partials, c.row, splits);
    const long long label = row_label<MODE>(labels, c.row, cols);
    emit_scan<T, VEC, THREADS, MODE>(xr, yr, c.vbeg, c.vend, threadIdx.x, md, label, scale);
    if (c.s == 0 && threadIdx.x == 0) write_loss<T, MODE>(xr, label, md, row_loss, c.row);
}

// ---------------------------------------------------------------- safe softmax (3 passes)

template <typename T, int VEC, int STRIDE>
__device__ __forceinline__ float max_scan(const T* xr, long long vbeg, long long vend, int t) {
    constexpr int U = Unroll<VEC>::value;
    float m = vmem_neg_inf();
    for (long long j0 = vbeg + t; j0 < vend; j0 += (long long)STRIDE * U) {
        float v[U * VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            load_or_pad<T, VEC>(xr, j0 + (long long)u * STRIDE, vend, v + u * VEC);
#pragma unroll
        for (int i = 0; i < U * VEC; ++i) m = fmaxf(m, v[i]);
    }
    return m;
}

// Sum of exp(x - m) over the thread's vectors. Pads are -inf: exp(-inf - m) = 0 for any
// m but -inf, and a row whose max is -inf gives NaN anyway.
template <typename T, int VEC, int STRIDE>
__device__ __forceinline__ float sumexp_scan(const T* xr, long long vbeg, long long vend,
                                             int t, float m) {
    constexpr int U = Unroll<VEC>::value;
    float s = 0.0f;
    for (long long j0 = vbeg + t; j0 < vend; j0 += (long long)STRIDE * U) {
        float v[U * VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            load_or_pad<T, VEC>(xr, j0 + (long long)u * STRIDE, vend, v + u * VEC);
#pragma unroll
        for (int i = 0; i < U * VEC; ++i) s += __expf(v[i] - m);
    }
    return s;
}

// TPR threads per row (a warp, or the block), three passes over the row: max, sum of
// exponentials, output. Passes 2 and 3 re-read the row (from L1/L2 when it is there).
template <typename T, int VEC, int TPR>
__global__ void __launch_bounds__(TPR < 128 ? 128 : TPR)
safe_rows(const T* x, T* y, long long rows, int cols) {
    constexpr int BLOCK = TPR < 128 ? 128 : TPR;
    const int t = threadIdx.x % TPR;
    const long long row = (long long)blockIdx.x * (BLOCK / TPR) + threadIdx.x / TPR;
    if (TPR < BLOCK && row >= rows) return;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    const long long nvec = cols / VEC;
    const float m = row_reduce_f<TPR, true>(max_scan<T, VEC, TPR>(xr, 0, nvec, t));
    const float s = row_reduce_f<TPR, false>(sumexp_scan<T, VEC, TPR>(xr, 0, nvec, t, m));
    emit_scan<T, VEC, TPR, 0>(xr, yr, 0, nvec, t, md_make(m, s), -1, 1.0f);
}

// Split rows, pass 1 of 3: the max of each chunk.
template <typename T, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS)
safe_max_partials(const T* x, long long rows, int cols, int splits, long long chunk_vec,
                  float* pmax) {
    const long long b = blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    const float m =
        row_reduce_f<THREADS, true>(max_scan<T, VEC, THREADS>(xr, c.vbeg, c.vend, threadIdx.x));
    if (threadIdx.x == 0) pmax[b] = m;
}

template <int THREADS, bool MAX>
__device__ __forceinline__ float reduce_partials(const float* p, long long row, int splits) {
    float a = MAX ? vmem_neg_inf() : 0.0f;
    for (int i = threadIdx.x; i < splits; i += THREADS)
        a = MAX ? op_max(a, p[row * splits + i]) : op_sum(a, p[row * splits + i]);
    return row_reduce_f<THREADS, MAX>(a);
}

// Split rows, pass 2 of 3: the row max from the partial maxima, then each chunk's sum.
template <typename T, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS)
safe_sum_partials(const T* x, long long rows, int cols, int splits, long long chunk_vec,
                  const float* pmax, float* psum) {
    const long long b = blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    const float m = reduce_partials<THREADS, true>(pmax, c.row, splits);
    const float sum = row_reduce_f<THREADS, false>(
        sumexp_scan<T, VEC, THREADS>(xr, c.vbeg, c.vend, threadIdx.x, m));
    if (threadIdx.x == 0) psum[b] = sum;
}

// Split rows, pass 3 of 3 (reverse block order, as online_split_output).
template <typename T, int VEC, int THREADS>
__global__ void __launch_bounds__(THREADS)
safe_split_output(const T* x, T* y, long long rows, int cols, int splits,
                  long long chunk_vec, const float* pmax, const float* psum) {
    const long long b = (long long)gridDim.x - 1 - blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    T* yr = y + c.row * cols;
    const float m = reduce_partials<THREADS, true>(pmax, c.row, splits);
    const float sum = reduce_partials<THREADS, false>(psum, c.row, splits);
    emit_scan<T, VEC, THREADS, 0>(xr, yr, c.vbeg, c.vend, threadIdx.x, md_make(m, sum), -1,
                                  1.0f);
}

// ---------------------------------------------------------------- fused softmax + top-k

// A 64-bit code per element that orders as (logit descending, index ascending):
// high word an order-preserving key of the float (NaN highest, -0.0 as +0.0), low word
// ~index. 0 is below every real code (the key of -inf is 0x007fffff), so it pads lists.
__device__ __forceinline__ unsigned int order_key(float v) {
    unsigned int b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu;
    if (b == 0x80000000u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ unsigned long long topk_code(float v, long long col) {
    return ((unsigned long long)order_key(v) << 32) |
           (unsigned long long)(0xffffffffu - (unsigned int)col);
}

__device__ __forceinline__ long long code_index(unsigned long long c) {
    return (long long)(0xffffffffu - (unsigned int)(c & 0xffffffffull));
}

// A sorted list (best first) of K codes in registers: constant indices only.
template <int K>
__device__ __forceinline__ void topk_clear(unsigned long long (&l)[K]) {
#pragma unroll
    for (int i = 0; i < K; ++i) l[i] = 0ull;
}

template <int K>
__device__ __forceinline__ void topk_insert(unsigned long long (&l)[K], unsigned long long c) {
    if (c > l[K - 1]) {
        l[K - 1] = c;
#pragma unroll
        for (int j = K - 1; j > 0; --j) {
            const unsigned long long a = l[j - 1], b = l[j];
            const bool up = b > a;
            l[j - 1] = up ? b : a;
            l[j] = up ? a : b;
        }
    }
}

template <int K>
__device__ __forceinline__ void topk_pop(unsigned long long (&l)[K], bool pop) {
#pragma unroll
    for (int i = 0; i < K - 1; ++i) l[i] = pop ? l[i + 1] : l[i];
    l[K - 1] = pop ? 0ull : l[K - 1];
}

__device__ __forceinline__ unsigned long long warp_max_u64(unsigned long long v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long w = __shfl_xor_sync(VMEM_FULL_MASK, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// Round r of the merge of a row's lists: the best head among the TPR threads; its
// owner (codes are unique) pops it. Every thread returns the winner.
template <int K, int TPR>
__device__ __forceinline__ unsigned long long topk_round(unsigned long long (&l)[K], int r) {
    unsigned long long w = warp_max_u64(l[0]);
    if constexpr (TPR > 32) {
        __shared__ unsigned long long topk_part[2][32];  // double-buffered: one barrier a round
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (lane == 0) topk_part[r & 1][warp] = w;
        __syncthreads();
        w = warp_max_u64(lane < TPR / 32 ? topk_part[r & 1][lane] : 0ull);
    }
    topk_pop(l, l[0] == w);
    return w;
}

template <typename T, int VEC, int STRIDE, int K>
__device__ __forceinline__ void topk_scan(const T* xr, long long vbeg, long long vend, int t,
                                          MD& md, unsigned long long (&l)[K]) {
    constexpr int U = VEC == 1 ? 8 : 8 / VEC;
    for (long long j0 = vbeg + t; j0 < vend; j0 += (long long)STRIDE * U) {
        float v[U * VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            load_or_pad<T, VEC>(xr, j0 + (long long)u * STRIDE, vend, v + u * VEC);
        md = md_merge(md, md_of(v));
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const long long j = j0 + (long long)u * STRIDE;
            if (j < vend) {
#pragma unroll
                for (int e = 0; e < VEC; ++e)
                    topk_insert(l, topk_code(v[u * VEC + e], j * VEC + e));
            }
        }
    }
}

// Writes the k winners of a row: probability exp(x - m) / d and column index.
template <typename T, int K, int TPR>
__device__ __forceinline__ void topk_emit(unsigned long long (&l)[K], int k, int t, MD md,
                                          T* values, long long* indices, long long out0) {
    const float inv_d = 1.0f / md.d;
    for (int r = 0; r < k; ++r) {
        const unsigned long long w = topk_round<K, TPR>(l, r);
        if (t == 0) {
            values[out0 + r] =
                From<T>::conv(__expf(key_value((unsigned int)(w >> 32)) - md.m) * inv_d);
            indices[out0 + r] = code_index(w);
        }
    }
}

// Rows: TPR threads per row (a warp, or the block), one read of the input.
template <typename T, int VEC, int TPR, int K>
__global__ void __launch_bounds__(TPR < 128 ? 128 : TPR)
topk_rows(const T* x, long long rows, int cols, int k, T* values, long long* indices) {
    constexpr int BLOCK = TPR < 128 ? 128 : TPR;
    const int t = threadIdx.x % TPR;
    const long long row = (long long)blockIdx.x * (BLOCK / TPR) + threadIdx.x / TPR;
    if (TPR < BLOCK && row >= rows) return;
    const T* xr = x + row * cols;
    MD md = md_identity();
    unsigned long long l[K];
    topk_clear(l);
    topk_scan<T, VEC, TPR, K>(xr, 0, cols / VEC, t, md, l);
    md = md_row_reduce<TPR>(md);
    topk_emit<T, K, TPR>(l, k, t, md, values, indices, row * k);
}

// Split rows, kernel 1 of 2: each chunk's pair and its k best codes.
template <typename T, int VEC, int THREADS, int K>
__global__ void __launch_bounds__(THREADS)
topk_partials(const T* x, long long rows, int cols, int splits, long long chunk_vec, int k,
              Pair* pmd, unsigned long long* pcodes) {
    const long long b = blockIdx.x;
    const SplitChunk c = split_chunk<VEC>(b, cols, splits, chunk_vec);
    const T* xr = x + c.row * cols;
    MD md = md_identity();
    unsigned long long l[K];
    topk_clear(l);
    topk_scan<T, VEC, THREADS, K>(xr, c.vbeg, c.vend, threadIdx.x, md, l);
    md = md_row_reduce<THREADS>(md);
    if (threadIdx.x == 0) { Pair p; p.m = md.m; p.d = md.d; pmd[b] = p; }
    for (int r = 0; r < k; ++r) {
        const unsigned long long w = topk_round<K, THREADS>(l, r);
        if (threadIdx.x == 0) pcodes[b * k + r] = w;
    }
}

// Split rows, kernel 2 of 2: one block per row merges the pairs and the splits * k codes.
template <typename T, int THREADS, int K>
__global__ void __launch_bounds__(THREADS)
topk_merge(long long rows, int splits, int k, const Pair* pmd,
           const unsigned long long* pcodes, T* values, long long* indices) {
    const long long row = blockIdx.x;
    const MD md = merge_partials<THREADS>(pmd, row, splits);
    unsigned long long l[K];
    topk_clear(l);
    const long long n = (long long)splits * k;
    for (long long i = threadIdx.x; i < n; i += THREADS) topk_insert(l, pcodes[row * n + i]);
    topk_emit<T, K, THREADS>(l, k, threadIdx.x, md, values, indices, row * k);
}

// ---------------------------------------------------------------- backward

// dx = y (dy - sum(y dy)); TPR threads per row. dx may alias y or dy.
template <int VEC, int TPR>
__global__ void __launch_bounds__(TPR < 128 ? 128 : TPR)
softmax_backward_rows(const float* y, const float* dy, float* dx, long long rows, int cols) {
    constexpr int BLOCK = TPR < 128 ? 128 : TPR;
    constexpr int U = VEC == 4 ? 2 : 4;
    const int t = threadIdx.x % TPR;
    const long long row = (long long)blockIdx.x * (BLOCK / TPR) + threadIdx.x / TPR;
    if (TPR < BLOCK && row >= rows) return;
    const float* yr = y + row * cols;
    const float* gr = dy + row * cols;
    float* xr = dx + row * cols;
    const long long nvec = cols / VEC;
    float dot = 0.0f;
    for (long long j0 = t; j0 < nvec; j0 += (long long)TPR * U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const long long j = j0 + (long long)u * TPR;
            if (j < nvec) {
                float a[VEC], g[VEC];
                Vec<float, VEC>::load(yr, j, a);
                Vec<float, VEC>::load(gr, j, g);
#pragma unroll
                for (int e = 0; e < VEC; ++e) dot += a[e] * g[e];
            }
        }
    }
    dot = row_reduce_f<TPR, false>(dot);
    for (long long j = t; j < nvec; j += TPR) {
        float a[VEC], g[VEC], o[VEC];
        Vec<float, VEC>::load(yr, j, a);
        Vec<float, VEC>::load(gr, j, g);
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[e] = a[e] * (g[e] - dot);
        Vec<float, VEC>::store(xr, j, o);
    }
}

// Gradient of the mean cross-entropy from saved probabilities: (p - onehot) * scale.
// g may alias p. Labels out of range give no onehot (the loss of that row is NaN).
template <int VEC>
__global__ void __launch_bounds__(256)
ce_grad(const float* p, const long long* labels, float* g, long long rows, int cols, float scale) {
    const long long nvec = (long long)rows * (cols / VEC);
    const long long per_row = cols / VEC;
    for (long long i = (long long)blockIdx.x * 256 + threadIdx.x; i < nvec;
         i += (long long)gridDim.x * 256) {
        const long long row = i / per_row;
        const long long col0 = (i - row * per_row) * VEC;
        const long long label = labels[row];
        float a[VEC];
        Vec<float, VEC>::load(p, i, a);
#pragma unroll
        for (int e = 0; e < VEC; ++e) a[e] = (a[e] - (col0 + e == label ? 1.0f : 0.0f)) * scale;
        Vec<float, VEC>::store(g, i, a);
    }
}
"""


# -------------------------------------------------------------------- launching


_SLOT = LauncherSlot("vmem.kernels.cuda_softmax", SOURCE, NVRTC_OPTIONS)


def _get_launcher() -> Any:
    return _SLOT.get()


def _use_launcher(launcher: Any) -> Any:
    """Swap the launcher (the CPU emulator in tests); returns the previous one."""
    return _SLOT.swap(launcher)


def precompile(names: list[str] | None = None) -> None:
    """Compile these kernel instantiations (default: all of them) now, in one NVRTC run:
    for benchmarks and tests, which would otherwise compile each kernel on first use.
    CuPy keeps the binary in its disk cache for later processes."""
    _get_launcher().precompile(list(names) if names is not None else all_name_expressions())


class _RecordingLauncher:
    """Plans calls on NumPy stand-ins (never touched) and records the kernels they would
    launch, launching nothing: which instantiations a workload needs, before compiling."""

    xp = np

    def __init__(self, sms: int) -> None:
        self.sms = sms
        self.names: list[str] = []

    def launch(self, name: str, grid: int, block: int, args: tuple[Any, ...]) -> None:
        if name not in self.names:
            self.names.append(name)

    def sm_count(self) -> int:
        return self.sms

    def pointer(self, a: Array) -> int:
        return int(a.ctypes.data)

    def is_array(self, a: Any) -> bool:
        return isinstance(a, np.ndarray)

    def precompile(self, names: list[str]) -> None:
        pass


def kernel_names(calls: Any, sms: int | None = None) -> list[str]:
    """The kernel instantiations `calls(stand_in)` launches, where `stand_in(shape)`
    gives an uninitialised float32 array of that shape (`stand_in(shape, dtype)`, of that
    dtype) to pass instead of a CuPy array (np.empty: untouched pages cost nothing).
    `sms` defaults to the current GPU's count."""
    if sms is None:
        sms = _get_launcher().sm_count()
    recorder = _RecordingLauncher(sms)
    previous = _use_launcher(recorder)
    try:
        calls(lambda shape, dtype=np.float32: np.empty(shape, dtype=dtype))
    finally:
        _use_launcher(previous)
    return recorder.names


def softmax_kernels_available() -> bool:
    """True when CuPy imports and sees a CUDA device (the kernels compile on first use)."""
    from vmem.backends import cuda

    return cuda.available()


# -------------------------------------------------------------------- planning


@dataclass(frozen=True)
class RowPlan:
    """How a (rows, cols) problem is covered: the path, the vector width, threads per
    row (tpr), register vectors per thread (items), and for ``split`` the chunks."""

    method: str
    vec: int
    tpr: int = 0
    items: int = 0
    splits: int = 1
    chunk_vec: int = 0

    def describe(self) -> str:
        if self.method == "split":
            return f"split x{self.splits} (vec{self.vec})"
        if self.method in ("warp", "block"):
            return f"{self.method} ({self.tpr} thr x {self.items * self.vec} regs, vec{self.vec})"
        return f"{self.method} (vec{self.vec})"


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _split_count(rows: int, nvec: int, vec: int, sms: int) -> tuple[int, int]:
    """(splits, chunk_vec) for a row of nvec vectors: enough blocks to fill the GPU,
    chunks of at least MIN_CHUNK elements. (1, nvec) when rows alone fill it."""
    if rows >= 2 * sms or nvec == 0:
        return 1, nvec
    want = _ceil_div(BLOCKS_PER_SM * sms, rows)
    most = max(1, nvec * vec // MIN_CHUNK)
    splits = max(1, min(want, most))
    chunk_vec = _ceil_div(nvec, splits)
    return _ceil_div(nvec, chunk_vec), chunk_vec


def _register_shape(nvec: int, vec: int) -> tuple[int, int]:
    """(tpr, items) holding nvec vectors in registers, at most REGISTER_FLOATS a thread."""
    most = REGISTER_FLOATS // vec
    if nvec * vec <= WARP_COLS:
        return 32, min(most, _pow2_at_least(_ceil_div(nvec, 32)))
    tpr = max(128, _pow2_at_least(_ceil_div(nvec, most)))
    return tpr, min(most, _pow2_at_least(_ceil_div(nvec, tpr)))


def plan_rows(rows: int, cols: int, vec: int, sms: int, method: str = "auto") -> RowPlan:
    """Choose the online-softmax path for rows of `cols` float32 read as `vec`-wide
    vectors on a GPU of `sms` multiprocessors."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    nvec = cols // vec
    splits, chunk_vec = _split_count(rows, nvec, vec, sms)
    if method == "auto":
        if splits > 1:
            method = "split"
        elif cols <= REGISTER_COLS:
            method = "warp" if cols <= WARP_COLS else "block"
        else:
            method = "stream"
    if method in ("warp", "block"):
        if cols > REGISTER_COLS or (method == "warp" and cols > WARP_COLS):
            limit = WARP_COLS if method == "warp" else REGISTER_COLS
            raise ValueError(f"method {method!r} holds rows of at most {limit} columns, "
                             f"got {cols}")
        tpr, items = _register_shape(nvec, vec)
        if method == "block" and tpr == 32:
            tpr, items = 128, min(REGISTER_FLOATS // vec, _pow2_at_least(_ceil_div(nvec, 128)))
        return RowPlan(method, vec, tpr=tpr, items=items)
    if method == "split":
        if splits == 1:  # forced: at least two chunks when the row has two vectors
            splits = min(2, max(1, nvec))
            chunk_vec = _ceil_div(nvec, splits) if nvec else 0
        return RowPlan("split", vec, splits=splits, chunk_vec=chunk_vec)
    return RowPlan("stream", vec)


def _block_of(tpr: int) -> int:
    return max(tpr, 128)


def _grid_rows(rows: int, tpr: int) -> int:
    return _ceil_div(rows, _block_of(tpr) // tpr)


# -------------------------------------------------------------------- checks


def _rows_cols(x: Array, fn: str, launcher: Any, dtypes: tuple[np.dtype, ...] = tuple(CTYPES)
               ) -> tuple[int, int]:
    if not launcher.is_array(x):
        raise ValueError(f"{fn}: needs a CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype) not in dtypes:
        kind = "non-floating " if np.dtype(x.dtype).kind not in "f" else ""
        raise ValueError(f"{fn}: the CUDA kernels take {' or '.join(map(str, dtypes))}, got "
                         f"{kind}dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{fn}: needs an array with at least one axis, got a 0-d array")
    if not x.flags.c_contiguous:
        raise ValueError(f"{fn}: needs a C-contiguous array (cupy.ascontiguousarray), "
                         f"got strides {x.strides}")
    cols = int(x.shape[-1])
    if cols >= 2**31:
        raise ValueError(f"{fn}: rows longer than 2**31 - 1 columns are not supported, got {cols}")
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    return rows, cols


def _output(x: Array, out: Array | None, fn: str, launcher: Any) -> Array:
    if out is None:
        return launcher.xp.empty_like(x)
    if not launcher.is_array(out) or tuple(out.shape) != tuple(x.shape) \
            or np.dtype(out.dtype) != np.dtype(x.dtype) or not out.flags.c_contiguous:
        raise ValueError(f"{fn}: out must be a C-contiguous {np.dtype(x.dtype)} CuPy array of "
                         f"shape {tuple(x.shape)}")
    return out


def _ctype(x: Array) -> str:
    return CTYPES[np.dtype(x.dtype)]


def _vec(cols: int, launcher: Any, *arrays: Array) -> int:
    """The elements of a 16-byte load (4 float32, 8 float16) when every row starts on a
    16-byte boundary, else 1."""
    width = 16 // np.dtype(arrays[0].dtype).itemsize
    if cols % width == 0 and all(launcher.pointer(a) % 16 == 0 for a in arrays):
        return width
    return 1


def _labels(labels: Array, rows: int, fn: str, launcher: Any) -> Array:
    xp = launcher.xp
    if not launcher.is_array(labels):
        labels = xp.asarray(labels)
    if tuple(labels.shape) != (rows,) or np.dtype(labels.dtype).kind not in "iu":
        raise ValueError(f"{fn}: needs integer labels of shape ({rows},), got "
                         f"{labels.dtype} labels of shape {tuple(labels.shape)}")
    return xp.ascontiguousarray(labels, dtype=np.int64)


def _i32(v: int) -> np.int32:
    return np.int32(v)


def _i64(v: int) -> np.int64:
    return np.int64(v)


# -------------------------------------------------------------------- online softmax family


def _rows_kernel(x: Array, y: Array, rows: int, cols: int, mode: int, plan: RowPlan,
                 labels: Array, row_loss: Array, scale: float, launcher: Any) -> None:
    """Launch the plan's kernels for one of the modes (softmax, log-softmax, CE)."""
    v, f32, t = plan.vec, np.float32, _ctype(x)
    common = (labels, row_loss, f32(scale))
    if plan.method in ("warp", "block"):
        name = f"online_rows<{t}, {v}, {plan.items}, {plan.tpr}, {mode}>"
        launcher.launch(name, _grid_rows(rows, plan.tpr), _block_of(plan.tpr),
                        (x, y, _i64(rows), _i32(cols), *common))
    elif plan.method == "stream":
        name = f"online_stream<{t}, {v}, {STREAM_THREADS}, {mode}>"
        launcher.launch(name, rows, STREAM_THREADS, (x, y, _i64(rows), _i32(cols), *common))
    else:
        blocks = rows * plan.splits
        partials = launcher.xp.empty((blocks, 2), dtype=np.float32)
        launcher.launch(f"online_partials<{t}, {v}, {SPLIT_THREADS}>", blocks, SPLIT_THREADS,
                        (x, _i64(rows), _i32(cols), _i32(plan.splits), _i64(plan.chunk_vec),
                         partials))
        launcher.launch(f"online_split_output<{t}, {v}, {SPLIT_THREADS}, {mode}>", blocks,
                        SPLIT_THREADS, (x, y, _i64(rows), _i32(cols), _i32(plan.splits),
                                        _i64(plan.chunk_vec), partials, *common))


def _dummies(launcher: Any) -> tuple[Array, Array]:
    xp = launcher.xp
    return xp.zeros(1, dtype=np.int64), xp.zeros(1, dtype=np.float32)


def _online(x: Array, out: Array | None, mode: int, method: str, fn: str) -> Array:
    launcher = _get_launcher()
    rows, cols = _rows_cols(x, fn, launcher)
    y = _output(x, out, fn, launcher)
    if rows == 0 or cols == 0:
        return y
    plan = plan_rows(rows, cols, _vec(cols, launcher, x, y), launcher.sm_count(), method)
    labels, loss = _dummies(launcher)
    _rows_kernel(x, y, rows, cols, mode, plan, labels, loss, 1.0, launcher)
    return y


def online_softmax(x: Array, out: Array | None = None, *, method: str = "auto") -> Array:
    """Softmax along the last axis by the online normaliser (see the module docstring).
    `out` may be `x` (in place)."""
    return _online(x, out, MODE_SOFTMAX, method, "online_softmax")


def log_softmax(x: Array, out: Array | None = None, *, method: str = "auto") -> Array:
    """log softmax(x) = x - m - log d along the last axis, on the online-softmax kernels."""
    return _online(x, out, MODE_LOG_SOFTMAX, method, "log_softmax")


def describe_plan(shape: tuple[int, ...], method: str = "auto", *, vec: int | None = None,
                  dtype: Any = np.float32) -> str:
    """The path `online_softmax` takes for an aligned array of this shape and dtype
    (float32 unless `dtype` says float16), for reports."""
    launcher = _get_launcher()
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    width = 16 // np.dtype(dtype).itemsize
    vec = vec if vec is not None else (width if cols % width == 0 else 1)
    return plan_rows(rows, cols, vec, launcher.sm_count(), method).describe()


def safe_softmax(x: Array, out: Array | None = None, *, method: str = "auto") -> Array:
    """The paper's baseline: three passes over the row (max; sum of exp(x - max);
    output), a warp or a block per row (the threads online softmax would give the row),
    or three kernels over chunks when few long rows would leave the GPU idle (method
    "split" forces that, "stream" forbids it)."""
    fn = "safe_softmax"
    launcher = _get_launcher()
    if method not in ("auto", "stream", "split"):
        raise ValueError(f"{fn}: method must be auto, stream or split, got {method!r}")
    rows, cols = _rows_cols(x, fn, launcher)
    y = _output(x, out, fn, launcher)
    if rows == 0 or cols == 0:
        return y
    v, ct = _vec(cols, launcher, x, y), _ctype(x)
    splits, chunk_vec = _split_count(rows, cols // v, v, launcher.sm_count())
    if method == "split" and splits == 1:
        plan = plan_rows(rows, cols, v, launcher.sm_count(), "split")
        splits, chunk_vec = plan.splits, plan.chunk_vec
    if method == "stream" or splits == 1:
        # The threads online softmax gives such a row, but no registers: 4 accesses.
        tpr = _register_shape(cols // v, v)[0] if cols <= REGISTER_COLS else STREAM_THREADS
        launcher.launch(f"safe_rows<{ct}, {v}, {tpr}>", _grid_rows(rows, tpr), _block_of(tpr),
                        (x, y, _i64(rows), _i32(cols)))
        return y
    blocks, t = rows * splits, SPLIT_THREADS
    pmax = launcher.xp.empty(blocks, dtype=np.float32)
    psum = launcher.xp.empty(blocks, dtype=np.float32)
    head = (_i64(rows), _i32(cols), _i32(splits), _i64(chunk_vec))
    launcher.launch(f"safe_max_partials<{ct}, {v}, {t}>", blocks, t, (x, *head, pmax))
    launcher.launch(f"safe_sum_partials<{ct}, {v}, {t}>", blocks, t, (x, *head, pmax, psum))
    launcher.launch(f"safe_split_output<{ct}, {v}, {t}>", blocks, t, (x, y, *head, pmax, psum))
    return y


# -------------------------------------------------------------------- top-k


def _list_size(k: int) -> int:
    return next(size for size in TOPK_LIST_SIZES if size >= k)


def softmax_topk(x: Array, k: int, *, method: str = "auto") -> tuple[Array, Array]:
    """(values, indices) of the k largest probabilities of softmax(x) along the last
    axis, best first, exact ties by the lower index; values of x's dtype, shape (..., k),
    indices int64. One read of the input (the paper's fused online softmax + top-k).
    method: auto, "rows" (a warp or block per row) or "split" (chunks + merge)."""
    fn = "softmax_topk"
    launcher = _get_launcher()
    rows, cols = _rows_cols(x, fn, launcher)
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"{fn}: k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= cols:
        raise ValueError(f"{fn}: k must be between 1 and the row length {cols}, got {k}")
    if k > MAX_TOPK:
        raise ValueError(f"{fn}: the fused CUDA kernel takes k up to {MAX_TOPK}, got {k}")
    if method not in ("auto", "rows", "split"):
        raise ValueError(f"{fn}: method must be auto, rows or split, got {method!r}")
    xp, ct = launcher.xp, _ctype(x)
    values = xp.empty((*x.shape[:-1], k), dtype=x.dtype)
    indices = xp.empty((*x.shape[:-1], k), dtype=np.int64)
    if rows == 0:
        return values, indices
    v = _vec(cols, launcher, x)
    size = _list_size(k)
    splits, chunk_vec = _split_count(rows, cols // v, v, launcher.sm_count())
    if method == "split" and splits == 1:
        plan = plan_rows(rows, cols, v, launcher.sm_count(), "split")
        splits, chunk_vec = plan.splits, plan.chunk_vec
    if method == "rows" or splits == 1:
        tpr = 32 if cols <= WARP_COLS else TOPK_THREADS
        launcher.launch(f"topk_rows<{ct}, {v}, {tpr}, {size}>", _grid_rows(rows, tpr),
                        _block_of(tpr), (x, _i64(rows), _i32(cols), _i32(k), values, indices))
        return values, indices
    blocks, t = rows * splits, SPLIT_THREADS
    pmd = xp.empty((blocks, 2), dtype=np.float32)
    pcodes = xp.empty(blocks * k, dtype=np.uint64)
    launcher.launch(f"topk_partials<{ct}, {v}, {t}, {size}>", blocks, t,
                    (x, _i64(rows), _i32(cols), _i32(splits), _i64(chunk_vec), _i32(k),
                     pmd, pcodes))
    launcher.launch(f"topk_merge<{ct}, {TOPK_THREADS}, {size}>", rows, TOPK_THREADS,
                    (_i64(rows), _i32(splits), _i32(k), pmd, pcodes, values, indices))
    return values, indices


# -------------------------------------------------------------------- loss and backward


def cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """(mean over rows of -log softmax(logits)[label], softmax(logits)) for float32
    logits (N, C) and integer labels (N,) in [0, C): the contract of
    `vmem.kernels.softmax.cross_entropy`, in one online-softmax pass that also writes
    each row's loss. A label out of range makes the loss NaN."""
    fn = "cross_entropy"
    launcher = _get_launcher()
    rows, cols = _rows_cols(logits, fn, launcher, FLOAT32_ONLY)
    if logits.ndim != 2:
        raise ValueError(f"{fn}: needs logits (N, C), got shape {tuple(logits.shape)}")
    labels = _labels(labels, rows, fn, launcher)
    probs = launcher.xp.empty_like(logits)
    row_loss = launcher.xp.empty(rows, dtype=np.float32)
    if rows and cols:
        plan = plan_rows(rows, cols, _vec(cols, launcher, logits, probs), launcher.sm_count())
        _rows_kernel(logits, probs, rows, cols, MODE_CROSS_ENTROPY, plan, labels, row_loss,
                     1.0, launcher)
    return row_loss.mean(), probs


def softmax_cross_entropy_grad(logits: Array, labels: Array, scale: float | None = None,
                               out: Array | None = None) -> tuple[Array, Array]:
    """(mean cross-entropy, its gradient (softmax(logits) - onehot(labels)) * scale) in
    one pass; scale defaults to 1/N (the mean). What the loss layer saves for backward."""
    fn = "softmax_cross_entropy_grad"
    launcher = _get_launcher()
    rows, cols = _rows_cols(logits, fn, launcher, FLOAT32_ONLY)
    if logits.ndim != 2:
        raise ValueError(f"{fn}: needs logits (N, C), got shape {tuple(logits.shape)}")
    labels = _labels(labels, rows, fn, launcher)
    grad = _output(logits, out, fn, launcher)
    row_loss = launcher.xp.empty(rows, dtype=np.float32)
    if rows and cols:
        scale = 1.0 / rows if scale is None else float(scale)
        plan = plan_rows(rows, cols, _vec(cols, launcher, logits, grad), launcher.sm_count())
        _rows_kernel(logits, grad, rows, cols, MODE_CE_GRAD, plan, labels, row_loss, scale,
                     launcher)
    return row_loss.mean(), grad


def cross_entropy_backward(probs: Array, labels: Array, scale: float | None = None,
                           out: Array | None = None) -> Array:
    """(probs - onehot(labels)) * scale, scale 1/N by default; `out` may be `probs`."""
    fn = "cross_entropy_backward"
    launcher = _get_launcher()
    rows, cols = _rows_cols(probs, fn, launcher, FLOAT32_ONLY)
    if probs.ndim != 2:
        raise ValueError(f"{fn}: needs probabilities (N, C), got shape {tuple(probs.shape)}")
    labels = _labels(labels, rows, fn, launcher)
    grad = _output(probs, out, fn, launcher)
    if rows and cols:
        scale = 1.0 / rows if scale is None else float(scale)
        v = _vec(cols, launcher, probs, grad)
        nvec = rows * (cols // v)
        grid = max(1, min(_ceil_div(nvec, 256), 32 * launcher.sm_count()))
        launcher.launch(f"ce_grad<{v}>", grid, 256,
                        (probs, labels, grad, _i64(rows), _i32(cols), np.float32(scale)))
    return grad


def softmax_backward(y: Array, dy: Array, out: Array | None = None) -> Array:
    """dx = y * (dy - sum(y * dy)) along the last axis, for y = softmax(x); `out` may be
    `y` or `dy`."""
    fn = "softmax_backward"
    launcher = _get_launcher()
    rows, cols = _rows_cols(y, fn, launcher, FLOAT32_ONLY)
    _rows_cols(dy, fn, launcher, FLOAT32_ONLY)
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"{fn}: y and dy differ in shape, {tuple(y.shape)} and "
                         f"{tuple(dy.shape)}")
    dx = _output(y, out, fn, launcher)
    if rows == 0 or cols == 0:
        return dx
    v = _vec(cols, launcher, y, dy, dx)
    tpr = 32 if cols <= WARP_COLS else STREAM_THREADS
    launcher.launch(f"softmax_backward_rows<{v}, {tpr}>", _grid_rows(rows, tpr), _block_of(tpr),
                    (y, dy, dx, _i64(rows), _i32(cols)))
    return dx


# -------------------------------------------------------------------- for build checks


def all_name_expressions() -> list[str]:
    """Every kernel instantiation the functions above can launch (for an ahead-of-time
    compile check with nvcc, or to warm CuPy's cache)."""
    names: list[str] = []
    for dtype, ct in CTYPES.items():
        # float32 reads float4 or scalars, float16 eight halves or scalars; float16 has
        # no loss kernels (modes 2 and 3)
        modes = range(4) if dtype == np.float32 else (MODE_SOFTMAX, MODE_LOG_SOFTMAX)
        for vec in (1, 16 // dtype.itemsize):
            most = REGISTER_FLOATS // vec
            items = [1 << i for i in range(most.bit_length()) if 1 << i <= most]
            for mode in modes:
                for tpr in (32, 128, 256, 512):
                    names += [f"online_rows<{ct}, {vec}, {it}, {tpr}, {mode}>" for it in items]
                names.append(f"online_stream<{ct}, {vec}, {STREAM_THREADS}, {mode}>")
                names.append(f"online_split_output<{ct}, {vec}, {SPLIT_THREADS}, {mode}>")
            names.append(f"online_partials<{ct}, {vec}, {SPLIT_THREADS}>")
            names += [f"safe_rows<{ct}, {vec}, {tpr}>" for tpr in (32, 128, 256, 512)]
            names += [f"safe_max_partials<{ct}, {vec}, {SPLIT_THREADS}>",
                      f"safe_sum_partials<{ct}, {vec}, {SPLIT_THREADS}>",
                      f"safe_split_output<{ct}, {vec}, {SPLIT_THREADS}>"]
            for size in TOPK_LIST_SIZES:
                names += [f"topk_rows<{ct}, {vec}, {tpr}, {size}>" for tpr in (32, TOPK_THREADS)]
                names.append(f"topk_partials<{ct}, {vec}, {SPLIT_THREADS}, {size}>")
            if dtype == np.float32:
                names += [f"softmax_backward_rows<{vec}, {tpr}>" for tpr in (32, STREAM_THREADS)]
                names.append(f"ce_grad<{vec}>")
        names += [f"topk_merge<{ct}, {TOPK_THREADS}, {size}>" for size in TOPK_LIST_SIZES]
    return names
