// vmem causal flash attention: forward and backward passes (FlashAttention, Dao et al.
// 2022; the backward pass as FlashAttention-2, Dao 2023). Not yet run on a GPU (see
// kernels/cuda_attention.py, which launches these kernels and states what holds).
//
// Arrays: q, k, v, out, d_out, dq, dk, dv are (BH, T, d) C-contiguous of element type T
// (float, or Half: float16 bits, computed in float32); lse and delta are (BH, T) float32.
// Query t attends to keys 0..t; scores are (q . k) * scale.
//
// Every kernel is one block of THREADS threads per tile; every thread of a block runs
// every loop iteration and every barrier (loop bounds depend on the block only), so no
// barrier is ever reached by part of a block. Shared tiles are reused across iterations:
// a barrier ends each phase before the next phase (or the next iteration's loads)
// overwrites what the last one read.
//
// Masking never computes with -inf: a score is used only where its key is at or before
// its query and its query is inside the sequence (`valid`), else its probability is 0.
// The forward pass's running maximum starts at -inf for every row; exponentials are
// taken against 0 while it is still -inf (rows past the sequence's end, never written),
// so no row gives inf - inf.

#define VMEM_ATTN_THREADS 128
#define VMEM_FULL_MASK 0xffffffffu

__device__ __forceinline__ float vmem_attn_neg_inf() { return __uint_as_float(0xff800000u); }

// Half, half_to_float and float_to_half: kernels/cuda_half.cuh, put before this source.

__device__ __forceinline__ float attn_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float attn_load(const Half* p, long long i) {
    return half_to_float(p[i].bits);
}
__device__ __forceinline__ void attn_store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void attn_store(Half* p, long long i, float v) {
    Half h;
    h.bits = float_to_half(v);
    p[i] = h;
}

// Shared tiles hold rows of DMAX + 1 floats (and score tiles rows of BK + 1): the padding
// puts row r's element c in bank (r + c) % 32, so threads reading one column of
// consecutive rows hit different banks.
template <int DMAX> struct AttnRow { static constexpr int stride = DMAX + 1; };

// Rows [row0, row0 + ROWS) of a (T, d) matrix into a shared tile, float32; rows past T and
// columns past d are zero (so dot products over DMAX columns or past T add nothing).
template <typename T, int DMAX, int ROWS>
__device__ __forceinline__ void attn_load_tile(float* tile, const T* src, int row0, int t_len,
                                               int d) {
    constexpr int S = AttnRow<DMAX>::stride;
    for (int idx = threadIdx.x; idx < ROWS * DMAX; idx += VMEM_ATTN_THREADS) {
        const int r = idx / DMAX, c = idx % DMAX;
        const int row = row0 + r;
        tile[r * S + c] = (row < t_len && c < d) ? attn_load(src, (long long)row * d + c) : 0.0f;
    }
}

// Over all DMAX columns of two tile rows: the columns past d are zero on both sides, and
// adding their products (+0) changes no sum, so the loop has a constant trip count.
template <int DMAX>
__device__ __forceinline__ float attn_dot(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll 16
    for (int c = 0; c < DMAX; ++c) s += a[c] * b[c];
    return s;
}

__device__ __forceinline__ int attn_min(int a, int b) { return a < b ? a : b; }

// ---------------------------------------------------------------- forward

// One block per (bh, query tile of BQ rows): walks the key tiles of BK keys that its rows
// see (keys 0 .. its last row), merging each tile into each row's running maximum m and
// sum l (the online softmax's merge) and into its running output. Writes the output and
// lse = m + log(l). Query tiles run last-first (the longest first, for the tail).
template <typename T, int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(VMEM_ATTN_THREADS)
vmem_flash_forward(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                   T* __restrict__ out, float* __restrict__ lse, long long bh_count,
                   int t_len, int d, float scale) {
    constexpr int S = AttnRow<DMAX>::stride;
    constexpr int ACC = BQ * DMAX / VMEM_ATTN_THREADS;  // output elements per thread
    static_assert(BQ * DMAX % VMEM_ATTN_THREADS == 0, "a tile's outputs split evenly");
    static_assert(4 * (BQ * S + 2 * BK * S + BQ * (BK + 1) + 3 * BQ) <= 48 * 1024,
                  "static shared memory of at most 48 KiB");
    __shared__ float qs[BQ * S];
    __shared__ float ks[BK * S];
    __shared__ float vs[BK * S];
    __shared__ float ps[BQ * (BK + 1)];  // scores, then probabilities
    __shared__ float row_m[BQ], row_l[BQ], row_corr[BQ];

    const int tiles = (t_len + BQ - 1) / BQ;
    const long long bh = (long long)blockIdx.x / tiles;
    const int q0 = (tiles - 1 - (int)((long long)blockIdx.x % tiles)) * BQ;
    const long long base = bh * t_len * d;
    const int tid = threadIdx.x;

    attn_load_tile<T, DMAX, BQ>(qs, q + base, q0, t_len, d);
    if (tid < BQ) { row_m[tid] = vmem_attn_neg_inf(); row_l[tid] = 0.0f; }
    float acc[ACC];
#pragma unroll
    for (int e = 0; e < ACC; ++e) acc[e] = 0.0f;

    // keys 0 .. min(T, q0 + BQ) - 1: the last row of the tile sees the last of them
    const int key_end = attn_min(t_len, q0 + BQ);
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the last iteration's reads of ks, vs, ps are done (and qs loaded)
        attn_load_tile<T, DMAX, BK>(ks, k + base, k0, t_len, d);
        attn_load_tile<T, DMAX, BK>(vs, v + base, k0, t_len, d);
        __syncthreads();
        for (int idx = tid; idx < BQ * BK; idx += VMEM_ATTN_THREADS) {
            const int i = idx / BK, j = idx % BK;
            const int row = q0 + i, key = k0 + j;
            const bool valid = row < t_len && key <= row;
            ps[i * (BK + 1) + j] =
                valid ? attn_dot<DMAX>(qs + i * S, ks + j * S) * scale : vmem_attn_neg_inf();
        }
        __syncthreads();
        if (tid < BQ) {  // one thread per row: the tile's maximum, merged
            float* pr = ps + tid * (BK + 1);
            float mx = vmem_attn_neg_inf();
            for (int j = 0; j < BK; ++j) mx = fmaxf(mx, pr[j]);
            const float m_old = row_m[tid];
            const float m_new = fmaxf(m_old, mx);
            const float ref = m_new == vmem_attn_neg_inf() ? 0.0f : m_new;
            float sum = 0.0f;
            for (int j = 0; j < BK; ++j) {
                const float p = expf(pr[j] - ref);  // a masked score (-inf) gives 0
                pr[j] = p;
                sum += p;
            }
            const float corr = expf(m_old - ref);  // 0 while m_old is -inf
            row_l[tid] = row_l[tid] * corr + sum;
            row_corr[tid] = corr;
            row_m[tid] = m_new;
        }
        __syncthreads();
#pragma unroll
        for (int e = 0; e < ACC; ++e) {
            const int flat = tid + e * VMEM_ATTN_THREADS;
            const int i = flat / DMAX, c = flat % DMAX;
            const float* pr = ps + i * (BK + 1);
            float a = 0.0f;
            for (int j = 0; j < BK; ++j) a += pr[j] * vs[j * S + c];
            acc[e] = acc[e] * row_corr[i] + a;
        }
    }
    __syncthreads();  // row_l, row_m final (written before the last barrier; read-only now)
#pragma unroll
    for (int e = 0; e < ACC; ++e) {
        const int flat = tid + e * VMEM_ATTN_THREADS;
        const int i = flat / DMAX, c = flat % DMAX;
        const int row = q0 + i;
        if (row < t_len && c < d) attn_store(out, base + (long long)row * d + c, acc[e] / row_l[i]);
    }
    if (tid < BQ && q0 + tid < t_len)
        lse[bh * t_len + q0 + tid] = row_m[tid] + logf(row_l[tid]);
}

// ---------------------------------------------------------------- backward

// delta[r] = sum_c d_out[r, c] * out[r, c] over rows r of (rows, d): one warp per row
// (rows handed out warp by warp, so every lane of a warp runs the same shuffles).
template <typename T>
__global__ void __launch_bounds__(VMEM_ATTN_THREADS)
vmem_flash_delta(const T* __restrict__ d_out, const T* __restrict__ out,
                 float* __restrict__ delta, long long rows, int d) {
    constexpr int WARPS = VMEM_ATTN_THREADS / 32;
    const int lane = threadIdx.x & 31;
    for (long long r = (long long)blockIdx.x * WARPS + threadIdx.x / 32; r < rows;
         r += (long long)gridDim.x * WARPS) {
        float s = 0.0f;
        for (int c = lane; c < d; c += 32) s += attn_load(d_out, r * d + c) * attn_load(out, r * d + c);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(VMEM_FULL_MASK, s, o);
        if (lane == 0) delta[r] = s;
    }
}

// P and dS of one (query tile, key tile) pair, into shared tiles:
// p = exp(s - lse) where valid, else 0; ds = p * (dO . v - delta).
template <int DMAX, int BQ, int BK>
__device__ __forceinline__ void attn_p_ds(const float* qs, const float* dos, const float* ks,
                                          const float* vs, const float* lse_s,
                                          const float* delta_s, float* ps, float* dss, int q0,
                                          int k0, int t_len, int d, float scale) {
    constexpr int S = AttnRow<DMAX>::stride;
    for (int idx = threadIdx.x; idx < BQ * BK; idx += VMEM_ATTN_THREADS) {
        const int i = idx / BK, j = idx % BK;
        const int row = q0 + i, key = k0 + j;
        float p = 0.0f, ds = 0.0f;
        if (row < t_len && key <= row) {
            p = expf(attn_dot<DMAX>(qs + i * S, ks + j * S) * scale - lse_s[i]);
            ds = p * (attn_dot<DMAX>(dos + i * S, vs + j * S) - delta_s[i]);
        }
        if (ps) ps[i * (BK + 1) + j] = p;
        dss[i * (BK + 1) + j] = ds;
    }
}

// lse and delta of rows [row0, row0 + BQ) into shared memory (0 past T: never used).
template <int BQ>
__device__ __forceinline__ void attn_load_rows(float* lse_s, float* delta_s, const float* lse,
                                               const float* delta, long long row_base,
                                               int row0, int t_len) {
    if (threadIdx.x < BQ) {
        const int row = row0 + threadIdx.x;
        lse_s[threadIdx.x] = row < t_len ? lse[row_base + row] : 0.0f;
        delta_s[threadIdx.x] = row < t_len ? delta[row_base + row] : 0.0f;
    }
}

// dK and dV: one block per (bh, key tile of BK keys), walking the query tiles that see it
// (those with a row at or after its first key): dV += P^T dO, dK += dS^T Q; dK * scale.
template <typename T, int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(VMEM_ATTN_THREADS)
vmem_flash_backward_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                         const T* __restrict__ v, const T* __restrict__ d_out,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         T* __restrict__ dk, T* __restrict__ dv, long long bh_count, int t_len,
                         int d, float scale) {
    constexpr int S = AttnRow<DMAX>::stride;
    constexpr int ACC = BK * DMAX / VMEM_ATTN_THREADS;
    static_assert(BK * DMAX % VMEM_ATTN_THREADS == 0, "a tile's outputs split evenly");
    static_assert(4 * (2 * BK * S + 2 * BQ * S + 2 * BQ * (BK + 1) + 2 * BQ) <= 48 * 1024,
                  "static shared memory of at most 48 KiB");
    __shared__ float ks[BK * S];
    __shared__ float vs[BK * S];
    __shared__ float qs[BQ * S];
    __shared__ float dos[BQ * S];
    __shared__ float ps[BQ * (BK + 1)];
    __shared__ float dss[BQ * (BK + 1)];
    __shared__ float lse_s[BQ], delta_s[BQ];

    const int tiles = (t_len + BK - 1) / BK;
    const long long bh = (long long)blockIdx.x / tiles;
    const int k0 = (int)((long long)blockIdx.x % tiles) * BK;
    const long long base = bh * t_len * d;
    const int tid = threadIdx.x;

    attn_load_tile<T, DMAX, BK>(ks, k + base, k0, t_len, d);
    attn_load_tile<T, DMAX, BK>(vs, v + base, k0, t_len, d);
    float acc_k[ACC], acc_v[ACC];
#pragma unroll
    for (int e = 0; e < ACC; ++e) { acc_k[e] = 0.0f; acc_v[e] = 0.0f; }

    for (int q0 = (k0 / BQ) * BQ; q0 < t_len; q0 += BQ) {
        __syncthreads();  // the last iteration's reads of qs, dos, ps, dss are done
        attn_load_tile<T, DMAX, BQ>(qs, q + base, q0, t_len, d);
        attn_load_tile<T, DMAX, BQ>(dos, d_out + base, q0, t_len, d);
        attn_load_rows<BQ>(lse_s, delta_s, lse, delta, bh * t_len, q0, t_len);
        __syncthreads();
        attn_p_ds<DMAX, BQ, BK>(qs, dos, ks, vs, lse_s, delta_s, ps, dss, q0, k0, t_len, d,
                                scale);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < ACC; ++e) {
            const int flat = tid + e * VMEM_ATTN_THREADS;
            const int j = flat / DMAX, c = flat % DMAX;
            float a_k = 0.0f, a_v = 0.0f;
            for (int i = 0; i < BQ; ++i) {
                a_v += ps[i * (BK + 1) + j] * dos[i * S + c];
                a_k += dss[i * (BK + 1) + j] * qs[i * S + c];
            }
            acc_v[e] += a_v;
            acc_k[e] += a_k;
        }
    }
#pragma unroll
    for (int e = 0; e < ACC; ++e) {
        const int flat = tid + e * VMEM_ATTN_THREADS;
        const int j = flat / DMAX, c = flat % DMAX;
        const int key = k0 + j;
        if (key < t_len && c < d) {
            attn_store(dk, base + (long long)key * d + c, acc_k[e] * scale);
            attn_store(dv, base + (long long)key * d + c, acc_v[e]);
        }
    }
}

// dQ: one block per (bh, query tile of BQ rows), walking the key tiles its rows see:
// dQ += dS K; dQ * scale. (A kernel of its own rather than atomic adds from the dK/dV
// kernel: every element is written once, in a fixed order, so runs give the same bits.)
template <typename T, int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(VMEM_ATTN_THREADS)
vmem_flash_backward_dq(const T* __restrict__ q, const T* __restrict__ k,
                       const T* __restrict__ v, const T* __restrict__ d_out,
                       const float* __restrict__ lse, const float* __restrict__ delta,
                       T* __restrict__ dq, long long bh_count, int t_len, int d, float scale) {
    constexpr int S = AttnRow<DMAX>::stride;
    constexpr int ACC = BQ * DMAX / VMEM_ATTN_THREADS;
    static_assert(BQ * DMAX % VMEM_ATTN_THREADS == 0, "a tile's outputs split evenly");
    static_assert(4 * (2 * BK * S + 2 * BQ * S + BQ * (BK + 1) + 2 * BQ) <= 48 * 1024,
                  "static shared memory of at most 48 KiB");
    __shared__ float qs[BQ * S];
    __shared__ float dos[BQ * S];
    __shared__ float ks[BK * S];
    __shared__ float vs[BK * S];
    __shared__ float dss[BQ * (BK + 1)];
    __shared__ float lse_s[BQ], delta_s[BQ];

    const int tiles = (t_len + BQ - 1) / BQ;
    const long long bh = (long long)blockIdx.x / tiles;
    const int q0 = (tiles - 1 - (int)((long long)blockIdx.x % tiles)) * BQ;
    const long long base = bh * t_len * d;
    const int tid = threadIdx.x;

    attn_load_tile<T, DMAX, BQ>(qs, q + base, q0, t_len, d);
    attn_load_tile<T, DMAX, BQ>(dos, d_out + base, q0, t_len, d);
    attn_load_rows<BQ>(lse_s, delta_s, lse, delta, bh * t_len, q0, t_len);
    float acc[ACC];
#pragma unroll
    for (int e = 0; e < ACC; ++e) acc[e] = 0.0f;

    const int key_end = attn_min(t_len, q0 + BQ);
    for (int k0 = 0; k0 < key_end; k0 += BK) {
        __syncthreads();  // the last iteration's reads of ks, vs, dss are done (qs... loaded)
        attn_load_tile<T, DMAX, BK>(ks, k + base, k0, t_len, d);
        attn_load_tile<T, DMAX, BK>(vs, v + base, k0, t_len, d);
        __syncthreads();
        attn_p_ds<DMAX, BQ, BK>(qs, dos, ks, vs, lse_s, delta_s, nullptr, dss, q0, k0, t_len,
                                d, scale);
        __syncthreads();
#pragma unroll
        for (int e = 0; e < ACC; ++e) {
            const int flat = tid + e * VMEM_ATTN_THREADS;
            const int i = flat / DMAX, c = flat % DMAX;
            const float* dr = dss + i * (BK + 1);
            float a = 0.0f;
            for (int j = 0; j < BK; ++j) a += dr[j] * ks[j * S + c];
            acc[e] += a;
        }
    }
#pragma unroll
    for (int e = 0; e < ACC; ++e) {
        const int flat = tid + e * VMEM_ATTN_THREADS;
        const int i = flat / DMAX, c = flat % DMAX;
        const int row = q0 + i;
        if (row < t_len && c < d) attn_store(dq, base + (long long)row * d + c, acc[e] * scale);
    }
}
