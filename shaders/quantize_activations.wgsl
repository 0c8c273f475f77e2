requires packed_4x8_integer_dot_product;

// quantize_activations.wgsl — per-token symmetric int8 quantization of f16 activations.
//
// One workgroup per row (token) m; 256 invocations stride along K:
//
//   row m:  k = 0 1 2 ... 255 | 256 ... 511 | ...      (invocation i handles k ≡ i mod 256)
//
//   x'[k]  = f32(x[m,k]) * smooth[k]                    (smooth = 1 when absent)
//   s_x[m] = max_k |x'[k]| / 127                          (f32 division, as the oracle does)
//   q[m,k] = clamp(round(x'[k] / s_x[m]), -127, 127)      (round() is ties-to-even in WGSL)
//
// The row maximum is reduced either through workgroup memory (quantize_reduce_shared.wgsl) or with
// subgroupMax (quantize_reduce_subgroup.wgsl); the host appends exactly one of the two, which
// supplies the entry point and calls the phases below. Non-finite inputs never get here: the host
// checks x and x * smooth before upload (`first_non_finite` in backend.rs), so every value read is finite.

struct QuantParams {
    m: u32,          // rows in this dispatch
    k: u32,          // real K (columns of x)
    x_stride: u32,   // words (4 int8) per output row = Kp / 4, Kp = K rounded up to 32
    has_smooth: u32, // 1 when `smoothing` holds K factors, 0 when it is a 1-element placeholder
}

@group(0) @binding(0) var<uniform> qp: QuantParams;
// x: M×K f16, row-major, two per word (element i in the low half of word i/2 when i is even).
@group(0) @binding(1) var<storage, read> x_f16: array<u32>;
// smoothing: K f32 (or one placeholder element).
@group(0) @binding(2) var<storage, read> smoothing: array<f32>;
// xq: M × Kp/4 words, each four int8 in k order (lowest byte = lowest k); k ≥ K written as 0.
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;
// scales: M f32 (s_x).
@group(0) @binding(4) var<storage, read_write> x_scales: array<f32>;

const QUANT_WG: u32 = 256u;

// x'[m,k] as f32 (exact f16 decode, then the smoothing product rounded once in f32).
fn load_scaled(m: u32, k: u32) -> f32 {
    let i = m * qp.k + k;
    let word = x_f16[i >> 1u];
    let h = (word >> ((i & 1u) * 16u)) & 0xffffu;  // even i: low half, odd i: high half
    var v = f16_bits_to_f32(h);
    if (qp.has_smooth == 1u) {
        v = v * smoothing[k];
    }
    return v;
}

// Phase 1: this invocation's max |x'| over its strided share of the row.
fn local_absmax(m: u32, lid: u32) -> f32 {
    var mx = 0.0;
    for (var k = lid; k < qp.k; k += QUANT_WG) {
        mx = max(mx, abs(load_scaled(m, k)));
    }
    return mx;
}

// Phase 3: with the row maximum known, write s_x and the packed int8 row (one word per step).
fn write_row(m: u32, lid: u32, row_max: f32) {
    // / 127: the symmetric int8 range is [-127, 127]; -128 is never produced.
    let s = row_max / 127.0;
    if (lid == 0u) {
        x_scales[m] = s;
    }
    for (var w = lid; w < qp.x_stride; w += QUANT_WG) {
        var q = vec4<i32>(0);
        if (s > 0.0) {
            for (var j = 0u; j < 4u; j++) {
                let k = w * 4u + j;
                if (k < qp.k) {
                    q[j] = i32(clamp(round(load_scaled(m, k) / s), -127.0, 127.0));
                }
            }
        }
        // pack4xI8: component j -> byte j (bits 8j..8j+7), i.e. lowest byte = lowest k.
        xq[m * qp.x_stride + w] = pack4xI8(q);
    }
}
