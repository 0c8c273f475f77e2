requires packed_4x8_integer_dot_product;

// w4a8_epilogue.wgsl — the two helpers around the split-K small-M GEMM:
//   zero_accumulators: acc[0 .. count) = 0 before the splits add into it;
//   w4a8_epilogue:     y = f16(((f32(acc) * s_x[m]) * s_ch[n]) + bias[n]), left to right in f32,
//                      exactly the oracle's expression; no addition at all without a bias (adding
//                      +0.0 would turn a -0.0 product into +0.0).
//
// Output layout (shared by every GEMM kernel): M rows of Np = N rounded up to even f16, two per
// word (column n in the low half when n is even), so that each invocation owns whole words and
// no two invocations write the same word. The padding column (N odd) is written as +0.0.

struct EpilogueParams {
    m: u32,          // rows
    n: u32,          // columns
    y_stride: u32,   // words per output row = Np / 2
    has_bias: u32,   // 1: add bias[n]
    count: u32,      // zero_accumulators: words to clear (M·N); epilogue: M · y_stride
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> ep: EpilogueParams;
@group(0) @binding(1) var<storage, read_write> acc: array<i32>;         // [m][N] int32
@group(0) @binding(2) var<storage, read> x_scales: array<f32>;          // M
@group(0) @binding(3) var<storage, read> channel_scales: array<f32>;    // N
@group(0) @binding(4) var<storage, read> bias: array<f32>;              // N, or 1 placeholder
@group(0) @binding(5) var<storage, read_write> y: array<u32>;           // [m][Np/2] f16×2

const EPI_WG: u32 = 256u;

@compute @workgroup_size(256)
fn zero_accumulators(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_workgroup(wid, nwg) * EPI_WG + lid;
    if (i < ep.count) { acc[i] = 0; }
}

fn epilogue_one(m: u32, n: u32) -> u32 {
    var v = (f32(acc[m * ep.n + n]) * x_scales[m]) * channel_scales[n];
    if (ep.has_bias == 1u) { v = v + bias[n]; }
    return f32_to_f16_bits(v);
}

@compute @workgroup_size(256)
fn w4a8_epilogue(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_workgroup(wid, nwg) * EPI_WG + lid;
    if (i >= ep.count) { return; }
    let m = i / ep.y_stride;
    let n = (i % ep.y_stride) * 2u;
    var lo = epilogue_one(m, n);
    var hi = 0u;                                   // padding column of an odd N: +0.0
    if (n + 1u < ep.n) { hi = epilogue_one(m, n + 1u); }
    y[i] = lo | (hi << 16u);
}
