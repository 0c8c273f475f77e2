requires packed_4x8_integer_dot_product;

// exact_check.wgsl — test-only (never compiled by the backend): applies one of the exact-arithmetic
// functions to each case of a list, so that `backend-wgpu/tests/exact.rs` can hold softfloat.wgsl,
// epilogue_exact.wgsl and quantize_exact.wgsl to the CPU's IEEE arithmetic and to the oracle, on
// millions of operands, including those the fast paths hand to the integer fallback.

struct CheckParams {
    count: u32,   // cases
    fence: u32,   // always 0, as in the kernels
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> cp: CheckParams;
// Two vec4 per case: (op, a, b, c), (d, 0, 0, 0); operands are f32 bits or an i32.
@group(0) @binding(1) var<storage, read> cases: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> results: array<u32>;

// The operations, numbered as `Op` in tests/exact.rs.
fn check_one(op: u32, a: u32, b: u32, c: u32, d: u32) -> u32 {
    switch op {
        case 0u: { return sf_mul(a, b); }
        case 1u: { return sf_add(a, b); }
        case 2u: { return sf_div(a, b); }
        case 3u: { return sf_from_i32(bitcast<i32>(a)); }
        // The kernels' epilogue: a = acc, b = s_x, c = s_ch, d = bias.
        case 4u: { return epilogue_f16_bits(bitcast<i32>(a), b, c, d, true, cp.fence); }
        case 5u: { return epilogue_f16_bits(bitcast<i32>(a), b, c, d, false, cp.fence); }
        // Its integer fallback alone, whatever the fast path would have decided.
        case 6u: { return f16_bits_from_f32_bits(sf_add(sf_mul(sf_mul(sf_from_i32(bitcast<i32>(a)), b), c), d)); }
        case 7u: { return f16_bits_from_f32_bits(sf_mul(sf_mul(sf_from_i32(bitcast<i32>(a)), b), c)); }
        // The quantizer's steps: a = x (f32 bits of an f16), b = smooth; a = row max; a = x', b = s_x.
        case 8u: { return scaled_activation_bits(a, b, cp.fence); }
        case 9u: { return activation_scale_bits(a); }
        case 10u: { return bitcast<u32>(activation_code(a, b)); }
        default: { return 0xdeadbeefu; }
    }
}

@compute @workgroup_size(64)
fn exact_check(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = linear_workgroup(wid, nwg) * 64u + lid;
    if (i >= cp.count) { return; }
    let x = cases[2u * i];
    let y = cases[2u * i + 1u];
    results[i] = check_one(x.x, x.y, x.z, x.w, y.x);
}
