// w4a8_quantize.cu — per-token symmetric int8 quantization of f16 activations.
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
