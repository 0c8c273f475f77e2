// quantize_exact.wgsl — the oracle's activation quantization, element by element, exact on every
// driver (functions only; appended to every module, see epilogue_exact.wgsl for the reasoning):
//
//   x' = f32(x) · smooth[k]        s_x = max|x'| / 127        q = clamp(rne(x' / s_x), −127, 127)
//
// Values travel as f32 bits; the row maximum is a u32 max of |x'| bits (non-negative floats order
// like their bits), so no subnormal is ever handled as a float on the way.

// 127.0 as f32 bits: the symmetric int8 range is [−127, 127]; −128 is never produced.
const Q_RANGE_BITS: u32 = 0x42fe0000u;

// x' = x · smooth, rounded once in f32. `x_bits` is an exactly decoded f16 (normal or zero in f32:
// f16 subnormals are f32 normals), so only a subnormal factor or a product in the subnormal range can
// meet a flushing driver, and those are computed in integers. `fence` (a uniform, always 0) keeps a
// fast-math compiler from folding the product into the division that follows.
fn scaled_activation_bits(x_bits: u32, smooth_bits: u32, fence: u32) -> u32 {
    let zero = (x_bits & 0x7fffffffu) == 0u || (smooth_bits & 0x7fffffffu) == 0u;
    if (sf_is_subnormal(smooth_bits)) { return sf_mul(x_bits, smooth_bits); }
    let p = bitcast<u32>(bitcast<f32>(x_bits) * bitcast<f32>(smooth_bits)) | fence;
    if (sf_exp(p) == 0u && !zero) { return sf_mul(x_bits, smooth_bits); }
    return p;
}

// s_x = max|x'| / 127 as bits, exactly rounded (native division may be 2.5 ulp off).
fn activation_scale_bits(row_max_bits: u32) -> u32 {
    return sf_div(row_max_bits, Q_RANGE_BITS);
}

// q = clamp(rne(fl(x' / s_x)), −127, 127) for s_x > 0, with fl the exactly rounded f32 quotient.
fn activation_code(xs_bits: u32, s_bits: u32) -> i32 {
    if ((xs_bits & 0x7fffffffu) == 0u) { return 0; }
    // WGSL bounds the division's error only for divisors in [2^−126, 2^126] (exponent field 1..252).
    if (!sf_is_subnormal(xs_bits) && sf_exp(s_bits) != 0u && sf_exp(s_bits) < 253u) {
        // The native quotient t is within a few ulp of fl(x'/s); since |t| ≤ 127·(1 + 2^−23), an ulp
        // is at most 2^−17, so rne(t) = rne(fl) unless t is within 2^−12 (32 ulp, a wide margin) of
        // some n + 0.5, the only points where rounding to an integer changes. `frac − 0.5` is exact
        // there (Sterbenz), so the test itself does not round.
        let t = bitcast<f32>(xs_bits) / bitcast<f32>(s_bits);
        let at = abs(t);
        if (abs(at - floor(at) - 0.5) > 0.000244140625) {   // 2^−12
            return i32(clamp(round(t), -127.0, 127.0));
        }
    }
    // Near a tie (about 1 value in 2000), or subnormal operands: the exactly rounded quotient. A
    // subnormal quotient rounds to 0 whether or not the driver flushes it.
    return i32(clamp(round(bitcast<f32>(sf_div(xs_bits, s_bits))), -127.0, 127.0));
}
