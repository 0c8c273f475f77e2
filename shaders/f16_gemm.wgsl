requires packed_4x8_integer_dot_product;

// f16_gemm.wgsl — our plain f16 GEMM baseline: y = f16(x · wᵀ), f16 operands, f32 accumulation.
// It is what the W4A8 kernels are compared against on the same wgpu device (benches), not a path
// of the W4A8 format; it needs no SHADER_F16 (operands are decoded from packed words).
//
// Same tiling as w4a8_gemm_tiled.wgsl: 64×64 output tile per workgroup, 256 invocations, each
// 4 rows (ty + 16i) × 4 adjacent columns (4tx + j); K in steps of 16, staged as f32:
//
//   xs[64 rows][16 k]  from x (M × Kp f16, Kp = K rounded up to even, two f16 per word)
//   ws[64 cols][16 k]  from w (N × Kp f16, the `Linear.weight` layout)
//
// Output uses the W4A8 output layout (M × Np f16, Np = N rounded up to even).

struct F16Params {
    m: u32,
    n: u32,
    k: u32,
    k_stride: u32,   // words per operand row: Kp / 2
    m_tiles: u32,
    n_tiles: u32,
    y_stride: u32,   // Np / 2
    _pad: u32,
}

@group(0) @binding(0) var<uniform> fp: F16Params;
@group(0) @binding(1) var<storage, read> xh: array<u32>;   // [m][Kp/2] f16×2
@group(0) @binding(2) var<storage, read> wh: array<u32>;   // [n][Kp/2] f16×2
@group(0) @binding(3) var<storage, read_write> yh: array<u32>;

var<workgroup> fxs: array<f32, 1024>;   // 64 × 16
var<workgroup> fws: array<f32, 1024>;   // 64 × 16

@compute @workgroup_size(256)
fn f16_gemm_tiled(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= fp.m_tiles * fp.n_tiles) { return; }
    let tile_m = (lin / fp.n_tiles) * 64u;
    let tile_n = (lin % fp.n_tiles) * 64u;
    let tx = lid % 16u;
    let ty = lid / 16u;

    var total: array<f32, 16>;
    for (var t = 0u; t < 16u; t++) { total[t] = 0.0; }

    for (var k0 = 0u; k0 < fp.k; k0 += 16u) {
        // 64 rows × 8 words per operand: two words per invocation each; past M / N / Kp -> 0.
        for (var r = 0u; r < 2u; r++) {
            let t = lid + r * 256u;
            let row = t / 8u;
            let kw = k0 / 2u + t % 8u;
            var xv = 0u;
            var wv = 0u;
            if (tile_m + row < fp.m && kw < fp.k_stride) { xv = xh[(tile_m + row) * fp.k_stride + kw]; }
            if (tile_n + row < fp.n && kw < fp.k_stride) { wv = wh[(tile_n + row) * fp.k_stride + kw]; }
            fxs[row * 16u + 2u * (t % 8u)] = f16_bits_to_f32(xv & 0xffffu);
            fxs[row * 16u + 2u * (t % 8u) + 1u] = f16_bits_to_f32(xv >> 16u);
            fws[row * 16u + 2u * (t % 8u)] = f16_bits_to_f32(wv & 0xffffu);
            fws[row * 16u + 2u * (t % 8u) + 1u] = f16_bits_to_f32(wv >> 16u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var wr: vec4<f32>;
            for (var j = 0u; j < 4u; j++) { wr[j] = fws[(4u * tx + j) * 16u + kk]; }
            for (var i = 0u; i < 4u; i++) {
                let xv = fxs[(ty + 16u * i) * 16u + kk];
                for (var j = 0u; j < 4u; j++) {
                    total[i * 4u + j] = fma(xv, wr[j], total[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = tile_m + ty + 16u * i;
        if (row >= fp.m) { continue; }
        for (var h = 0u; h < 2u; h++) {
            let c = tile_n + 4u * tx + 2u * h;
            if (c >= fp.n) { continue; }
            let lo = f32_to_f16_bits(total[i * 4u + 2u * h]);
            var hi = 0u;
            if (c + 1u < fp.n) { hi = f32_to_f16_bits(total[i * 4u + 2u * h + 1u]); }
            yh[row * fp.y_stride + c / 2u] = lo | (hi << 16u);
        }
    }
}
