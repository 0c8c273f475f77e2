// common.wgsl — helpers shared by every w4a8 shader module.
//
// The host appends this file to each kernel source (see `backend-wgpu/src/shaders.rs`), so it
// holds functions only: no directives, no bindings. Everything here is exact integer arithmetic on
// purpose: the conversions between f16 and f32 must be bit-identical to `half::f16` on the CPU
// oracle, and WGSL leaves the rounding of `pack2x16float` and the handling of f16 subnormals by
// `unpack2x16float` to the implementation.

// Decodes the f16 whose bits are the low 16 bits of `h` into the f32 of the same value (exact:
// every f16, subnormals included, is representable in f32).
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;      // f16 sign bit 15 -> f32 sign bit 31
    let exp = (h >> 10u) & 0x1fu;         // 5-bit biased exponent (bias 15)
    let man = h & 0x3ffu;                 // 10-bit mantissa
    if (exp == 0x1fu) {
        // Inf (man = 0) or NaN: all-ones f32 exponent 0x7f800000, mantissa moved to the top bits.
        return bitcast<f32>(sign | 0x7f800000u | (man << 13u));
    }
    if (exp == 0u) {
        // Zero or subnormal: value = man * 2^-24; the product is exact in f32.
        // 5.9604645e-8 = 2^-24, the f16 subnormal step.
        let v = f32(man) * 5.9604645e-8;
        return bitcast<f32>(sign | bitcast<u32>(v));
    }
    // Normal: rebias 15 -> 127 (add 112) and widen the mantissa 10 -> 23 bits.
    return bitcast<f32>(sign | ((exp + 112u) << 23u) | (man << 13u));
}

// Rounds an f32 to the nearest f16 (ties to even) and returns its 16 bits in the low half.
fn f32_to_f16_bits(f: f32) -> u32 {
    return f16_bits_from_f32_bits(bitcast<u32>(f));
}

// The same from the f32's bits (so a subnormal never passes through a float register).
// Matches `half::f16::from_f32` bit for bit: overflow (anything that rounds to >= 65520) gives
// +-inf, NaN stays a quiet NaN with the top mantissa bits kept, tiny values round to (signed) zero.
fn f16_bits_from_f32_bits(x: u32) -> u32 {
    let sign = (x >> 16u) & 0x8000u;      // f32 sign bit 31 -> f16 sign bit 15
    let exp = (x >> 23u) & 0xffu;         // 8-bit biased exponent (bias 127)
    let man = x & 0x7fffffu;              // 23-bit mantissa
    if (exp == 0xffu) {
        // Inf keeps mantissa 0; NaN gets the quiet bit 0x200 plus its top 10 mantissa bits.
        var nan_bit = 0u;
        if (man != 0u) { nan_bit = 0x200u; }
        return sign | 0x7c00u | nan_bit | (man >> 13u);
    }
    if (exp >= 143u) {
        // Unbiased exponent >= 16: |f| >= 65536, beyond the largest finite f16 (65504): inf.
        return sign | 0x7c00u;
    }
    if (exp >= 113u) {
        // Unbiased exponent in [-14, 15]: an f16 normal. Rebias 127 -> 15 (subtract 112), keep the
        // top 10 mantissa bits, round on the 13 dropped bits (0x1000 = exactly half an f16 ulp).
        // A carry out of the mantissa bumps the exponent, and out of exponent 30 it lands on
        // 0x7c00 = inf, which is what RNE overflow must give.
        let h = ((exp - 112u) << 10u) | (man >> 13u);
        let rest = man & 0x1fffu;
        var up = 0u;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u)) { up = 1u; }
        return sign | (h + up);
    }
    if (exp < 102u) {
        // |f| < 2^-25 (half the smallest f16 subnormal 2^-24): rounds to zero (2^-25 itself is a
        // tie with even zero, and exp 101 values are below it).
        return sign;
    }
    // f16 subnormal range: value = sig * 2^(exp-150) with the 24-bit significand sig; in units of
    // 2^-24 that is sig >> (126 - exp), shift in [14, 24]. Round to nearest even on the dropped bits;
    // a carry into bit 10 produces the smallest normal 0x0400, which is correct.
    let sig = man | 0x800000u;
    let shift = 126u - exp;
    let h = sig >> shift;
    let rest = sig & ((1u << shift) - 1u);
    let halfway = 1u << (shift - 1u);
    var up = 0u;
    if (rest > halfway || (rest == halfway && (h & 1u) == 1u)) { up = 1u; }
    return sign | (h + up);
}

// Eight int4 weights -> two words of four int8 each, ready for dot4I8Packed.
//
// The host stores nibbles permuted within each word so that one mask yields k-order bytes
// (see `layout.rs`, `permute_nibbles`):
//
//   nibble position: 7   6   5   4   3   2   1   0
//   holds k offset:  7   3   6   2   5   1   4   0
//
// so `w & 0x0F0F0F0F` has bytes (k0, k1, k2, k3) and `(w >> 4) & 0x0F0F0F0F` has (k4 .. k7), each
// byte a two's-complement nibble 0..15. Sign extension per byte: a byte whose bit 3 is set (value
// -8..-1) needs its top four bits set; `(b & 0x08080808) * 0x1E` turns each 0x08 into 0xF0
// (8 * 30 = 240) with no carry between bytes, and OR-ing that in gives the signed int8 bytes.
fn unpack_int4x8_lo(w: u32) -> u32 {
    let b = w & 0x0f0f0f0fu;
    return b | ((b & 0x08080808u) * 0x1eu);
}

fn unpack_int4x8_hi(w: u32) -> u32 {
    let b = (w >> 4u) & 0x0f0f0f0fu;
    return b | ((b & 0x08080808u) * 0x1eu);
}

// The workgroup's index in a dispatch that the host may have folded into 2-D to stay under
// max_compute_workgroups_per_dimension: the host launches (min(total, limit), ceil(total/limit), 1)
// and each kernel returns early when this index is past the real count.
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
