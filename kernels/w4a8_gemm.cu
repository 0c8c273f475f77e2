// w4a8_gemm.cu — Y = X · Wᵀ (+ bias) with int8 activations, int4 weights, int8 tensor cores.
//
// Inputs (all padded by the host; see backend-cuda/src/layout.rs):
//   X  : s8  [M][Kp]            per-token quantized activations, Kp = K rounded up to 128, zeros past K
//   s_x: f32 [M]
//   W  : u32 packed chunks      [Np/32 n32 tiles][Kp/128 k-tiles][512 words] (layout below)
//   s_g: u8  packed slots       [Np/32][Kp/128][gps][8][4]   (per group only; gps = max(1, 128/g))
//   s_ch, bias: f32 [Np]        Np = N rounded up to 128; bias may be null (then no addition)
//   Y  : f16 bits [M][N]
//   ws : s32 [G][2][BM·BN]      stream-K partial sums (read only when some tile is shared)
//   sem: u32 [tiles]            a ticket counter per output tile, zero between launches
//
// Block tiling (output tiles of BM × BN; a 1-D persistent grid of G blocks); 8 warps; BK = 128 k per
// pipeline stage:
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
// Stream-K: the tiles × k-tiles iterations are shared evenly by G blocks (G = the tile count when
// there are enough tiles to fill the GPU, else one wave of resident blocks), so small M, which has
// few tiles and is memory bound, still keeps every SM streaming weights, with no wave tail and no
// second launch. A tile cut between blocks is finished inside the kernel by the last of its blocks
// to arrive (a per-tile ticket): it adds the others' int32 shares (exact, so arrival order cannot
// change a bit) and applies the epilogue.
//
// Main loop: per k-tile each thread issues a fixed number of 16-byte cp.async copies (A: 1, 2, 4 per
// configuration, only threads < 128 in small; B: 1, 1, 2; group scales: ≤ 1) whose addresses were set
// up once before the loop and move by constant strides (W4a8StageCopies), so the loop body is
// straight-line code: its SASS instruction counts per IMMA are in benches/SASS.md.
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

// The copy side of the pipeline. Everything a copy's addresses depend on but the k-tile is worked
// out once per thread in the constructor; a stage's copies then cost one cp.async each plus one
// constant-stride pointer increment, with trip counts that are compile-time constants.
//
// Call j = 0, 1, 2, … of w4a8_load_stage() issues the copies of k-tile kt_begin + j into slot
// j % STAGES and then advances to call j + 1 (pointers + one k-tile, slot + 1 mod STAGES), whether or
// not it copied (`copy` false past kt_end: nothing is read through the advanced pointers). The
// prologue makes calls 0..STAGES-2 and iteration it makes call STAGES-1+it, so iteration it fills
// slot (it+STAGES-1)%STAGES with k-tile kt+STAGES-1, as the schedule prescribes.
//
// A stage is split into 16-byte chunks c, thread tid copying c = tid, tid + 256, … of each part:
//   A: chunk c = tid + 256·i (i < A_COPIES) of the BM×128-byte tile, row r = c >> 3 = (tid >> 3) + 32·i,
//      16-byte column ch = c & 7 = tid & 7 (256·i ≡ 0 mod 8), swizzled to r·128 + ((ch ^ (r & 7)) << 4);
//      r & 7 = (tid >> 3) & 7 for every i (32·i ≡ 0 mod 8), so copy i lands at copy 0 + i·32·128 bytes.
//      Source x[row][kt·128 + ch·16], row = m0 + r (row 0 with 0 source bytes when row ≥ M: zero-fill).
//   B: chunk c = tid + 256·i (i < B_COPIES) of the WARPS_N 2 KiB weight chunks: wn = c >> 7 = (tid >> 7)
//      + 2·i, e = c & 127 = tid & 127; lands at c·16 = tid·16 + i·4096; source uint4 e of chunk
//      (tile0 + wn, kt), i.e. w + ((tile0 + wn)·KT + kt)·128 + e: one k-tile further = +128 uint4.
//   scales (per group): thread tid < WARPS_N·gps·2 copies 16 bytes, wn = tid / (2·gps),
//      rem = tid % (2·gps), from gs + ((tile0 + wn)·KT + kt)·gps·32 + rem·16 to tid·16: one k-tile
//      further = +gps·32 bytes.
template <class C, int STAGES, bool PER_GROUP>
struct W4a8StageCopies {
    static constexpr int A_CHUNKS = C::A_STAGE / 16;           // 16-byte chunks of one A tile
    static constexpr int A_COPIES = (A_CHUNKS + 255) / 256;    // per thread (small 1, medium 2, large 4)
    static constexpr bool A_ALL = A_CHUNKS % 256 == 0;         // else only threads tid < A_CHUNKS copy
    static constexpr int B_COPIES = C::B_STAGE / 16 / 256;     // per thread (1, 1, 2)
    static_assert(A_ALL || A_COPIES == 1, "a partial A pass is a single one");
    static_assert(C::B_STAGE % (16 * 256) == 0, "every thread copies the same number of B chunks");

    const i8* a_src[A_COPIES];  // this thread's A sources for the next call's k-tile
    u32 a_bytes[A_COPIES];      // 16, or 0 (zero-fill) for a row past M: decided once
    const uint4* b_src[B_COPIES];
    const u8* s_src;            // group scales (PER_GROUP and s_on only)
    u32 s_step;                 // gps·32: bytes of group scales per k-tile
    u32 a_dst, b_dst, s_dst;    // shared addresses of this thread's first A, B, scale copy in slot 0
    u32 slot;                   // byte offset of the next call's slot: (j % STAGES)·C::STAGE
    u64 policy;                 // L2 policy of the weight copies (w4a8_weight_policy)
    bool a_on, s_on;

    // What depends on the thread only: destinations, which copies it makes, the L2 policy.
    __device__ __forceinline__ W4a8StageCopies(u32 smem, int tid, int gps, u64 weight_policy) {
        const int r0 = tid >> 3, ch = tid & 7;
        a_on = A_ALL || tid < A_CHUNKS;
        a_dst = smem + r0 * W4A8_BK + ((ch ^ (r0 & 7)) << 4);
        b_dst = smem + C::A_STAGE + tid * 16;
        s_dst = smem + C::A_STAGE + C::B_STAGE + tid * 16;
        s_on = PER_GROUP && tid < C::NWARPS_N * gps * 2;
        s_step = PER_GROUP ? gps * W4A8_SCALE_SLOT_BYTES : 0;
        policy = weight_policy;
    }

    // The sources of a segment's first k-tile (tile at row m0, n32 tile tile0), and slot 0.
    __device__ __forceinline__ void start(int tid, const i8* __restrict__ x, const uint4* __restrict__ w,
                                          const u8* __restrict__ gs, int gps, int m0, int M, int Kp, int KT,
                                          int tile0, int kt_begin) {
        const int r0 = tid >> 3, ch = tid & 7;
#pragma unroll
        for (int i = 0; i < A_COPIES; ++i) {
            const int row = m0 + r0 + 32 * i;
            const bool valid = row < M;
            a_bytes[i] = valid ? 16u : 0u;
            a_src[i] = x + (size_t)(valid ? row : 0) * Kp + (size_t)kt_begin * W4A8_BK + ch * 16;
        }
#pragma unroll
        for (int i = 0; i < B_COPIES; ++i)
            b_src[i] = w + ((size_t)(tile0 + (tid >> 7) + 2 * i) * KT + kt_begin) * (W4A8_CHUNK_WORDS / 4) +
                       (tid & 127);
        s_src = gs;
        if (s_on) {
            const int wn = tid / (gps * 2), rem = tid % (gps * 2);
            s_src = gs + ((size_t)(tile0 + wn) * KT + kt_begin) * s_step + rem * 16;
        }
        slot = 0;
    }
};

// Issues the copies of the loader's next k-tile into its next slot (if `copy`), then advances both.
template <class C, int STAGES, bool PER_GROUP>
__device__ __forceinline__ void w4a8_load_stage(W4a8StageCopies<C, STAGES, PER_GROUP>& ld, bool copy) {
    typedef W4a8StageCopies<C, STAGES, PER_GROUP> L;
    if (copy) {
#pragma unroll
        for (int i = 0; i < L::A_COPIES; ++i)  // copy i: 32 rows (4 KiB) below copy 0
            if (ld.a_on) w4a8_cp_async16_zfill(ld.a_dst + ld.slot + i * 32 * W4A8_BK, ld.a_src[i], ld.a_bytes[i]);
#pragma unroll
        for (int i = 0; i < L::B_COPIES; ++i)  // copy i: 256 chunks (4 KiB) after copy 0
            w4a8_cp_async16_hint(ld.b_dst + ld.slot + i * 256 * 16, ld.b_src[i], ld.policy);
        if (PER_GROUP && ld.s_on) w4a8_cp_async16(ld.s_dst + ld.slot, ld.s_src);
    }
#pragma unroll
    for (int i = 0; i < L::A_COPIES; ++i) ld.a_src[i] += W4A8_BK;  // next k-tile: 128 bytes along the row
#pragma unroll
    for (int i = 0; i < L::B_COPIES; ++i) ld.b_src[i] += W4A8_CHUNK_WORDS / 4;  // next chunk: 128 uint4 = 2 KiB
    if (PER_GROUP) ld.s_src += ld.s_step;                                     // next k-tile's gps slots
    ld.slot = ld.slot == (STAGES - 1) * C::STAGE ? 0u : ld.slot + C::STAGE;  // slot (j + 1) % STAGES
}

template <int BM, int WARPS_M, int WARPS_N, int WARPS_K, int STAGES, bool PER_GROUP>
__device__ __forceinline__ void w4a8_gemm_body(const i8* __restrict__ x, const float* __restrict__ sx,
                                               const uint4* __restrict__ w, const u8* __restrict__ gs,
                                               const float* __restrict__ sch, const float* __restrict__ bias,
                                               u16* __restrict__ y, i32* __restrict__ ws, u32* __restrict__ sem,
                                               int M, int N, int Kp, int Np, int group_size) {
    typedef W4a8Config<BM, WARPS_M, WARPS_N, WARPS_K, STAGES> C;
    extern __shared__ __align__(128) u8 smem[];
    __shared__ int finisher;  // thread 0's verdict for a shared tile: this block finishes it

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int wk = warp % WARPS_K;
    const int wn = (warp / WARPS_K) % WARPS_N;
    const int wm = warp / (WARPS_K * WARPS_N);

    // Stream-K (layout.rs LaunchPlan mirrors every formula): tiles_m × tiles_n output tiles of KT
    // k-tiles each are I iterations, tile-major, n fastest; block b takes [b·I/G, (b+1)·I/G). The host
    // keeps I < 2^31, so iteration indices are ints; only the products with G need 64 bits.
    const int KT = Kp / W4A8_BK;
    const int tiles_n = Np / C::BN;
    const int tiles_m = (M + BM - 1) / BM;
    const int iters = tiles_m * tiles_n * KT;
    const int it_begin = (int)((long long)blockIdx.x * iters / gridDim.x);
    const int it_end = (int)(((long long)blockIdx.x + 1) * iters / gridDim.x);
    // Group-scale slots per k-tile: 4 groups of 32, 2 of 64, else the one group the tile lies in.
    const int gps = PER_GROUP ? (group_size < W4A8_BK ? W4A8_BK / group_size : 1) : 1;
    const u32 smem_base = w4a8_smem_u32(smem);
    // The copy side, set up once per thread; every weight byte is read by one block only when there
    // is a single tile row (M ≤ BM), and only then is evict-first the right L2 policy.
    W4a8StageCopies<C, STAGES, PER_GROUP> ld(smem_base, threadIdx.x, gps, w4a8_weight_policy(tiles_m == 1));

    // The reads, set up once per thread: this lane's byte offsets inside a slot for the k32 steps
    // s = wk + j·WARPS_K (j < KS) that its warp owns.
    constexpr int KS = W4A8_KSTEPS / WARPS_K;
    // ldmatrix.x4 of m16 tile mi, step s: lane l addresses row r = wm·WM + 16·mi + (l & 15), 16-byte
    // chunk ch = 2s + (l >> 4), at r·128 + ((ch ^ (r & 7)) << 4). r & 7 = l & 7 for every mi (WM and
    // 16·mi are multiples of 8), so tile mi is at a_off[j] + mi·16·128, a constant offset.
    u32 a_off[KS];
    // Group scales of step s: slot (32·s)/g inside the tile when g < 128, else the only one; the 4
    // bytes for columns n = 8·ni + lane/4.
    u32 s_off[KS];
#pragma unroll
    for (int j = 0; j < KS; ++j) {
        const int s = wk + j * WARPS_K;
        const int r = wm * C::WM + (lane & 15);
        const int ch = 2 * s + (lane >> 4);
        a_off[j] = r * W4A8_BK + ((ch ^ (r & 7)) << 4);
        s_off[j] = 0;
        if (PER_GROUP) {
            const int slot = group_size < W4A8_BK ? (s * W4A8_KSTEP) / group_size : 0;
            s_off[j] = C::A_STAGE + C::B_STAGE + (wn * gps + slot) * W4A8_SCALE_SLOT_BYTES + (lane >> 2) * 4;
        }
    }
    // B of step s: this lane's 16 bytes of warp column wn's chunk, at wn·2048 + (s·32 + lane)·16;
    // step j is at b_off + j·WARPS_K·32·16, a constant offset.
    const u32 b_off = C::A_STAGE + wn * (W4A8_CHUNK_WORDS * 4) + (wk * 32 + lane) * 16;

    // The segments of this block's range, one tile each, in order.
    for (int iter = it_begin; iter < it_end;) {
        const int tile = iter / KT;
        const int kt_begin = iter - tile * KT;
        const int kt_end = min(KT, kt_begin + (it_end - iter));
        iter += kt_end - kt_begin;
        // Rasterized tile order (layout.rs tile_coords): bands of W4A8_RASTER_ROWS tile rows, each band
        // column by column. A wave of consecutive tiles then covers up to 8 row tiles of the same few
        // weight columns, so at large M each weight tile comes from DRAM ⌈tiles_m / 8⌉ times, not
        // tiles_m times. With one tile row it is the plain n-fastest order: the host picks the small and
        // medium configurations only for M ≤ BM (a layout.rs test checks), so only the large one
        // compiles the band arithmetic (it would cost the small loop registers).
        int m0 = 0, tile0 = tile * WARPS_N;  // tile0: first n32 tile of this output tile
        if (BM >= 128) {
            const int band = tile / (W4A8_RASTER_ROWS * tiles_n);
            const int band_rows = min(W4A8_RASTER_ROWS, tiles_m - band * W4A8_RASTER_ROWS);
            const int in_band = tile - band * W4A8_RASTER_ROWS * tiles_n;
            m0 = (band * W4A8_RASTER_ROWS + in_band % band_rows) * BM;
            tile0 = (in_band / band_rows) * WARPS_N;
        }

        i32 acc[C::MT][4][4];
#pragma unroll
        for (int i = 0; i < C::MT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;

        // The copies of this segment: sources at its first k-tile, slot 0 (see W4a8StageCopies).
        ld.start(threadIdx.x, x, w, gs, gps, m0, M, Kp, KT, tile0, kt_begin);
        // Prologue: fill STAGES-1 slots (loader calls p = 0..STAGES-2: k-tile kt_begin+p into slot p).
#pragma unroll
        for (int p = 0; p < STAGES - 1; ++p) {
            w4a8_load_stage(ld, kt_begin + p < kt_end);
            w4a8_cp_async_commit();
        }

        u32 rd = 0;  // byte offset of the slot read in iteration it = kt - kt_begin: rd == (it%STAGES)*C::STAGE
        // Not unrolled: one straight-line body per k-tile (an unrolled copy only duplicates the slot
        // rotation and, in the small configuration, made ptxas spill).
#pragma unroll 1
        for (int kt = kt_begin; kt < kt_end; ++kt) {
            w4a8_cp_async_wait<STAGES - 2>();
            __syncthreads();  // slot it%STAGES is complete for all threads; slot (it-1)%STAGES is free
            {
                // Loader call STAGES-1+it: k-tile nk into slot (it+STAGES-1)%STAGES (ld.slot), if nk exists.
                const int nk = kt + STAGES - 1;
                w4a8_load_stage(ld, nk < kt_end);
                w4a8_cp_async_commit();
            }

#pragma unroll
            for (int j = 0; j < KS; ++j) {
                // B: one 128-bit load = this lane's word of the four n8 fragments of step s = wk + j·WARPS_K.
                const uint4 wv = *reinterpret_cast<const uint4*>(smem + rd + b_off + j * WARPS_K * 32 * 16);
                const u32 words[4] = {wv.x, wv.y, wv.z, wv.w};
                u32 b[4][2];
                if (PER_GROUP) {
                    // 4 bytes = s_g of columns n = 8·ni + lane/4, ni = 0..3.
                    const u32 sw = *reinterpret_cast<const u32*>(smem + rd + s_off[j]);
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
                    u32 a[4];
                    w4a8_ldmatrix_x4(a, smem_base + rd + a_off[j] + mi * 16 * W4A8_BK);
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) w4a8_mma_s8(acc[mi][ni], a, b[ni][0], b[ni][1]);
                }
            }
            rd = rd == (STAGES - 1) * C::STAGE ? 0u : rd + C::STAGE;  // (it + 1) % STAGES
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
#pragma unroll
            for (int q = 1; q < WARPS_K && wk == 0; ++q) {
                const i32* src = red + (((q - 1) * WARPS_M + wm) * WARPS_N + wn) * 32 * regs;
#pragma unroll
                for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                        for (int e = 0; e < 4; ++e) acc[mi][ni][e] += src[((mi * 4 + ni) * 4 + e) * 32 + lane];
            }
        }

        // A tile cut between blocks: park this block's share (warps wk = 0 hold the k-reduced sums),
        // take a ticket; the last of the tile's blocks to arrive adds the others' shares and finishes it.
        // Blocks first..last share the tile (block_of(i) = ((i + 1)·G − 1) / I); a block keeps the share
        // that starts its range in slot 0 and the one that ends it in slot 1, so its two never collide.
        // ws slot layout = the accumulator fragments, register r = (mi·4 + ni)·4 + e of warp (wm, wn) at
        // ((wm·WARPS_N + wn)·MT·16 + r)·32 + lane: lanes adjacent, every access coalesced.
        bool finish = true;
        {
            // Everything here is derived from the tile and volatile reads (w4a8_block_here), so none
            // of it is hoisted above the main loop.
            const u32 bid = w4a8_block_here();
            const long long blocks = w4a8_blocks_here();
            const int t0 = tile * KT;
            const int n_iters = tiles_m * tiles_n * KT;
            const int first = (int)(((t0 + 1) * blocks - 1) / n_iters);
            const int last = (int)(((t0 + KT) * blocks - 1) / n_iters);
            if (first != last) {
                constexpr int SLOT = BM * C::BN;  // i32 per partial-sum slot
                const int frag = ((wm * WARPS_N + wn) * C::MT * 16) * 32 + (int)w4a8_lane_here();
                const int own_begin = (int)((long long)bid * n_iters / blocks);
                if (wk == 0) {
                    i32* part = ws + ((size_t)bid * 2 + (own_begin < t0 ? 1 : 0)) * SLOT + frag;
#pragma unroll
                    for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
                        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                            for (int e = 0; e < 4; ++e) __stcg(part + ((mi * 4 + ni) * 4 + e) * 32, acc[mi][ni][e]);
                }
                __threadfence();  // this thread's share is visible device-wide before the ticket is taken
                __syncthreads();
                if (threadIdx.x == 0) {
                    const bool is_last = atomicAdd(sem + tile, 1u) == (u32)(last - first);
                    // Every other block of the tile has counted: reset for the next launch on this stream.
                    if (is_last) sem[tile] = 0;
                    finisher = is_last;
                }
                __syncthreads();
                finish = finisher;
                if (finish && wk == 0) {
                    __threadfence();  // order the reads of the others' shares after the ticket
                    for (int b = first; b <= last; ++b) {
                        if (b == (int)bid) continue;
                        const int b_begin = (int)((long long)b * n_iters / blocks);
                        // L2 only (.cg): written by other SMs during this launch.
                        const i32* part = ws + ((size_t)b * 2 + (b_begin < t0 ? 1 : 0)) * SLOT + frag;
#pragma unroll
                        for (int mi = 0; mi < C::MT; ++mi)
#pragma unroll
                            for (int ni = 0; ni < 4; ++ni)
#pragma unroll
                                for (int e = 0; e < 4; ++e)
                                    acc[mi][ni][e] += __ldcg(part + ((mi * 4 + ni) * 4 + e) * 32);
                    }
                }
            }
        }

        if (finish && wk == 0) {
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
                            if (c < N) y[(size_t)row * N + c] = w4a8_epilogue(v, s_x, sch[c], bias, c);
                        }
                    }
                }
            }
        }
        // The next segment's copies overwrite slots (and the k-reduction buffer) other warps may still read.
        __syncthreads();
    }
}

// Entry points: one per (configuration, granularity). The host table is `KERNELS` in
// backend-cuda/src/kernels.rs. Arguments as documented at the top of this file.
#define W4A8_GEMM_ENTRY(NAME, BM, WM_, WN_, WK_, ST, PG)                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                                  \
        const i8* __restrict__ x, const float* __restrict__ sx, const uint4* __restrict__ w,                 \
        const u8* __restrict__ gs, const float* __restrict__ sch, const float* __restrict__ bias,            \
        u16* __restrict__ y, i32* __restrict__ ws, u32* __restrict__ sem, int M, int N, int Kp, int Np,      \
        int group_size) {                                                                                    \
        w4a8_gemm_body<BM, WM_, WN_, WK_, ST, PG>(x, sx, w, gs, sch, bias, y, ws, sem, M, N, Kp, Np,         \
                                                  group_size);                                               \
    }

W4A8_GEMM_ENTRY(w4a8_gemm_small_per_channel, 16, 1, 2, 4, 6, false)
W4A8_GEMM_ENTRY(w4a8_gemm_small_per_group, 16, 1, 2, 4, 6, true)
W4A8_GEMM_ENTRY(w4a8_gemm_medium_per_channel, 64, 2, 2, 2, 4, false)
W4A8_GEMM_ENTRY(w4a8_gemm_medium_per_group, 64, 2, 2, 2, 4, true)
W4A8_GEMM_ENTRY(w4a8_gemm_large_per_channel, 128, 2, 4, 1, 4, false)
W4A8_GEMM_ENTRY(w4a8_gemm_large_per_group, 128, 2, 4, 1, 4, true)
