// epilogue_exact.wgsl — the W4A8 output value, bit-identical to the CPU oracle on every driver.
//
//   y = f16(((f32(acc) · s_x) · s_ch) + bias)     (left to right in f32, RNE; no add without bias)
//
// Three things a driver may legally do would change the bits, and each is closed here:
// - contract `p · s_ch + bias` into one FMA (naga never marks SPIR-V `NoContraction`; Metal
//   compiles with fast math), or reassociate the two products: each product passes through
//   `bitcast<u32>(·) | fence`, where `fence` is a uniform the host always sets to 0. The compiler
//   cannot know it is 0, so the next operation's operand is an integer result, not a float
//   product: nothing left to fuse or reorder, and the product is rounded to f32 on its own.
// - convert a large |acc| to f32 with its own rounding: `sf_from_i32` converts exactly (RNE).
// - flush subnormal inputs or results to zero: the scales arrive as raw bits (bind their arrays as
//   array<u32>, so that no load or move touches them as floats); with a subnormal input, or any
//   native result in the zero/subnormal range (where a flush would be invisible), the value is
//   recomputed in softfloat.wgsl's integer arithmetic.
// Normal inputs and normal results are exactly rounded by IEEE multiplication and addition, which
// WGSL, Vulkan and Metal all guarantee, so the common path costs two multiplies, an add and a few
// integer tests.
fn epilogue_f16_bits(acc: i32, sx_bits: u32, sch_bits: u32, bias_bits: u32, has_bias: bool, fence: u32) -> u32 {
    let a = sf_from_i32(acc);
    var v = 0u;
    var soft = sf_is_subnormal(sx_bits) || sf_is_subnormal(sch_bits) || (has_bias && sf_is_subnormal(bias_bits));
    if (!soft) {
        let p1 = bitcast<u32>(bitcast<f32>(a) * bitcast<f32>(sx_bits)) | fence;
        let p2 = bitcast<u32>(bitcast<f32>(p1) * bitcast<f32>(sch_bits)) | fence;
        v = p2;
        if (has_bias) { v = bitcast<u32>(bitcast<f32>(p2) + bitcast<f32>(bias_bits)); }
        // Exponent field 0: a zero or a subnormal, possibly a flushed one; redo it exactly.
        soft = sf_exp(p1) == 0u || sf_exp(p2) == 0u || sf_exp(v) == 0u;
    }
    if (soft) {
        v = sf_mul(sf_mul(a, sx_bits), sch_bits);
        if (has_bias) { v = sf_add(v, bias_bits); }
    }
    return f16_bits_from_f32_bits(v);
}
