// f16_gemm.wgsl — the body of our f16 GEMM baseline: y = f16(x · wᵀ), f16 operands, f32
// accumulation. It is what the W4A8 kernels are compared against on the same wgpu device
// (benches), not a path of the W4A8 format, so it is built like the W4A8 tiled GEMM to keep the
// comparison honest. A head file sets TG and the entry point: f16_gemm_128.wgsl (TG = 16, 128×128
// tiles, 256 invocations, 32 KiB of workgroup memory) or f16_gemm_64.wgsl (TG = 8, 64×64, 16 KiB).
// It needs no SHADER_F16: operands are decoded from packed words in integer operations.
//
// Same tile as w4a8_gemm_tiled.wgsl: invocation (tx, ty) owns rows ty + TG·i (i = 0..7) and the
// column pairs 2TG·j + 2tx + (0, 1) (j = 0..3), 8 × 8 f32 accumulators. K advances 16 per step,
// staged as f32 in k-major vec4 tiles, double buffered, one barrier per step:
//
//   fxs[buf][kq][row ^ 2kq]     kq = 0..3, one vec4<f32> = 4 k of a row
//   fws[buf][kq][σ(col) ^ 2kq]  σ(2TG·j + 2t + e) = 2TG·j + TG·e + t, one vec4<f32> = 4 k of a column
//
// Why 16 k per barrier and not W4A8's 64: a k of f32 staging is 4 bytes per element against
// W4A8's 1, so 16 k fill the same 32 KiB; per barrier each invocation then does 8·8·16 = 1024
// FMAs, the same instruction count as W4A8's 1024 dot4I8Packed per 64 k. Staging f32 (converted
// once per workgroup, 16 f16 per invocation and step) rather than f16 keeps conversions out of the
// inner loop.
//
// Per step and invocation (TG = 16):
//   global loads:  1 vec4 of x + 1 vec4 of w (8 f16 each)
//   shared stores: 2 vec4<f32> (fxs) + 2 vec4<f32> (fws)
//   shared loads:  4 kq × (8 fws + 8 fxs) = 64 vec4
//   FMAs:          4 kq × 8 rows × 8 columns × 4 k = 1024, each output's k in order
//   barriers:      1
// (TG = 8: 2 + 2 vec4 of global loads and 4 + 4 of shared stores, the same loads and FMAs.)
//
// Shared-memory banks: the slots and the lane-to-slot maps are those of w4a8_gemm_tiled.wgsl
// (reads: TG consecutive fws slots per (kq, j, e), 2 (TG = 16) or 4 (TG = 8) broadcast fxs slots in
// distinct bank quads). Staging differs: lane t holds row (fxs) or staging lane (fws) t / 2 and
// 8 k (half h = t % 2 of the step, kq = 2h and 2h + 1), so 16 lanes read 32 contiguous bytes each
// from global memory; 8 consecutive lanes store 4 rows × h = 0, 1 to slots row ^ 2kq: for the
// first store kq = 0 / 2 (XOR 0 / 4), for the second kq = 1 / 3 (XOR 2 / 6), each 8 distinct quads.
// Before this rewrite (64×64 tiles, fws[(4tx + j)·16 + kk] as f32): 16 tx 64 words apart, one bank:
// 16-way conflicts.
//
// Operands: M × Ks and N × Ks f16, Ks = K rounded up to a multiple of 8 (zero padding, so a row is
// whole vec4s); output in the W4A8 output layout (M × Np f16, Np = N rounded up to even, the
// padding column +0.0).

struct F16Params {
    m: u32,
    n: u32,
    steps: u32,      // ceil(Ks / 16)
    x_stride: u32,   // vec4 per operand row: Ks / 8
    n_tiles: u32,    // ceil(n / TILE)
    tiles: u32,      // ceil(m / TILE) · n_tiles
    y_stride: u32,   // Np / 2
    _pad: u32,
}

@group(0) @binding(0) var<uniform> fp: F16Params;
@group(0) @binding(1) var<storage, read> xh: array<vec4<u32>>;   // [m][Ks/8] f16×8
@group(0) @binding(2) var<storage, read> wh: array<vec4<u32>>;   // [n][Ks/8] f16×8
@group(0) @binding(3) var<storage, read_write> yh: array<u32>;   // [m][Np/2] f16×2

const TILE: u32 = 8u * TG;            // rows and columns of a workgroup tile
const WG: u32 = TG * TG;              // invocations
const KQ: u32 = 4u;                   // vec4 slices (4 k each) per 16-k step
const BUF: u32 = KQ * TILE;           // vec4 per operand per buffer
const LOADS: u32 = 2u * TILE / WG;    // global vec4 per operand, invocation and step (1 or 2)

var<workgroup> fxs: array<vec4<f32>, 2u * BUF>;   // [buf][kq][row ^ 2kq]
var<workgroup> fws: array<vec4<f32>, 2u * BUF>;   // [buf][kq][σ(col) ^ 2kq]

// One step's operands on their way from global memory to the staging buffer.
struct F16Fetch {
    x: array<vec4<u32>, LOADS>,
    w: array<vec4<u32>, LOADS>,
}

// The tile column whose weights staging lane l (0 .. TILE-1) loads: σ⁻¹(l).
fn f16_column_of_lane(l: u32) -> u32 {
    return 2u * TG * (l / (2u * TG)) + 2u * (l % TG) + (l % (2u * TG)) / TG;
}

// Two f16 (low half first) -> two f32, exactly. unpack2x16float would need f16-in-f32 support,
// which wgpu grants lavapipe only with SHADER_F16, and the shift-and-multiply trick goes through
// f32 subnormals, which drivers may flush; this uses integer operations and one int -> float
// conversion of a value below 1024.
fn f16x2_to_f32x2(w: u32) -> vec2<f32> {
    let h = vec2<u32>(w & 0xffffu, w >> 16u);
    let mag = h & vec2<u32>(0x7fffu);
    let sign = (h >> vec2<u32>(15u)) << vec2<u32>(31u);
    // Normal: exponent rebias 15 -> 127, + 112 << 23 = 0x38000000, mantissa 10 -> 23 bits; inf and
    // NaN (exponent 31) must land on 255: + 224 << 23 = 0x70000000.
    let rebias = select(vec2<u32>(0x38000000u), vec2<u32>(0x70000000u), mag >= vec2<u32>(0x7c00u));
    let normal = (mag << vec2<u32>(13u)) + rebias;
    // Zero or subnormal (mag < 0x400): mag · 2^-24 (0x33800000), exact and normal in f32.
    let small = bitcast<vec2<u32>>(vec2<f32>(mag) * bitcast<f32>(0x33800000u));
    return bitcast<vec2<f32>>(sign | select(normal, small, mag < vec2<u32>(0x400u)));
}

// Global loads of step `step` (k = 16·step ..): zero past m, n and Ks.
fn f16_fetch(lid: u32, tile_m: u32, tile_n: u32, step: u32) -> F16Fetch {
    var f: F16Fetch;
    for (var r = 0u; r < LOADS; r++) {
        let t = lid + WG * r;
        let v = 2u * step + t % 2u;          // vec4 index in the row: k = 8v .. 8v + 7
        let row = tile_m + t / 2u;
        let col = tile_n + f16_column_of_lane(t / 2u);
        f.x[r] = vec4<u32>(0u);
        f.w[r] = vec4<u32>(0u);
        if (v < fp.x_stride) {
            if (row < fp.m) { f.x[r] = xh[row * fp.x_stride + v]; }
            if (col < fp.n) { f.w[r] = wh[col * fp.x_stride + v]; }
        }
    }
    return f;
}

// Stores a fetched step into staging buffer `buf` as f32.
fn f16_stage(lid: u32, buf: u32, f: F16Fetch) {
    let base = buf * BUF;
    for (var r = 0u; r < LOADS; r++) {
        let t = lid + WG * r;
        let idx = t / 2u;                     // row of fxs, staging lane of fws
        let kq = 2u * (t % 2u);               // 8 k: slices kq and kq + 1
        let x = f.x[r];
        let w = f.w[r];
        fxs[base + kq * TILE + (idx ^ (2u * kq))] = vec4<f32>(f16x2_to_f32x2(x.x), f16x2_to_f32x2(x.y));
        fxs[base + (kq + 1u) * TILE + (idx ^ (2u * kq + 2u))] =
            vec4<f32>(f16x2_to_f32x2(x.z), f16x2_to_f32x2(x.w));
        fws[base + kq * TILE + (idx ^ (2u * kq))] = vec4<f32>(f16x2_to_f32x2(w.x), f16x2_to_f32x2(w.y));
        fws[base + (kq + 1u) * TILE + (idx ^ (2u * kq + 2u))] =
            vec4<f32>(f16x2_to_f32x2(w.z), f16x2_to_f32x2(w.w));
    }
}

fn f16_gemm_tiled(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= fp.tiles) { return; }   // uniform per workgroup
    let tile_m = (lin / fp.n_tiles) * TILE;
    let tile_n = (lin % fp.n_tiles) * TILE;
    let tx = lid % TG;
    let ty = lid / TG;

    var acc: array<array<f32, 8>, 8>;   // [i][2j + e]: row ty + TG·i, column 2TG·j + 2tx + e

    f16_stage(lid, 0u, f16_fetch(lid, tile_m, tile_n, 0u));
    workgroupBarrier();
    for (var s = 0u; s < fp.steps; s++) {
        let more = s + 1u < fp.steps;         // uniform
        var next: F16Fetch;
        if (more) { next = f16_fetch(lid, tile_m, tile_n, s + 1u); }
        let base = (s % 2u) * BUF;
        for (var kq = 0u; kq < KQ; kq++) {
            let sw = 2u * kq;
            let slice = base + kq * TILE;
            var wv: array<vec4<f32>, 8>;
            for (var j = 0u; j < 4u; j++) {
                wv[2u * j] = fws[slice + 2u * TG * j + (tx ^ sw)];
                wv[2u * j + 1u] = fws[slice + 2u * TG * j + TG + (tx ^ sw)];
            }
            for (var i = 0u; i < 8u; i++) {
                let xv = fxs[slice + TG * i + (ty ^ sw)];
                for (var c = 0u; c < 8u; c++) {
                    var a = acc[i][c];
                    a = fma(xv.x, wv[c].x, a);
                    a = fma(xv.y, wv[c].y, a);
                    a = fma(xv.z, wv[c].z, a);
                    a = fma(xv.w, wv[c].w, a);
                    acc[i][c] = a;
                }
            }
        }
        if (more) {
            // The other buffer was last read in step s - 1, before the barrier that ended it.
            f16_stage(lid, 1u - s % 2u, next);
            workgroupBarrier();
        }
    }

    for (var i = 0u; i < 8u; i++) {
        let row = tile_m + ty + TG * i;
        if (row >= fp.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let col = tile_n + 2u * TG * j + 2u * tx;   // even
            if (col >= fp.n) { continue; }
            let lo = f32_to_f16_bits(acc[i][2u * j]);
            var hi = 0u;                                // +0.0 in the padding column of odd N
            if (col + 1u < fp.n) { hi = f32_to_f16_bits(acc[i][2u * j + 1u]); }
            yh[row * fp.y_stride + col / 2u] = lo | (hi << 16u);
        }
    }
}
