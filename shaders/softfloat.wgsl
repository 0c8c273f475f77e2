// softfloat.wgsl — IEEE-754 binary32 arithmetic in integer operations, rounded to nearest even,
// subnormals kept.
//
// Why: the oracle's numbers are single f32 operations rounded to nearest even with subnormals, and a
// driver may give less: f32 division is only 2.5 ulp accurate in WGSL, Vulkan and Metal; drivers
// may flush subnormals to zero (WGSL allows it); fast math may contract a·b + c into one FMA.
// The kernels compute with native floats where the result provably cannot differ and fall back to
// these functions where it could, so every driver returns the oracle's bits. Values travel as u32
// bit patterns: a u32 is never flushed, rounded or fused.
//
// Internal form (as in Berkeley SoftFloat's round-and-pack): a value is sign · sig · 2^(e − 157)
// with sig normalized to its leading one at bit 30, so bits 29..7 are the 23 fraction bits and
// bits 6..0 are round bits: bit 6 is the half-ulp bit, and bit 0 is jammed to 1 when anything
// nonzero was shifted out below it (the "sticky" bit).

const SF_SIGN: u32 = 0x80000000u;
const SF_INF: u32 = 0x7f800000u;
const SF_QNAN: u32 = 0x7fc00000u;

// Biased exponent field (0 for zeros and subnormals, 255 for inf and NaN).
fn sf_exp(a: u32) -> u32 {
    return (a >> 23u) & 0xffu;
}

// True for a nonzero subnormal: the values a flushing driver would read as zero.
fn sf_is_subnormal(a: u32) -> bool {
    return sf_exp(a) == 0u && (a & 0x7fffffu) != 0u;
}

// x >> n with every bit shifted out OR-ed into bit 0 (the sticky bit); n may exceed 31.
fn sf_shift_right_jam(x: u32, n: u32) -> u32 {
    if (n == 0u) { return x; }
    if (n >= 31u) { return u32(x != 0u); }
    return (x >> n) | u32((x << (32u - n)) != 0u);
}

// Rounds sign · sig · 2^(e − 157) (sig < 2^31, normalized to bit 30 unless the value is
// subnormal-bound) to nearest even and packs it; e ≤ 0 gives a subnormal or zero, e ≥ 255 infinity.
fn sf_round_pack(sign: u32, e_in: i32, sig_in: u32) -> u32 {
    var e = e_in;
    var sig = sig_in;
    if (e >= 255) { return sign | SF_INF; }   // before packing: a large e would wrap the shift
    if (e <= 0) {
        // Below the normal range: denormalize to the fixed exponent 1 (value sig · 2^(1 − 157)).
        sig = sf_shift_right_jam(sig, u32(1 - e));
        e = 0;
    }
    let round_bits = sig & 0x7fu;
    var r = sig >> 7u;
    // 0x40 is exactly half an ulp: above it round up, at it round to the even neighbour.
    if (round_bits > 0x40u || (round_bits == 0x40u && (r & 1u) == 1u)) { r += 1u; }
    // r holds the hidden bit at bit 23; adding it to the exponent field (e − 1) << 23 packs and also
    // carries a rounding overflow (r = 2^24) or a subnormal that rounded up to 2^23 into the exponent.
    if (e == 0) { return sign | r; }
    let packed = (u32(e - 1) << 23u) + r;
    if (packed >= SF_INF) { return sign | SF_INF; }
    return sign | packed;
}

// Significand (24 bits, hidden one at bit 23) and unbiased-plus-127 exponent of a finite nonzero
// value, subnormals normalized (their exponent goes to 0 or below).
struct SfUnpacked {
    e: i32,
    m: u32,
}

fn sf_unpack_normalized(a: u32) -> SfUnpacked {
    let ef = sf_exp(a);
    let frac = a & 0x7fffffu;
    if (ef != 0u) { return SfUnpacked(i32(ef), frac | 0x800000u); }
    // Subnormal: value frac · 2^−149 = (frac << s) · 2^(1 − s − 150); shift the leading one to bit 23.
    let s = 23u - firstLeadingBit(frac);
    return SfUnpacked(1 - i32(s), frac << s);
}

// f32(v), rounded to nearest even (|v| > 2^24 is inexact); no reliance on the driver's conversion.
fn sf_from_i32(v: i32) -> u32 {
    if (v == 0) { return 0u; }
    let sign = select(0u, SF_SIGN, v < 0);
    let mag = select(u32(v), 0u - u32(v), v < 0);   // wrapping negation: i32::MIN gives 2^31
    let lead = firstLeadingBit(mag);
    // mag = sig · 2^(lead − 30): normalize to bit 30 (jamming the one bit lost when lead = 31).
    var sig: u32;
    if (lead <= 30u) { sig = mag << (30u - lead); } else { sig = sf_shift_right_jam(mag, 1u); }
    return sf_round_pack(sign, 127 + i32(lead), sig);
}

// NaN/infinity results of a · b or a + b; only called when an operand has exponent 255.
fn sf_special_mul(a: u32, b: u32, sign: u32) -> u32 {
    let a_nan = sf_exp(a) == 255u && (a & 0x7fffffu) != 0u;
    let b_nan = sf_exp(b) == 255u && (b & 0x7fffffu) != 0u;
    let zero = (a & 0x7fffffffu) == 0u || (b & 0x7fffffffu) == 0u;
    if (a_nan || b_nan || zero) { return SF_QNAN; }   // NaN in, or ∞ · 0
    return sign | SF_INF;
}

// a · b, rounded to nearest even.
fn sf_mul(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & SF_SIGN;
    if (sf_exp(a) == 255u || sf_exp(b) == 255u) { return sf_special_mul(a, b, sign); }
    if ((a & 0x7fffffffu) == 0u || (b & 0x7fffffffu) == 0u) { return sign; }
    let ua = sf_unpack_normalized(a);
    let ub = sf_unpack_normalized(b);
    // 24 × 24 → 48-bit product from 16-bit halves (WGSL has no 64-bit integers): every partial
    // product fits a u32 (a0·b0 < 2^32, a1·b0 + a0·b1 < 2^25, a1·b1 < 2^16).
    let a0 = ua.m & 0xffffu; let a1 = ua.m >> 16u;
    let b0 = ub.m & 0xffffu; let b1 = ub.m >> 16u;
    let lo = a0 * b0;
    let mid = a1 * b0 + a0 * b1;
    let p_lo = lo + (mid << 16u);
    let p_hi = a1 * b1 + (mid >> 16u) + u32(p_lo < lo);   // carry out of the low word
    // The product of two [2^23, 2^24) significands lies in [2^46, 2^48): move its leading one (bit
    // 47 or 46) to bit 30, jamming the 17 or 16 bits shifted out.
    var s = 16u;
    var e = ua.e + ub.e - 127;
    if (p_hi >= 0x8000u) { s = 17u; e += 1; }
    let sig = (p_hi << (32u - s)) | (p_lo >> s) | u32((p_lo & ((1u << s) - 1u)) != 0u);
    return sf_round_pack(sign, e, sig);
}

// a + b, rounded to nearest even (x + (−x) = +0, −0 + −0 = −0).
fn sf_add(a_in: u32, b_in: u32) -> u32 {
    if (sf_exp(a_in) == 255u || sf_exp(b_in) == 255u) {
        let a_nan = sf_exp(a_in) == 255u && (a_in & 0x7fffffu) != 0u;
        let b_nan = sf_exp(b_in) == 255u && (b_in & 0x7fffffu) != 0u;
        let opposite_infs = sf_exp(a_in) == 255u && sf_exp(b_in) == 255u && a_in != b_in;
        if (a_nan || b_nan || opposite_infs) { return SF_QNAN; }
        return select(b_in, a_in, sf_exp(a_in) == 255u);
    }
    if ((a_in & 0x7fffffffu) == 0u) {
        if ((b_in & 0x7fffffffu) == 0u) { return a_in & b_in; }   // −0 only if both are −0
        return b_in;
    }
    if ((b_in & 0x7fffffffu) == 0u) { return a_in; }
    // Order by magnitude (finite floats order like their bits without the sign).
    var a = a_in;
    var b = b_in;
    if ((b & 0x7fffffffu) > (a & 0x7fffffffu)) { a = b_in; b = a_in; }
    // Subnormals keep exponent 1 without a hidden bit: the same scale as the smallest normals.
    let ea = max(sf_exp(a), 1u);
    let eb = max(sf_exp(b), 1u);
    // Significands at bits 29..6: bit 30 is room for the carry, bits 5..0 guard the shifted operand.
    let sa = ((a & 0x7fffffu) | select(0u, 0x800000u, sf_exp(a) != 0u)) << 6u;
    let sb = sf_shift_right_jam(((b & 0x7fffffu) | select(0u, 0x800000u, sf_exp(b) != 0u)) << 6u, ea - eb);
    var sig: u32;
    if (((a ^ b) & SF_SIGN) == 0u) {
        sig = sa + sb;
    } else {
        // |a| ≥ |b| so no borrow. With a jammed sb the difference stays odd, so it cannot sit on a
        // rounding boundary it does not really reach; equal magnitudes cancel to +0.
        sig = sa - sb;
        if (sig == 0u) { return 0u; }
    }
    // sa = 1.f · 2^29 stands for 1.f · 2^(ea − 127): exponent ea + 1 in the bit-30 form; then move
    // the leading one up to bit 30 (a left shift only: the sum is below 2^31).
    let lz = 30u - firstLeadingBit(sig);
    return sf_round_pack(a & SF_SIGN, i32(ea) + 1 - i32(lz), sig << lz);
}

// a / b for finite a and finite nonzero b, rounded to nearest even (WGSL's `/` is 2.5 ulp).
fn sf_div(a: u32, b: u32) -> u32 {
    let sign = (a ^ b) & SF_SIGN;
    if ((a & 0x7fffffffu) == 0u) { return sign; }
    let ua = sf_unpack_normalized(a);
    let ub = sf_unpack_normalized(b);
    var ma = ua.m;
    var e = ua.e - ub.e + 127;
    // Quotient of significands in [1, 2): double the dividend when it is the smaller.
    if (ma < ub.m) { ma <<= 1u; e -= 1; }
    // Long division, 8 quotient bits per step (r < mb < 2^24, so r << 8 fits a u32): 1 + 8 + 8 + 8
    // + 6 = 31 bits puts the leading one at bit 30; a nonzero remainder is the sticky bit.
    var q = 1u;
    var r = ma - ub.m;
    for (var i = 0u; i < 3u; i++) {
        let t = r << 8u;
        q = (q << 8u) | (t / ub.m);
        r = t % ub.m;
    }
    let t = r << 6u;
    q = (q << 6u) | (t / ub.m);
    r = t % ub.m;
    return sf_round_pack(sign, e, q | u32(r != 0u));
}
