requires packed_4x8_integer_dot_product;

// quantize_activations.wgsl — per-token symmetric int8 quantization of f16 activations.
//
// One workgroup per row (token) m; 256 invocations stride along K:
//
//   row m:  k = 0 1 2 ... 255 | 256 ... 511 | ...      (invocation i handles k ≡ i mod 256)
//
//   x'[k]  = f32(x[m,k]) * smooth[k]                    (smooth = 1 when absent)
//   s_x[m] = max_k |x'[k]| / 127                          (exactly rounded f32 division)
//   q[m,k] = clamp(rne(x'[k] / s_x[m]), -127, 127)        (the quotient exactly rounded too)
//
// each step bit-identical to the oracle on any driver (quantize_exact.wgsl says how). The row
// maximum is a u32 max over |x'| bits, reduced either through workgroup memory
// (quantize_reduce_shared.wgsl) or with subgroupMax (quantize_reduce_subgroup.wgsl); the host appends
// exactly one of the two, which supplies the entry point and calls the phases below. Non-finite
// inputs never get here: the host checks x and x * smooth before upload (`first_transform_error` in
// w4a8-core), so every value read is finite. quantize_hadamard.wgsl reuses the bindings and
// load_scaled below, with its own entry point.

struct QuantParams {
    m: u32,          // rows in this dispatch
    k: u32,          // real K (columns of x)
    x_stride: u32,   // words (4 int8) per output row = Kp / 4, Kp = K rounded up to 32
    has_smooth: u32, // 1 when `smoothing` holds K factors, 0 when it is a 1-element placeholder
    fence: u32,      // always 0: an opaque zero for scaled_activation_bits (see quantize_exact.wgsl)
    block: u32,      // Hadamard block b (quantize_hadamard.wgsl only; 0 for the plain quantizer)
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> qp: QuantParams;
// x: M×K f16, row-major, two per word (element i in the low half of word i/2 when i is even).
@group(0) @binding(1) var<storage, read> x_f16: array<u32>;
// smoothing: K f32 as bits (or one placeholder element).
@group(0) @binding(2) var<storage, read> smoothing: array<u32>;
// xq: M × Kp/4 words, each four int8 in k order (lowest byte = lowest k); k ≥ K written as 0.
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
// scales: M f32 (s_x), written as bits.
@group(0) @binding(4) var<storage, read_write> x_scales: array<u32>;

const QUANT_WG: u32 = 256u;

// x'[m,k] as f32 bits (exact f16 decode, then the smoothing product rounded once in f32).
fn load_scaled(m: u32, k: u32) -> u32 {
    let i = m * qp.k + k;
    let word = x_f16[i >> 1u];
    let h = (word >> ((i & 1u) * 16u)) & 0xffffu;  // even i: low half, odd i: high half
    let v = bitcast<u32>(f16_bits_to_f32(h));
    if (qp.has_smooth == 1u) {
        return scaled_activation_bits(v, smoothing[k], qp.fence);
    }
    return v;
}

// Phase 1: this invocation's max |x'| bits over its strided share of the row.
fn local_absmax(m: u32, lid: u32) -> u32 {
    var mx = 0u;
    for (var k = lid; k < qp.k; k += QUANT_WG) {
        mx = max(mx, load_scaled(m, k) & 0x7fffffffu);
    }
    return mx;
}

// Phase 3: with the row maximum known, write s_x and the packed int8 row (one word per step).
fn write_row(m: u32, lid: u32, row_max_bits: u32) {
    let s = activation_scale_bits(row_max_bits);
    if (lid == 0u) {
        x_scales[m] = s;
    }
    for (var w = lid; w < qp.x_stride; w += QUANT_WG) {
        var q = vec4<i32>(0);
        if (s != 0u) {   // an all-zero row: s_x = 0 and q = 0
            for (var j = 0u; j < 4u; j++) {
                let k = w * 4u + j;
                if (k < qp.k) {
                    q[j] = activation_code(load_scaled(m, k), s);
                }
            }
        }
        // pack4xI8: component j -> byte j (bits 8j..8j+7), i.e. lowest byte = lowest k.
        xq[m * qp.x_stride + w] = pack4xI8(q);
    }
}
