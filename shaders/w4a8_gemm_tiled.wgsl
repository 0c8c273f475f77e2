// w4a8_gemm_tiled.wgsl — the prefill path (M > 16): the body of the tiled W4A8 GEMM, shared by its
// two sizes. A small head file comes first in the module and sets TG (invocations per tile side)
// and the entry point: w4a8_gemm_tiled_128.wgsl (TG = 16: 128×128 tiles, 256 invocations, 32 KiB
// of workgroup memory) and w4a8_gemm_tiled_64.wgsl (TG = 8: 64×64, 64 invocations, 16 KiB, for
// devices at WebGPU's default limit). The host picks the largest that fits
// `max_compute_workgroup_storage_size` (shaders.rs, `TILED_VARIANTS`).
//
// Tile of one workgroup (TILE = 8·TG; tx = lid % TG, ty = lid / TG):
//
//                       columns tile_n + 2TG·j + 2tx + e   (j = 0..3, e = 0..1)
//                +----------------------------------------------+
//   rows         | invocation (tx, ty): 8 rows × 8 columns,      |   rows strided by TG, columns in
//   tile_m       |   rows ty + TG·i (i = 0..7),                  |   four adjacent pairs strided by
//   + ty + TG·i  |   column pairs (2tx, 2tx+1) + 2TG·j           |   2TG: each pair is one output
//                +----------------------------------------------+   word of two f16
//
// K advances 64 per step (two 32-blocks). Per step both operands are staged in workgroup memory
// as int8 in k-major vec4<u32> tiles, double buffered (step s computes from buffer s % 2 while
// the global loads of step s + 1 are in flight, then stores them into the other buffer), so each
// step ends in exactly one barrier:
//
//   xs[buf][kq][slot]  kq = 0..3 (16 k each), slot = row ^ 2kq           one vec4 = 16 int8 of a row
//   ws[buf][kq][slot]  slot = σ(col) ^ 2kq, σ(2TG·j + 2t + e) = 2TG·j + TG·e + t
//                                                                         one vec4 = 16 int8 of a column
//
// σ puts the eight columns of one invocation at slots 2TG·j + TG·e + tx, so for each (j, e) the TG
// values of tx read TG consecutive slots. The XOR by 2kq (0, 2, 4 or 6: only bits 1..2 of the slot)
// makes the staging stores conflict-free and leaves the reads' slot sets unchanged (below).
//
// Weights are dequantized while staging, once per workgroup: a nibble vec4 (32 k of one column,
// the prepared layout) becomes two vec4 of int8 s_g·q_w, the group scale folded in (exact:
// s_g · q_w ∈ [-128, 112] is an int8, and Σ_k q_x·(s_g·q_w) is the integer the oracle computes).
// A 64-k step spans two blocks, each staged with the s_g of its own group, so g = 32 (a group per
// block) needs nothing special. Per channel s_g = 1.
//
// Per step and invocation (TG = 16):
//   global loads:  2 vec4 of activations + 1 vec4 of weights (+ 1 u32 of group scales per group)
//   shared stores: 2 vec4 (xs) + 2 vec4 (ws)
//   shared loads:  4 kq × (8 ws + 8 xs) = 64 vec4
//   dot4I8Packed:  4 kq × 8 rows × 8 columns × 4 = 1024
//   barriers:      1
// (TG = 8: 4 + 2 vec4 of global loads, 4 + 4 vec4 of shared stores, the same loads and dot4.)
//
// Shared-memory banks (32 banks of 4 bytes; a 32-lane subgroup is 32 consecutive lid; a vec4
// access takes 4 bank-adjacent words, so slot v lies in bank quad v mod 8; 512 bytes of vec4 are
// served 128 bytes a pass, and a pass that meets two distinct addresses in one quad is a
// conflict; equal addresses broadcast):
//   ws load (kq, j, e): slot 2TG·j + TG·e + (tx ^ 2kq). TG = 16: the subgroup holds tx = 0..15
//     twice (ty = 2a, 2a + 1, same address: broadcast); the 16 addresses are the 16 slots of one
//     aligned group of 16 (XOR by < 8 permutes it), 256 bytes, each bank quad met by exactly 2
//     (t and t ^ 8): 2 passes, the minimum for 256 distinct bytes; each 8-lane quarter
//     (t = 0..7 or 8..15) meets the 8 quads once. TG = 8: 8 slots, one per quad, one pass.
//   xs load (kq, i): slot TG·i + (ty ^ 2kq). TG = 16: two values ty = 2a, 2a + 1, each broadcast to
//     16 lanes; XOR by an even number keeps bit 0, so they sit in two different quads: one pass.
//     TG = 8: four values 4a..4a + 3, XOR permutes them within their aligned 4: four quads, one pass.
//   xs store (staging): lane t holds row t / 4, slice kq = t % 4 (a row's 64 bytes contiguous in
//     global memory); 8 consecutive lanes are rows 2a, 2a + 1 × kq 0..3 -> quads (row ^ 2kq) mod 8
//     = the four even, then the four odd residues: 8 distinct quads per 8 lanes, 4 passes for
//     512 bytes.
//   ws store (staging): lane l (of the tile's columns) writes slot l ^ 2kq: 8 consecutive lanes,
//     8 consecutive slots of an aligned 8, permuted: 8 distinct quads. It loads column σ⁻¹(l), so
//     the 32 lanes of a subgroup load 32 adjacent columns, 512 contiguous bytes of the block.
// Before this rewrite (64×64 tiles, ws[(4tx + j)·8 + w] as u32): the 16 tx of a subgroup read 16
// words 32 apart, all in bank (8j + w) mod 32: 16-way conflicts on every weight load.
//
// Tails: rows past m, columns past n_chunk and the second block of a last step past Kp stage as
// zero (they add nothing) and are never stored; an odd last column writes +0.0 in the high half of
// its word.

struct TiledParams {
    m: u32,            // rows in this dispatch (the activation/output bindings start at its row 0)
    n_chunk: u32,      // columns of this weight chunk
    n_offset: u32,     // first column of the chunk in the output (a multiple of 64: even)
    kb_total: u32,     // Kp / 32 blocks
    n_tiles: u32,      // ceil(n_chunk / TILE)
    tiles: u32,        // ceil(m / TILE) · n_tiles
    group_blocks: u32, // g / 32, 0 per channel
    sg_stride: u32,    // words per group row of packed group scales: ceil(n_chunk / 4)
    x_stride: u32,     // vec4 per activation row: Kp / 16
    y_stride: u32,     // u32 words per output row: Np / 2
    has_bias: u32,
    // Always 0, set by the host: an opaque zero so the compiler can neither fuse nor reassociate
    // the epilogue's float operations.
    fence: u32,
}

@group(0) @binding(0) var<uniform> p: TiledParams;
// The chunk's weights, block-major (layout.rs): qweight[kb · n_chunk + c] = 32 int4 of column c,
// k = 32kb .. 32kb + 31; word j holds k 8j .. 8j + 7, nibbles permuted (common.wgsl).
@group(0) @binding(1) var<storage, read> qweight: array<vec4<u32>>;
// Group scales s_g of the chunk, u8 packed four columns per word: byte c % 4 of
// group_scales[grp · sg_stride + c / 4]. A 1-word placeholder per channel.
@group(0) @binding(2) var<storage, read> group_scales: array<u32>;
@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;       // [m][Kp/16] int8×16
@group(0) @binding(4) var<storage, read> x_scales: array<u32>;       // [m] f32 bits
@group(0) @binding(5) var<storage, read> channel_scales: array<u32>; // [N] f32 bits
@group(0) @binding(6) var<storage, read> bias: array<u32>;           // [N] f32 bits, or 1 placeholder
@group(0) @binding(7) var<storage, read_write> y: array<u32>;        // [m][Np/2] f16×2

const TILE: u32 = 8u * TG;          // rows and columns of a workgroup tile
const WG: u32 = TG * TG;            // invocations
const KQ: u32 = 4u;                 // vec4 slices (16 k each) per 64-k step
const BUF: u32 = KQ * TILE;         // vec4 per operand per buffer
const X_LOADS: u32 = KQ * TILE / WG;  // activation vec4 staged per invocation and step (2 or 4)
const W_LOADS: u32 = 2u * TILE / WG;  // (block, column) weight vec4 per invocation and step (1 or 2)

var<workgroup> xs: array<vec4<u32>, 2u * BUF>;   // [buf][kq][row ^ 2kq] int8×16
var<workgroup> ws: array<vec4<u32>, 2u * BUF>;   // [buf][kq][σ(col) ^ 2kq] int8×16

// One step's operands on their way from global memory to the staging buffer.
struct TiledFetch {
    x: array<vec4<u32>, X_LOADS>,
    w: array<vec4<u32>, W_LOADS>,
    s: array<u32, W_LOADS>,      // s_g of each weight vec4 (1 per channel)
}

// The tile column whose weights staging lane l (0 .. TILE-1) loads: σ⁻¹(l).
fn tiled_column_of_lane(l: u32) -> u32 {
    return 2u * TG * (l / (2u * TG)) + 2u * (l % TG) + (l % (2u * TG)) / TG;
}

// Four int4 (nibbles 0..15 in the low half of each byte, two's complement: q = b - 16·(b ≥ 8))
// times s ∈ [1, 16] -> four int8 s·q. Per byte: b·s ≤ 240, and a negative q adds 256 - 16s, so the
// byte is 256 + s·q ∈ [128, 255]; non-negative q gives s·q ≤ 112: every byte stays below 256, no
// carry crosses a byte, and each byte read as int8 is s·q. With s = 1 this is unpack_int4x8_lo/hi.
fn scale_int4x4(b: u32, s: u32) -> u32 {
    return b * s + ((b >> 3u) & 0x01010101u) * (256u - 16u * s);
}

// Global loads of step `step` (k = 64·step ..): zero past m, n_chunk and Kp.
fn tiled_fetch(lid: u32, tile_m: u32, tile_n: u32, step: u32) -> TiledFetch {
    var f: TiledFetch;
    for (var r = 0u; r < X_LOADS; r++) {
        let t = lid + WG * r;
        let row = tile_m + t / KQ;
        let v = KQ * step + t % KQ;           // vec4 index in the row: k = 16v .. 16v + 15
        f.x[r] = vec4<u32>(0u);
        if (row < p.m && v < p.x_stride) { f.x[r] = xq[row * p.x_stride + v]; }
    }
    for (var r = 0u; r < W_LOADS; r++) {
        let u = lid + WG * r;
        let kb = 2u * step + u / TILE;
        let col = tile_n + tiled_column_of_lane(u % TILE);
        f.w[r] = vec4<u32>(0u);
        f.s[r] = 1u;
        if (kb < p.kb_total && col < p.n_chunk) {
            f.w[r] = qweight[kb * p.n_chunk + col];
            if (p.group_blocks > 0u) {
                let word = group_scales[(kb / p.group_blocks) * p.sg_stride + col / 4u];
                f.s[r] = (word >> (8u * (col % 4u))) & 0xffu;
            }
        }
    }
    return f;
}

// Stores a fetched step into staging buffer `buf`, weights dequantized to int8 s_g·q_w.
fn tiled_stage(lid: u32, buf: u32, f: TiledFetch) {
    let base = buf * BUF;
    for (var r = 0u; r < X_LOADS; r++) {
        let t = lid + WG * r;
        let kq = t % KQ;
        xs[base + kq * TILE + ((t / KQ) ^ (2u * kq))] = f.x[r];
    }
    for (var r = 0u; r < W_LOADS; r++) {
        let u = lid + WG * r;
        let l = u % TILE;
        let kq = 2u * (u / TILE);             // the block's first 16 k; kq + 1 the next 16
        let w = f.w[r];
        let s = f.s[r];
        // Word j of the block: lo nibbles k 8j .. 8j+3, hi nibbles k 8j+4 .. 8j+7.
        ws[base + kq * TILE + (l ^ (2u * kq))] = vec4<u32>(
            scale_int4x4(w.x & 0x0f0f0f0fu, s), scale_int4x4((w.x >> 4u) & 0x0f0f0f0fu, s),
            scale_int4x4(w.y & 0x0f0f0f0fu, s), scale_int4x4((w.y >> 4u) & 0x0f0f0f0fu, s));
        ws[base + (kq + 1u) * TILE + (l ^ (2u * kq + 2u))] = vec4<u32>(
            scale_int4x4(w.z & 0x0f0f0f0fu, s), scale_int4x4((w.z >> 4u) & 0x0f0f0f0fu, s),
            scale_int4x4(w.w & 0x0f0f0f0fu, s), scale_int4x4((w.w >> 4u) & 0x0f0f0f0fu, s));
    }
}

fn w4a8_gemm_tiled(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= p.tiles) { return; }   // uniform per workgroup
    // Column tiles vary fastest: neighbouring workgroups share the same activation rows.
    let tile_m = (lin / p.n_tiles) * TILE;
    let tile_n = (lin % p.n_tiles) * TILE;
    let tx = lid % TG;
    let ty = lid / TG;
    let steps = (p.kb_total + 1u) / 2u;

    var acc: array<array<i32, 8>, 8>;   // [i][2j + e]: row ty + TG·i, column 2TG·j + 2tx + e

    tiled_stage(lid, 0u, tiled_fetch(lid, tile_m, tile_n, 0u));
    workgroupBarrier();
    for (var s = 0u; s < steps; s++) {
        let more = s + 1u < steps;            // uniform
        var next: TiledFetch;
        if (more) { next = tiled_fetch(lid, tile_m, tile_n, s + 1u); }
        let base = (s % 2u) * BUF;
        for (var kq = 0u; kq < KQ; kq++) {
            let sw = 2u * kq;
            let slice = base + kq * TILE;
            var wv: array<vec4<u32>, 8>;
            for (var j = 0u; j < 4u; j++) {
                wv[2u * j] = ws[slice + 2u * TG * j + (tx ^ sw)];
                wv[2u * j + 1u] = ws[slice + 2u * TG * j + TG + (tx ^ sw)];
            }
            for (var i = 0u; i < 8u; i++) {
                let xv = xs[slice + TG * i + (ty ^ sw)];
                for (var c = 0u; c < 8u; c++) {
                    acc[i][c] += dot4I8Packed(xv.x, wv[c].x) + dot4I8Packed(xv.y, wv[c].y)
                        + dot4I8Packed(xv.z, wv[c].z) + dot4I8Packed(xv.w, wv[c].w);
                }
            }
        }
        if (more) {
            // The other buffer was last read in step s - 1, before the barrier that ended it.
            tiled_stage(lid, 1u - s % 2u, next);
            workgroupBarrier();
        }
    }

    // Fused epilogue, two columns per output word; scales and bias per column loaded once.
    var sch: array<u32, 8>;
    var bia: array<u32, 8>;
    for (var c = 0u; c < 8u; c++) {
        let col = tile_n + 2u * TG * (c / 2u) + 2u * tx + c % 2u;
        sch[c] = 0u;
        bia[c] = 0u;
        if (col < p.n_chunk) {
            sch[c] = channel_scales[p.n_offset + col];
            if (p.has_bias == 1u) { bia[c] = bias[p.n_offset + col]; }
        }
    }
    for (var i = 0u; i < 8u; i++) {
        let row = tile_m + ty + TG * i;
        if (row >= p.m) { continue; }
        let sx = x_scales[row];
        let hb = p.has_bias == 1u;
        for (var j = 0u; j < 4u; j++) {
            let col = tile_n + 2u * TG * j + 2u * tx;   // even
            if (col >= p.n_chunk) { continue; }
            let c = 2u * j;
            let lo = epilogue_f16_bits(acc[i][c], sx, sch[c], bia[c], hb, p.fence);
            var hi = 0u;                                // +0.0 in the padding column of odd N
            if (col + 1u < p.n_chunk) {
                hi = epilogue_f16_bits(acc[i][c + 1u], sx, sch[c + 1u], bia[c + 1u], hb, p.fence);
            }
            y[row * p.y_stride + (p.n_offset + col) / 2u] = lo | (hi << 16u);
        }
    }
}
