// w4a8_quantize.cu — per-token symmetric int8 quantization of f16 activations, plain
// (w4a8_quantize_activations) and with the online Walsh–Hadamard rotation fused in
// (w4a8_quantize_activations_hadamard, below).
//
//   x'      = x[m][k] · smooth[k]            (one rounded f32 multiply; x' = x without smoothing)
//   s_x[m]  = max_k |x'| / 127               (exact division, __fdiv_rn)
//   q[m][k] = clamp(rne(x' / s_x), -127, 127), 0 for an all-zero row (s_x = 0) and for k ≥ K
//
// Every step is one correctly rounded f32 operation, so the result equals the CPU quantizer bit for
// bit. A non-finite x' is reported through `bad`: the kernel keeps the smallest flat index i found
// as atomicMax(bad, ~0 - i) (the host zeroes `bad` first and reads it back; 0 means none).
//
// Arguments:
//   x      : f16 bits [M][K] row-major
//   smooth : f32 [K], or null for no smoothing
//   q      : s8  [M][Kp]  Kp = K rounded up to 128 (the GEMM's k-tile); the padding is written as 0
//   sx     : f32 [M]
//   bad    : u64 [1]
// Grid: one block of 256 threads per row (M blocks).

#include "w4a8_common.cuh"

__device__ __forceinline__ float w4a8_load_scaled(const u16* __restrict__ xrow, const float* __restrict__ smooth,
                                                  int k) {
    float v = w4a8_h2f(xrow[k]);
    return smooth != nullptr ? __fmul_rn(v, smooth[k]) : v;
}

extern "C" __global__ void __launch_bounds__(256)
    w4a8_quantize_activations(const u16* __restrict__ x, const float* __restrict__ smooth, i8* __restrict__ q,
                              float* __restrict__ sx, u64* __restrict__ bad, int M, int K, int Kp) {
    __shared__ float warp_max[8];
    const int row = blockIdx.x;
    if (row >= M) return;
    const u16* xrow = x + (size_t)row * K;

    // Pass 1: max |x'| of the row, and the first non-finite element.
    float amax = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float v = w4a8_load_scaled(xrow, smooth, k);
        if (!isfinite(v)) {
            atomicMax(bad, ~0ull - ((u64)row * (u64)K + (u64)k));
        } else {
            amax = fmaxf(amax, fabsf(v));
        }
    }
    // max is exact and order-independent: warp butterfly, then the 8 warp maxima.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = warp_max[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) amax = fmaxf(amax, warp_max[i]);

    const float s = __fdiv_rn(amax, 127.0f);
    if (threadIdx.x == 0) sx[row] = s;

    // Pass 2: quantize (the row is hot in L1/L2 from pass 1).
    i8* qrow = q + (size_t)row * Kp;
    for (int k = threadIdx.x; k < Kp; k += blockDim.x) {
        int v = 0;
        if (k < K && s != 0.0f) {
            v = __float2int_rn(__fdiv_rn(w4a8_load_scaled(xrow, smooth, k), s));
            v = min(127, max(-127, v));
        }
        qrow[k] = (i8)v;
    }
}

// ---------------------------------------------------------------------------------------------
// w4a8_quantize_activations_hadamard — the same quantizer with the online Walsh–Hadamard rotation
// fused in (QuaRot-style; the weights hold H_b / b, see core/src/transform.rs):
//
//   x'      = x[m][k] · smooth[k]                       (one rounded f32 multiply)
//   y       = x' · H_b on each block of B channels, H_b the ±1 Sylvester matrix, B a power of two
//   s_x[m]  = max_k |y| / 127,  q[m][k] = clamp(rne(y / s_x), -127, 127)
//
// The rotation is the oracle's fixed butterfly order: stages h = 1, 2, 4, …, B/2; each pair
// (i, i + h) of a block, i with bit h clear, becomes (u + v, u − v) with __fadd_rn / __fsub_rn
// (never contracted, subnormals kept under --ftz=false), stages separated by __syncthreads in
// shared memory, so every value is the oracle's bits.
//
// The row is rotated a chunk of W4A8_HCHUNK channels at a time in shared memory (16 KiB); a chunk
// starts at a multiple of W4A8_HCHUNK and hence of B (both powers of two, B ≤ W4A8_HCHUNK, checked
// by the host), so it holds whole blocks:
//
//   hb:      [ block 0 | block 1 | … ]              chunk channels c0 .. c0 + len
//   stage h: pair p < len/2 -> i = (p >> log2 h) << (log2 h + 1) | (p & (h − 1)), j = i + h
//
// Pass 1 rotates every chunk for the row maximum; pass 2 rotates each chunk again (the same
// operations, the same bits) and writes the codes. A non-finite x' or y sets `bad` as above (the
// host then finds the oracle's exact error on its side: w4a8_core::transform::first_transform_error).
//
// Arguments: those of w4a8_quantize_activations, then
//   B      : the Hadamard block (a power of two in [2, W4A8_HCHUNK] dividing K)
// Grid: one block of 256 threads per row (M blocks).
// ---------------------------------------------------------------------------------------------

// Channels rotated at a time: 4096 f32 = 16 KiB of static shared memory (the largest block,
// w4a8_core::MAX_HADAMARD_BLOCK).
#define W4A8_HCHUNK 4096

// hb[0 .. len) <- x' of channels c0 .. c0 + len, then every butterfly stage of every block. Ends on a
// barrier: hb holds y for the chunk, visible to the whole block.
__device__ __forceinline__ void w4a8_rotate_chunk(float* hb, const u16* __restrict__ xrow,
                                                  const float* __restrict__ smooth, u64* __restrict__ bad,
                                                  u64 row_base, int c0, int len, int B) {
    for (int i = threadIdx.x; i < len; i += blockDim.x) {
        const float v = w4a8_load_scaled(xrow, smooth, c0 + i);
        if (!isfinite(v)) atomicMax(bad, ~0ull - (row_base + (u64)(c0 + i)));
        hb[i] = v;
    }
    __syncthreads();
    for (int h = 1, log_h = 0; h < B; h <<= 1, ++log_h) {
        for (int p = threadIdx.x; p < (len >> 1); p += blockDim.x) {
            // Insert a zero at bit log_h of p: the pair's first element, bit h clear.
            const int i = ((p >> log_h) << (log_h + 1)) | (p & (h - 1));
            const float u = hb[i], v = hb[i + h];
            hb[i] = __fadd_rn(u, v);
            hb[i + h] = __fsub_rn(u, v);
        }
        __syncthreads();  // stage h complete before stage 2h reads it
    }
}

extern "C" __global__ void __launch_bounds__(256)
    w4a8_quantize_activations_hadamard(const u16* __restrict__ x, const float* __restrict__ smooth,
                                       i8* __restrict__ q, float* __restrict__ sx, u64* __restrict__ bad, int M,
                                       int K, int Kp, int B) {
    __shared__ float hb[W4A8_HCHUNK];
    __shared__ float warp_max[8];
    const int row = blockIdx.x;
    if (row >= M) return;
    const u16* xrow = x + (size_t)row * K;
    const u64 row_base = (u64)row * (u64)K;

    // Pass 1: max |y| of the row; a non-finite y (an overflowing rotation) is flagged.
    float amax = 0.0f;
    for (int c0 = 0; c0 < K; c0 += W4A8_HCHUNK) {
        const int len = min(W4A8_HCHUNK, K - c0);
        w4a8_rotate_chunk(hb, xrow, smooth, bad, row_base, c0, len, B);
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            const float v = hb[i];
            if (!isfinite(v)) {
                atomicMax(bad, ~0ull - (row_base + (u64)(c0 + i)));
            } else {
                amax = fmaxf(amax, fabsf(v));
            }
        }
        __syncthreads();  // every value read before the next chunk overwrites hb
    }
    // max is exact and order-independent: warp butterfly, then the 8 warp maxima.
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
    __syncthreads();
    amax = warp_max[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) amax = fmaxf(amax, warp_max[i]);

    const float s = __fdiv_rn(amax, 127.0f);
    if (threadIdx.x == 0) sx[row] = s;

    // Pass 2: rotate again and write the codes of the chunk.
    i8* qrow = q + (size_t)row * Kp;
    for (int c0 = 0; c0 < K; c0 += W4A8_HCHUNK) {
        const int len = min(W4A8_HCHUNK, K - c0);
        w4a8_rotate_chunk(hb, xrow, smooth, bad, row_base, c0, len, B);
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            int v = 0;
            if (s != 0.0f) {
                v = __float2int_rn(__fdiv_rn(hb[i], s));
                v = min(127, max(-127, v));
            }
            qrow[c0 + i] = (i8)v;
        }
        __syncthreads();  // every code read before the next chunk overwrites hb
    }
    // The padding k in [K, Kp): zeros.
    for (int k = K + threadIdx.x; k < Kp; k += blockDim.x) qrow[k] = 0;
}
