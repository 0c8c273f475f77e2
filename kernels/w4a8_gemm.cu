// w4a8_gemm.cu — Y = X · Wᵀ (+ bias) with int8 activations, int4 weights, int8 tensor cores.
//
// Inputs (all padded by the host; see backend-cuda/src/layout.rs):
//   X  : s8  [M][Kp]            per-token quantized activations, Kp = K rounded up to 128, zeros past K
//   s_x: f32 [M]
//   W  : u32 packed chunks      [Np/32 n32 tiles][Kp/128 k-tiles][512 words] (layout below)
//   s_g: u8  packed slots       [Np/32][Kp/128][gps][8][4]   (per group only; gps = max(1, 128/g))
//   s_ch, bias: f32 [Np]        Np = N rounded up to 128; bias may be null (then no addition)
//   Y  : f16 bits [M][N]
//   ws : s32 [splits][M][Np]    split-K partial sums (only when gridDim.z > 1)
//
// Block tiling (grid = (Np/BN, ⌈M/BM⌉, splits)); 8 warps; BK = 128 k per pipeline stage:
//
//              BN = 32·WARPS_N columns
//          +---------+---------+
//   BM     | warp    | warp    |   each warp: WM = BM/WARPS_M rows × 32 columns (4 n8 mma tiles),
//   rows   | (wm,wn) | (wm,wn) |   and the k32 steps s ≡ wk (mod WARPS_K) of every stage.
//          +---------+---------+   WARPS_K > 1 splits a stage's four k32 steps between warps (small
//                                  M has few rows to share); their sums meet in shared memory.
//
// Configurations (host picks by M):   BM   WARPS_M WARPS_N WARPS_K  STAGES
//   small  M ≤ 16                      16     1       2       4        6
//   medium M ≤ 64                      64     2       2       2        4
//   large                             128     2       4       1        4
// Small M is memory bound: the grid is split along K (gridDim.z) until every SM has several blocks
// in flight; the partial int32 sums go to `ws` and w4a8_splitk_epilogue adds them in a fixed order.
//
// Packed weight chunk (one n32 tile × one k-tile), 2 KiB, read as 128-bit words:
//   word index = (s·32 + lane)·4 + ni      s = k32 step (0..3), ni = n8 sub-tile (0..3)
//   lane's uint4 for step s = the four B fragments (ni = 0..3) it feeds to four mma's.
//   Word w for (s, lane, ni), g = lane/4, t = lane%4, n = 32·tile + 8·ni + g, k0 = 128·kt + 32·s:
//     byte i: low nibble = W[n][k0 + 4t + i], high nibble = W[n][k0 + 16 + 4t + i]
//   (see the PACKING <-> DEQUANT INVARIANT in w4a8_common.cuh).
//
// Shared-memory A tile (BM rows × 128 bytes per stage) is XOR-swizzled in 16-byte chunks:
//   chunk c of row r lives at chunk (c ^ (r % 8)), so the 8 row addresses of one ldmatrix 8×16-byte
//   matrix fall in 8 different 16-byte bank groups (conflict-free), both for the cp.async stores
//   and for the ldmatrix loads.

#include "w4a8_common.cuh"

template <int BM, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES>
struct W4a8Config {
    static constexpr int NWARPS_N = WARPS_N;                                 // warps along N
    static constexpr int WM = BM / WARPS_M;                                  // rows per warp
    static constexpr int MT = WM / 16;                                       // m16 tiles per warp
    static constexpr int BN = W4A8_WARP_N * WARPS_N;                         // columns per block
    static constexpr int A_STAGE = BM * W4A8_BK;                             // bytes
    static constexpr int B_STAGE = WARPS_N * W4A8_CHUNK_WORDS * 4;           // bytes
    static constexpr int S_STAGE = WARPS_N * 4 * W4A8_SCALE_SLOT_BYTES;      // bytes (gps ≤ 4)
    static constexpr int STAGE = A_STAGE + B_STAGE + S_STAGE;
    static constexpr int PIPE = STAGES * STAGE;
    static constexpr int RED = (WARPS_K - 1) * WARPS_M * WARPS_N * 32 * MT * 16 * 4;
    static constexpr int SMEM = PIPE > RED ? PIPE : RED;
    static_assert(WARPS_M * WARPS_N * WARPS_K == 8, "8 warps per block");
    static_assert(WM % 16 == 0, "a warp covers whole m16 tiles");
    static_assert(W4A8_KSTEPS % WARPS_K == 0, "k32 steps split evenly between k-warps");
};

// Issues the cp.async copies of k-tile `kt` into pipeline slot `slot`.
template <class C, bool PER_GROUP>
__device__ __forceinline__ void w4a8_load_stage(u8* smem, int slot, int kt, int KT, const i8* __restrict__ x,
                                                const uint4* __restrict__ w, const u8* __restrict__ gs, int gps,
                                                int m0, int M, int Kp, int tile0) {
    u8* sa = smem + slot * C::STAGE;
    u8* sb = sa + C::A_STAGE;
    u8* ss = sb + C::B_STAGE;
    const int tid = threadIdx.x;
    // A: BM rows × 8 chunks of 16 bytes; rows past M are zero-filled.
#pragma unroll
    for (int c = tid; c < C::A_STAGE / 16; c += 256) {
        int r = c >> 3, ch = c & 7;
        int row = m0 + r;
        bool valid = row < M;
        const i8* src = x + (size_t)(valid ? row : 0) * Kp + (size_t)kt * W4A8_BK + ch * 16;
        w4a8_cp_async16(sa + r * W4A8_BK + ((ch ^ (r & 7)) << 4), src, valid);
    }
    // B: WARPS_N chunks of 2 KiB, copied verbatim (the packing already is the fragment order).
#pragma unroll
    for (int c = tid; c < C::B_STAGE / 16; c += 256) {
        int wn = c >> 7, e = c & 127;  // 128 uint4 per chunk
        const uint4* src = w + ((size_t)(tile0 + wn) * KT + kt) * (W4A8_CHUNK_WORDS / 4) + e;
        w4a8_cp_async16_evict_first(sb + c * 16, src);
    }
    if (PER_GROUP) {
        // Group scales: WARPS_N × gps slots of 32 bytes.
        int n16 = C::NWARPS_N * gps * 2;
        if (tid < n16) {
            int wn = tid / (gps * 2), rem = tid % (gps * 2);
            const u8* src = gs + ((size_t)(tile0 + wn) * KT + kt) * gps * W4A8_SCALE_SLOT_BYTES + rem * 16;
            w4a8_cp_async16(ss + tid * 16, src, true);
        }
    }
}

template <int BM, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES, bool PER_GROUP>
__device__ __forceinline__ void w4a8_gemm_body(const i8* __restrict__ x, const float* __restrict__ sx,
                                               const uint4* __restrict__ w, const u8* __restrict__ gs,
                                               const float* __restrict__ sch, const float* __restrict__ bias,
                                               u16* __restrict__ y, i32* __restrict__ ws, int M, int N, int Kp,
                                               int Np, int group_size) {
    typedef W4a8Config<BM, WARPS_M, WARPS_N, WARPS_K, STAGES> C;
    extern __shared__ __align__(128) u8 smem[];

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int wk = warp % WARPS_K;
    const int wn = (warp / WARPS_K) % WARPS_N;
    const int wm = warp / (WARPS_K * WARPS_N);

    const int KT = Kp / W4A8_BK;
    const int splits = gridDim.z;
    const int kt_begin = (int)(((long long)blockIdx.z * KT) / splits);
    const int kt_end = (int)(((long long)(blockIdx.z + 1) * KT) / splits);
    const int m0 = blockIdx.y * BM;
    const int tile0 = blockIdx.x * WARPS_N;  // first n32 tile of this block
    // Group-scale slots per k-tile: 4 groups of 32, 2 of 64, else the one group the tile lies in.
    const int gps = PER_GROUP ? (group_size < W4A8_BK ? W4A8_BK / group_size : 1) : 1;

    i32 acc[C::MT][4][4];
#pragma unroll
    for (int i = 0; i < C::MT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

    // Prologue: fill STAGES-1 slots.
#pragma unroll
    for (int p = 0; p < STAGES - 1; ++p) {
        if (kt_begin + p < kt_end)
            w4a8_load_stage<C, PER_GROUP>(smem, p, kt_begin + p, KT, x, w, gs, gps, m0, M, Kp, tile0);
        w4a8_cp_async_commit();
    }

    for (int kt = kt_begin; kt < kt_end; ++kt) {
        const int it = kt - kt_begin;
        w4a8_cp_async_wait<STAGES - 2>();
        __syncthreads();  // slot it%STAGES is complete for all threads; slot (it-1)%STAGES is free
        {
            int nk = kt + STAGES - 1;
            if (nk < kt_end)
                w4a8_load_stage<C, PER_GROUP>(smem, (it + STAGES - 1) % STAGES, nk, KT, x, w, gs, gps, m0, M, Kp,
                                              tile0);
            w4a8_cp_async_commit();
        }
        const u8* sa = smem + (it % STAGES) * C::STAGE;
        const u8* sb = sa + C::A_STAGE;
        const u8* ss = sb + C::B_STAGE;

#pragma unroll
        for (int s = wk; s < W4A8_KSTEPS; s += WARPS_K) {
            // B: one 128-bit load = this lane's word of the four n8 fragments of step s.
            const uint4 wv = *reinterpret_cast<const uint4*>(sb + wn * (W4A8_CHUNK_WORDS * 4) + (s * 32 + lane) * 16);
            const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
            u32 b[4][2];
            if (PER_GROUP) {
                // Slot of step s: group (32·s)/g inside the tile when g < 128, else the only one.
                const int slot = group_size < W4A8_BK ? (s * W4A8_KSTEP) / group_size : 0;
                // 4 bytes = s_g of columns n = 8·ni + lane/4, ni = 0..3.
                const u32 sw = *reinterpret_cast<const u32*>(ss + (wn * gps + slot) * W4A8_SCALE_SLOT_BYTES +
                                                             (lane >> 2) * 4);
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    u32 sg = __byte_perm(sw, 0, 0x4440 + ni);  // byte ni of sw, zero-extended
                    w4a8_dequant_per_group(words[ni], sg, w4a8_group_offset(sg), b[ni][0], b[ni][1]);
                }
            } else {
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) w4a8_dequant_per_channel(words[ni], b[ni][0], b[ni][1]);
            }
#pragma unroll
            for (int mi = 0; mi < C::MT; ++mi) {
                // ldmatrix.x4: lane l addresses row (l & 15) of this m16 tile, 16-byte chunk 2s + l/16.
                const int r = wm * C::WM + mi * 16 + (lane & 15);
                const int ch = 2 * s + (lane >> 4);
                u32 a[4];
                w4a8_ldmatrix_x4(a, sa + r * W4A8_BK + ((ch ^ (r & 7)) << 4));
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) w4a8_mma_s8(acc[mi][ni], a, b[ni][0], b[ni][1]);
            }
        }
    }
    w4a8_cp_async_wait<0>();

    // Intra-block k reduction: warps wk > 0 park their sums, warp wk = 0 adds them in order 1, 2, 3.
    if (WARPS_K > 1) {
        __syncthreads();  // every warp is done reading the pipeline buffers
        i32* red = reinterpret_cast<i32*>(smem);
        const int regs = C::MT * 16;
        if (wk > 0) {
            i32* dst = red + (((wk - 1) * WARPS_M + wm) * WARPS_N + wn) * 32 * regs;
#pragma unroll
            for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int e = 0; e < 4; ++e) dst[((mi * 4 + ni) * 4 + e) * 32 + lane] = acc[mi][ni][e];
        }
        __syncthreads();
        if (wk > 0) return;
#pragma unroll
        for (int q = 1; q < WARPS_K; ++q) {
            const i32* src = red + (((q - 1) * WARPS_M + wm) * WARPS_N + wn) * 32 * regs;
#pragma unroll
            for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mi][ni][e] += src[((mi * 4 + ni) * 4 + e) * 32 + lane];
        }
    }

    // Epilogue. Accumulator element e of (mi, ni): row g + 8·(e/2), column 2t + (e%2).
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < C::MT; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = m0 + wm * C::WM + mi * 16 + g + 8 * h;
            if (row >= M) continue;
            const float s_x = sx[row];
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int col = (tile0 + wn) * W4A8_WARP_N + ni * 8 + 2 * t;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    // Per channel the mma summed 16·q: an arithmetic shift by 4 divides exactly.
                    const i32 v = PER_GROUP ? acc[mi][ni][2 * h + e] : (acc[mi][ni][2 * h + e] >> 4);
                    const int c = col + e;
                    if (splits > 1) {
                        ws[((size_t)blockIdx.z * M + row) * Np + c] = v;
                    } else if (c < N) {
                        y[(size_t)row * N + c] = w4a8_epilogue(v, s_x, sch[c], bias, c);
                    }
                }
            }
        }
    }
}

// Entry points: one per (configuration, granularity). The host table is `KERNELS` in
// backend-cuda/src/kernels.rs. Arguments as documented at the top of this file.
#define W4A8_GEMM_ENTRY(NAME, BM, WM_, WN_, WK_, ST, PG)                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                  \
        const i8* __restrict__ x, const float* __restrict__ sx, const uint4* __restrict__ w,                 \
        const u8* __restrict__ gs, const float* __restrict__ sch, const float* __restrict__ bias,            \
        u16* __restrict__ y, i32* __restrict__ ws, int M, int N, int Kp, int Np, int group_size) {           \
        w4a8_gemm_body<BM, WM_, WN_, WK_, ST, PG>(x, sx, w, gs, sch, bias, y, ws, M, N, Kp, Np, group_size); \
    }

W4A8_GEMM_ENTRY(w4a8_gemm_small_per_channel, 16, 1, 2, 4, 6, false)
W4A8_GEMM_ENTRY(w4a8_gemm_small_per_group, 16, 1, 2, 4, 6, true)
W4A8_GEMM_ENTRY(w4a8_gemm_medium_per_channel, 64, 2, 2, 2, 4, false)
W4A8_GEMM_ENTRY(w4a8_gemm_medium_per_group, 64, 2, 2, 2, 4, true)
W4A8_GEMM_ENTRY(w4a8_gemm_large_per_channel, 128, 2, 4, 1, 4, false)
W4A8_GEMM_ENTRY(w4a8_gemm_large_per_group, 128, 2, 4, 1, 4, true)

// Split-K finish: Y[m][n] = epilogue(Σ_{z = 0..splits-1} ws[z][m][n]), summed in the fixed order
// z = 0, 1, … (int32 addition is exact, the fixed order makes it obviously deterministic too).
// One thread per output element; grid-stride over M·N.
extern "C" __global__ void __launch_bounds__(256)
    w4a8_splitk_epilogue(const i32* __restrict__ ws, int splits, const float* __restrict__ sx,
                         const float* __restrict__ sch, const float* __restrict__ bias, u16* __restrict__ y, int M,
                         int N, int Np) {
    const size_t total = (size_t)M * N;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int row = (int)(i / N), col = (int)(i % N);
        i32 acc = 0;
        for (int z = 0; z < splits; ++z) acc += ws[((size_t)z * M + row) * Np + col];
        y[i] = w4a8_epilogue(acc, sx[row], sch[col], bias, col);
    }
}
