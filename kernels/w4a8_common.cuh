// w4a8_common.cuh — helpers shared by the W4A8 CUDA kernels.
//
// Compiled at run time by NVRTC (no CUDA headers needed: fixed-width types and f16 conversions are
// spelled out here). The host splices this file in place of the `#include "w4a8_common.cuh"` line of
// each .cu file, so the whole library is one translation unit and one module per device.
//
// Everything here is sm_80+ (cp.async, ldmatrix, mma.m16n8k32 s8).
#pragma once

typedef signed char i8;
typedef unsigned char u8;
typedef unsigned short u16;
typedef int i32;
typedef unsigned int u32;
typedef unsigned long long u64;

// ---------------------------------------------------------------------------------------------
// Geometry shared with the host (backend-cuda/src/layout.rs mirrors every constant; a test checks).
// ---------------------------------------------------------------------------------------------

// K per pipeline stage ("k-tile"): activations and weights are padded to a multiple of it.
#define W4A8_BK 128
// K per mma.m16n8k32 step.
#define W4A8_KSTEP 32
// k32 steps per k-tile.
#define W4A8_KSTEPS (W4A8_BK / W4A8_KSTEP)
// Output columns owned by one warp in every kernel configuration: four n8 mma tiles.
#define W4A8_WARP_N 32
// u32 words in one packed weight chunk (n32 × k128 = 4096 nibbles = 512 words = 2 KiB):
// [k32 step s (4)][lane (32)][n8 sub-tile ni (4)].
#define W4A8_CHUNK_WORDS 512
// Bytes of group scales per (n32 tile, k-tile, group slot): [groupID (8)][n8 sub-tile ni (4)].
#define W4A8_SCALE_SLOT_BYTES 32
// Output tiles are numbered in bands of this many tile rows, column by column inside a band, so the
// blocks running at once share weight columns (L2 hits) when M spans many tiles.
#define W4A8_RASTER_ROWS 8

// ---------------------------------------------------------------------------------------------
// f16 <-> f32 without cuda_fp16.h: f16 values travel as their 16 raw bits (u16).
// ---------------------------------------------------------------------------------------------

// Exact widening f16 -> f32.
__device__ __forceinline__ float w4a8_h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// f32 -> f16, round to nearest even (the `.rn` of the format's epilogue).
__device__ __forceinline__ u16 w4a8_f2h_rn(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// ---------------------------------------------------------------------------------------------
// Asynchronous copies (sm_80 cp.async): global -> shared without a register round trip.
// ---------------------------------------------------------------------------------------------

// A generic pointer into shared memory as the 32-bit shared-window address that cp.async and
// ldmatrix take (computed once per thread; the main loop adds 32-bit offsets to it).
__device__ __forceinline__ u32 w4a8_smem_u32(const void* smem) { return (u32)__cvta_generic_to_shared(smem); }

// %ctaid.x, %nctaid.x and %laneid read where they are used: a volatile asm is never hoisted, so the
// code after a main loop (the stream-K fix-up) keeps no values of its own live across that loop,
// where they would crowd out the loop's addresses (ptxas then recomputes those in the loop).
__device__ __forceinline__ u32 w4a8_block_here() {
    u32 v;
    asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(v));
    return v;
}
__device__ __forceinline__ u32 w4a8_blocks_here() {
    u32 v;
    asm volatile("mov.u32 %0, %%nctaid.x;" : "=r"(v));
    return v;
}
__device__ __forceinline__ u32 w4a8_lane_here() {
    u32 v;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(v));
    return v;
}

// 16-byte copy that bypasses L1 (`.cg`: every byte is used once per block). `src_bytes` is 16, or 0
// to zero-fill the 16 destination bytes without reading: rows past M read as zeros.
__device__ __forceinline__ void w4a8_cp_async16_zfill(u32 dst, const void* gmem, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

// 16-byte copy that bypasses L1.
__device__ __forceinline__ void w4a8_cp_async16(u32 dst, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}

// 16-byte copy that bypasses L1 with an L2 cache policy made once by w4a8_weight_policy.
__device__ __forceinline__ void w4a8_cp_async16_hint(u32 dst, const void* gmem, u64 policy) {
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
                 "l"(policy));
}

// The L2 policy of the weight copies, created once per thread (not per copy). When every weight
// byte is read by one block only (`read_once`: the grid has one block row, M ≤ BM), evict-first
// keeps the streamed weights from pushing the (re-read) activations out of L2; when ⌈M/BM⌉ block
// rows each re-read the weights, evict-first would throw out what the next row needs, so the
// policy is the default priority (evict_normal).
__device__ __forceinline__ u64 w4a8_weight_policy(bool read_once) {
    u64 policy;
    if (read_once)
        asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    else
        asm("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;\n" : "=l"(policy));
    return policy;
}

__device__ __forceinline__ void w4a8_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void w4a8_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---------------------------------------------------------------------------------------------
// Tensor-core fragments.
// ---------------------------------------------------------------------------------------------

// Four 8×8 b16 matrices from shared memory (= four 8-row × 16-byte int8 tiles). Lane l gives the
// shared address of row (l % 8) of matrix (l / 8); register i receives, in every lane, the 4 bytes
// at row (lane / 4), bytes 4·(lane % 4).. of matrix i.
__device__ __forceinline__ void w4a8_ldmatrix_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// D = A·B + D on int8 tensor cores, exact int32 accumulation.
//
//  A 16×32 s8 (row)          B 32×8 s8 (col)          C/D 16×8 s32
//  g = lane/4, t = lane%4
//  a[0]: row g,   k 4t..4t+3     b[0]: n g, k 4t..4t+3       c[0],c[1]: row g,   n 2t, 2t+1
//  a[1]: row g+8, k 4t..4t+3     b[1]: n g, k 16+4t..+3      c[2],c[3]: row g+8, n 2t, 2t+1
//  a[2]: row g,   k 16+4t..+3
//  a[3]: row g+8, k 16+4t..+3    (lowest k in the lowest byte of each register)
//
// (PTX ISA, "Matrix Fragments for mma.m16n8k32"; src/emulate.rs implements the same map.)
__device__ __forceinline__ void w4a8_mma_s8(i32 (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// int4 -> int8 dequantization in registers.
//
// PACKING <-> DEQUANT INVARIANT (the Rust side is `layout::pack_word`, tested by emulate.rs):
// one packed u32 word w is one lane's share of one 32(k)×8(n) B fragment:
//   byte i of w (i = 0..3):  low nibble  = weight at k = 4t + i       -> b[0] byte i
//                            high nibble = weight at k = 16 + 4t + i  -> b[1] byte i
// so two mask operations turn a word into both mma registers with no shuffles and no byte moves.
// Per channel the nibbles are the two's-complement q ∈ [-8, 7]; per group they are u = q + 8
// (= q ^ 8) ∈ [0, 15].
// ---------------------------------------------------------------------------------------------

// Per channel: keep each nibble in the HIGH half of its byte. A two's-complement nibble q there is
// the s8 value 16·q ∈ [-128, 112], exactly, so the mma accumulates 16·acc; the epilogue shifts the
// sum right by 4 (exact: every term is a multiple of 16, |16·acc| ≤ 16·127·8·65536 < 2³¹).
// 0xF0F0F0F0 = the high nibble of each of the four bytes. 3 integer ops per 8 weights.
// (Rejected: folding the 16 into s_ch/16 in the epilogue — exact only while s_ch/16 and the f32
// products stay normal; the shift is exact always and costs one op per output.)
__device__ __forceinline__ void w4a8_dequant_per_channel(u32 w, u32& b0, u32& b1) {
    b0 = (w << 4) & 0xF0F0F0F0u;  // low nibbles (k = 4t + i) moved up into the high halves
    b1 = w & 0xF0F0F0F0u;         // high nibbles (k = 16 + 4t + i) already in place
}

// Per group: b = s_g·q for the whole byte vector in one multiply-add, with no carries between bytes.
//   u·s_g ∈ [0, 240] per byte (u ≤ 15, s_g ≤ 16), and
//   e = u·s_g + (128 - 8·s_g) ∈ [128 - 8·s_g, 128 + 7·s_g] ⊂ [0, 240]: still one byte, so
//   E = U·s_g + K1 with K1 = (128 - 8·s_g)·0x01010101 is a plain 32-bit IMAD.
//   e - 128 = (u - 8)·s_g = q·s_g ∈ [-128, 112]; for a byte e, e - 128 ≡ e ^ 0x80 (mod 256),
//   so b = E ^ 0x80808080 holds the four s8 values s_g·q.
// K1 is itself one IMAD: (128 - 8s)·0x01010101 = 0x80808080 - s·0x08080808 (no byte borrows,
// since 8s ≤ 128). 0x0F0F0F0F = the low nibble of each byte. 7 integer ops per 8 weights.
// (Rejected: unsigned B (mma .s8.u8) with u·s_g and a correction −8·s_g·Σ_group x after the
// multiply — exact too, but needs per-group activation sums for a group size the activations
// don't know; this form keeps the whole reduction a plain s8×s8 mma.)
__device__ __forceinline__ u32 w4a8_group_offset(u32 s_g) { return 0x80808080u - s_g * 0x08080808u; }

__device__ __forceinline__ void w4a8_dequant_per_group(u32 w, u32 s_g, u32 k1, u32& b0, u32& b1) {
    b0 = ((w & 0x0F0F0F0Fu) * s_g + k1) ^ 0x80808080u;         // low nibbles u (k = 4t + i)
    b1 = (((w >> 4) & 0x0F0F0F0Fu) * s_g + k1) ^ 0x80808080u;  // high nibbles u (k = 16 + 4t + i)
}

// ---------------------------------------------------------------------------------------------
// The epilogue, exactly as the format specifies: f16(((f32(acc) · s_x) · s_ch) + bias), every
// operation a separately rounded (round-to-nearest-even) f32 op. The _rn intrinsics are never
// contracted into an FMA, whatever --fmad says; without a bias there is no addition (-0 stays -0).
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ u16 w4a8_epilogue(i32 acc, float s_x, float s_ch, const float* bias, int col) {
    float y = __fmul_rn(__fmul_rn(__int2float_rn(acc), s_x), s_ch);
    if (bias != nullptr) y = __fadd_rn(y, bias[col]);
    return w4a8_f2h_rn(y);
}
