// quantize_hadamard.wgsl — per-token int8 quantization with the online Walsh–Hadamard rotation fused
// in (QuaRot-style; the weights hold H_b / b, see core/src/transform.rs):
//
//   x'[k]  = f32(x[m,k]) · smooth[k]              (load_scaled, quantize_activations.wgsl)
//   y      = x' · H_b on each block of b = qp.block channels, H_b the ±1 Sylvester matrix
//   s_x[m] = max_k |y[k]| / 127,  q[m,k] = clamp(rne(y[k] / s_x), −127, 127)   (quantize_exact.wgsl)
//
// The rotation is the oracle's fixed butterfly order: stages h = 1, 2, 4, …, b/2; at each stage
// every pair (i, i + h) of a block, i with bit h clear, becomes (u + v, u − v). Each value is one
// correctly rounded f32 addition or subtraction of two values of the previous stage, and the
// stages are separated by barriers in workgroup memory (bits in a u32 array), so no compiler can
// reassociate or fuse across them: the bits equal the oracle's on any driver (`butterfly_sum`
// says how subnormals are kept).
//
// One workgroup (256 invocations) per row m. The row is rotated a chunk of HCHUNK channels at a time
// (an override: the host builds one pipeline per size in shaders::HADAMARD_CHUNKS and takes the
// largest the device's workgroup memory holds); a chunk starts at a multiple of HCHUNK and so of b
// (both powers of two, b ≤ HCHUNK, checked by the host), so it holds whole blocks:
//
//   hb:      [ block 0 | block 1 | … | block HCHUNK/b − 1 ]     f32 bits, chunk c·HCHUNK .. + len
//   load:    hb[i] = x'[c·HCHUNK + i]                            invocation lid: i ≡ lid (mod 256)
//   stage h: pair p < len/2 → i = (p >> log2 h) << (log2 h + 1) | (p & (h − 1)),  j = i + h
//            (i has bit h clear; j shares i's bits above h, hence i's block, since h < b)
//
// Pass 1 rotates every chunk and keeps each invocation's max |y| bits; the 256 maxima are then
// reduced in hb itself, so the kernel needs HCHUNK · 4 bytes of workgroup memory and nothing more
// (16 KiB at HCHUNK = 4096: WebGPU's default limit). Pass 2 rotates each chunk again — the same
// operations on the same inputs, so the same bits — and writes the codes. Re-reading x costs what
// the unrotated quantizer already pays (it reads the row once per pass too).
//
// The host has checked that no x' and no y is infinite (`first_transform_error` in w4a8-core, on
// the same f32 values), so every value here is finite.

// Channels rotated at a time; a power of two ≥ 256 (the max tree below reuses hb[0..256)).
override HCHUNK: u32 = 4096u;
var<workgroup> hb: array<u32, HCHUNK>;

const HB_WG: u32 = 256u;   // invocations per workgroup; the max tree below assumes it

// u + v as f32 bits, correctly rounded to nearest even with subnormals kept. WGSL rounds f32 `+`
// correctly but lets a driver flush subnormal operands and results: with both operands and the
// native result normal nothing was flushed, so the native bits are exact; otherwise (a zero or
// subnormal anywhere, about never on real activations) the integer sf_add decides.
fn butterfly_sum(u: u32, v: u32) -> u32 {
    let r = bitcast<u32>(bitcast<f32>(u) + bitcast<f32>(v));
    if (sf_exp(u) == 0u || sf_exp(v) == 0u || sf_exp(r) == 0u) { return sf_add(u, v); }
    return r;
}

// u − v = u + (−v): flipping the sign bit (bit 31) negates exactly, so the difference rounds as one.
fn butterfly_difference(u: u32, v: u32) -> u32 {
    return butterfly_sum(u, v ^ 0x80000000u);
}

// hb[0 .. len) ← x' of the row's channels c0 .. c0 + len, then every butterfly stage of every
// block. Ends on a barrier: hb holds y for the chunk, visible to every invocation.
fn rotate_chunk(m: u32, c0: u32, len: u32, lid: u32) {
    for (var i = lid; i < len; i += HB_WG) {
        hb[i] = load_scaled(m, c0 + i);
    }
    workgroupBarrier();
    var h = 1u;
    var log_h = 0u;
    loop {
        if (h >= qp.block) { break; }
        for (var p = lid; p < len / 2u; p += HB_WG) {
            // Insert a zero at bit log_h of p: the pair's first element, bit h clear.
            let i = ((p >> log_h) << (log_h + 1u)) | (p & (h - 1u));
            let u = hb[i];
            let v = hb[i + h];
            hb[i] = butterfly_sum(u, v);
            hb[i + h] = butterfly_difference(u, v);
        }
        workgroupBarrier();   // stage h complete before stage 2h reads it
        h <<= 1u;
        log_h += 1u;
    }
}

@compute @workgroup_size(256)
fn quantize_activations_hadamard(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = linear_workgroup(wid, nwg);
    if (m >= qp.m) { return; }            // uniform per workgroup: padding of a 2-D dispatch

    // Pass 1: max |y| bits (non-negative floats order like their bits; exact in any order).
    var mx = 0u;
    for (var c0 = 0u; c0 < qp.k; c0 += HCHUNK) {
        let len = min(HCHUNK, qp.k - c0);
        rotate_chunk(m, c0, len, lid);
        for (var i = lid; i < len; i += HB_WG) {
            mx = max(mx, hb[i] & 0x7fffffffu);
        }
        workgroupBarrier();   // every max read before the next chunk overwrites hb
    }
    hb[lid] = mx;
    workgroupBarrier();
    // Halving tree over the 256 partial maxima: 128, 64, …, 1 active slots.
    for (var step = 128u; step > 0u; step >>= 1u) {
        if (lid < step) {
            hb[lid] = max(hb[lid], hb[lid + step]);
        }
        workgroupBarrier();
    }
    let row_max = hb[0];
    workgroupBarrier();   // everyone has read hb[0] before pass 2 overwrites it
    let s = activation_scale_bits(row_max);
    if (lid == 0u) {
        x_scales[m] = s;
    }

    // Pass 2: rotate again and write the codes, one packed word (4 channels) per step. A chunk
    // starts at a multiple of 4; only the row's last word can reach past K, and its tail is 0.
    for (var c0 = 0u; c0 < qp.k; c0 += HCHUNK) {
        let len = min(HCHUNK, qp.k - c0);
        rotate_chunk(m, c0, len, lid);
        let w0 = c0 / 4u;
        for (var w = lid; w < (len + 3u) / 4u; w += HB_WG) {
            var q = vec4<i32>(0);
            if (s != 0u) {   // an all-zero row: s_x = 0 and q = 0
                for (var j = 0u; j < 4u; j++) {
                    let i = w * 4u + j;
                    if (i < len) {
                        q[j] = activation_code(hb[i], s);
                    }
                }
            }
            // pack4xI8: component j -> byte j (bits 8j..8j+7), i.e. lowest byte = lowest k.
            xq[m * qp.x_stride + w0 + w] = pack4xI8(q);
        }
        workgroupBarrier();   // every code read before the next chunk overwrites hb
    }
    // The padding words of the row (K rounded up to 32 channels): zeros.
    for (var w = (qp.k + 3u) / 4u + lid; w < qp.x_stride; w += HB_WG) {
        xq[m * qp.x_stride + w] = 0u;
    }
}
