requires packed_4x8_integer_dot_product;

// w4a8_gemm_decode.wgsl — the decode GEMM (M ≤ 16) in one dispatch: memory bound, every weight
// byte read once, all of K reduced inside one workgroup, epilogue fused. No accumulator buffer, no
// atomics, no split-K across workgroups: the same bits on every run.
//
// Weights (prepared layout, one N-chunk, see `layout.rs`; shared with the tiled kernel):
//
//   qweight[kb · n_chunk + n] = 32 int4 of column n, k = 32·kb .. 32·kb+31, one vec4<u32>
//                               (word j: k = 32·kb + 8j .. +7, nibbles permuted, see common.wgsl)
//
// One workgroup = COLS = 16 adjacent columns × all of K; its 256 invocations are
// c = lid % 16 (column) × s = lid / 16 (K slice). Slice s takes the blocks kb ≡ s (mod 16), four
// per round, all four loads issued before the first is used:
//
//                      columns of the tile → c = 0 .. 15 (16 vec4 = 256 contiguous bytes per kb)
//   round 0   kb = s        slice 0: kb 0 | slice 1: kb 1 | ... | slice 15: kb 15
//             kb = s + 16   slice 0: kb 16 | ...
//             kb = s + 32
//             kb = s + 48
//   round 1   kb = s + 64 ... (a workgroup round covers 64 blocks = 2048 k)
//   tail      kb_total % 64 blocks left: the same four loads, each guarded
//
// Who reads what:
//   qweight        each (block, column) vec4 by exactly one invocation; a 32-wide subgroup reads two
//                  runs of 256 contiguous bytes (two slices) per load instruction, a 64-wide one four
//   group_scales   one u32 per (block, 4 columns): L1
//   xq             the 2 vec4 of block kb of every row, by the 16 columns of slice s (one address
//                  per slice: an L1 broadcast), and by every workgroup (L2). Rejected: staging x in
//                  workgroup memory, which needs a barrier per round and so drains the loads in flight
//   red            (workgroup) the partial sums of the slices, reduced as a tree:
//
//     h = 8: slices 8..15 write, 0..7 add (s += s + 8)     h = 4: 4..7 write, 0..3 add
//     h = 2: 2, 3 write, 0, 1 add                          then 0 and 1 write, and the owner of
//     output word (row r, columns 2j, 2j+1) adds slice 0 + slice 1 and runs the epilogue on both
//
//   x_scales, channel_scales, bias, y: by the owner of each output word
//
// Per group (g = 32 · 2^group_shift), w8 = s_g · q_w, and a 32-block never straddles a group:
//   Σ_k q_x · (s_g · q_w) = s_g · Σ_{k in block} q_x · q_w   (exact in int32)
// so each block is reduced with the raw int4 values and scaled once by its s_g.

struct DecodeParams {
    m: u32,            // rows of the GEMM (activations, scales and output bound whole)
    n_chunk: u32,      // columns in this weight chunk
    n_offset: u32,     // first column of the chunk in the output (a multiple of 64: even)
    kb_total: u32,     // Kp / 32 blocks
    n_tiles: u32,      // ceil(n_chunk / COLS)
    row_blocks: u32,   // ceil(m / TM): the grid is n_tiles × row_blocks workgroups
    per_group: u32,    // 1: per-group scales, 0: per channel
    group_shift: u32,  // log2(g / 32): block kb is in group kb >> group_shift
    sg_stride: u32,    // words per row of packed group scales: ceil(n_chunk / 4)
    x_stride: u32,     // vec4 per activation row: Kp / 16
    y_stride: u32,     // words per output row: Np / 2
    has_bias: u32,     // 1: add bias[n]
    fence: u32,        // always 0: an opaque zero so the compiler cannot fuse/reassociate the epilogue's float ops
    _pad0: u32,        // to 64 bytes, a whole number of 16-byte uniform rows
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: DecodeParams;
@group(0) @binding(1) var<storage, read> qweight: array<vec4<u32>>;   // [kb][n_chunk]
// Group scales s_g of the chunk, u8 packed four columns per word: byte (n % 4) of
// group_scales[grp * sg_stride + n / 4]. A 1-word placeholder per channel (never read).
@group(0) @binding(2) var<storage, read> group_scales: array<u32>;
@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;        // [m][Kp/16] int8×16
@group(0) @binding(4) var<storage, read> x_scales: array<u32>;        // [m] f32 bits
@group(0) @binding(5) var<storage, read> channel_scales: array<u32>;  // [N] f32 bits
@group(0) @binding(6) var<storage, read> bias: array<u32>;            // [N] f32 bits, or 1 placeholder
@group(0) @binding(7) var<storage, read_write> y: array<u32>;         // [m][Np/2] f16×2

// Rows per workgroup: the host compiles TM ∈ {1, 2, 4, 8, 16} and picks the smallest ≥ M, so the
// row loops have a constant trip count, the totals stay in registers and `red` is sized by TM.
override TM: u32 = 16u;
const MAX_TM: u32 = 16u;
const COLS: u32 = 16u;        // columns per workgroup (shaders::DECODE_COLS)
const SLICES: u32 = 16u;      // K slices per workgroup (shaders::DECODE_SLICES); COLS · SLICES = 256
const UNROLL: u32 = 4u;       // blocks per slice per round: the four loads written out below
const HALF: u32 = SLICES / 2u;
// Partial sums of the tree, [row][slice < HALF][column]: 8 · 16 · TM words = 512 · TM bytes
// (8 KiB at TM = 16). Slices of one row are adjacent so that a subgroup stores 32 consecutive words.
override RED_WORDS: u32 = TM * HALF * COLS;
var<workgroup> red: array<i32, RED_WORDS>;

// s_g of block kb, column col (1 per channel: a uniform branch).
fn group_scale(kb: u32, col: u32) -> i32 {
    if (p.per_group == 0u) { return 1; }
    let word = group_scales[(kb >> p.group_shift) * p.sg_stride + col / 4u];
    return i32((word >> ((col % 4u) * 8u)) & 0xffu);   // byte col % 4, u8 s_g ∈ [1, 16]
}

// Adds block kb of one column (wq, scale sg) to the TM row totals: 32 int4 → 8 words of int8×4 in
// k order, dotted with the 8 activation words of each row.
fn add_block(total: ptr<function, array<i32, MAX_TM>>, wq: vec4<u32>, sg: i32, kb: u32, row0: u32, rows: u32) {
    let w0 = unpack_int4x8_lo(wq.x); let w1 = unpack_int4x8_hi(wq.x);
    let w2 = unpack_int4x8_lo(wq.y); let w3 = unpack_int4x8_hi(wq.y);
    let w4 = unpack_int4x8_lo(wq.z); let w5 = unpack_int4x8_hi(wq.z);
    let w6 = unpack_int4x8_lo(wq.w); let w7 = unpack_int4x8_hi(wq.w);
    for (var r = 0u; r < TM; r++) {
        // Rows past the last repeat it (in bounds, never written out): no branch in the loop.
        let xi = (row0 + min(r, rows - 1u)) * p.x_stride + 2u * kb;   // block kb = vec4 2kb, 2kb+1
        let xa = xq[xi];
        let xb = xq[xi + 1u];
        var blk = dot4I8Packed(xa.x, w0);
        blk += dot4I8Packed(xa.y, w1);
        blk += dot4I8Packed(xa.z, w2);
        blk += dot4I8Packed(xa.w, w3);
        blk += dot4I8Packed(xb.x, w4);
        blk += dot4I8Packed(xb.y, w5);
        blk += dot4I8Packed(xb.z, w6);
        blk += dot4I8Packed(xb.w, w7);
        (*total)[r] += sg * blk;
    }
}

// f16 bits of output (row, global column n) from its int32 sum.
fn output_bits(acc: i32, row: u32, n: u32) -> u32 {
    let has_bias = p.has_bias == 1u;
    var b = 0u;
    if (has_bias) { b = bias[n]; }
    return epilogue_f16_bits(acc, x_scales[row], channel_scales[n], b, has_bias, p.fence);
}

@compute @workgroup_size(256)
fn w4a8_gemm_decode(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= p.n_tiles * p.row_blocks) { return; }   // uniform: whole workgroup leaves together
    // Column tiles vary fastest: neighbouring workgroups read the same activation rows.
    let tile = lin % p.n_tiles;
    let row0 = (lin / p.n_tiles) * TM;
    let rows = min(TM, p.m - row0);
    let c = lid % COLS;
    let s = lid / COLS;
    // Past the chunk's last column (last tile only) repeat it: in bounds, never written out.
    let col = min(tile * COLS + c, p.n_chunk - 1u);

    var total: array<i32, MAX_TM>;
    for (var r = 0u; r < MAX_TM; r++) { total[r] = 0; }

    let round = UNROLL * SLICES;                      // blocks per workgroup round: 64
    let kb_full = p.kb_total - p.kb_total % round;    // blocks of the whole rounds
    let step = SLICES * p.n_chunk;                    // vec4 from block kb to kb + SLICES, same column
    for (var kb = s; kb < kb_full; kb += round) {
        let i = kb * p.n_chunk + col;
        // Four independent 16-byte loads (and their group scales) in flight before any use.
        let q0 = qweight[i];
        let q1 = qweight[i + step];
        let q2 = qweight[i + 2u * step];
        let q3 = qweight[i + 3u * step];
        let g0 = group_scale(kb, col);
        let g1 = group_scale(kb + SLICES, col);
        let g2 = group_scale(kb + 2u * SLICES, col);
        let g3 = group_scale(kb + 3u * SLICES, col);
        add_block(&total, q0, g0, kb, row0, rows);
        add_block(&total, q1, g1, kb + SLICES, row0, rows);
        add_block(&total, q2, g2, kb + 2u * SLICES, row0, rows);
        add_block(&total, q3, g3, kb + 3u * SLICES, row0, rows);
    }
    {
        // Tail round: the same four loads, each only where its block exists.
        let kb = kb_full + s;
        let i = kb * p.n_chunk + col;
        var q0 = vec4<u32>(); var q1 = vec4<u32>(); var q2 = vec4<u32>(); var q3 = vec4<u32>();
        if (kb < p.kb_total) { q0 = qweight[i]; }
        if (kb + SLICES < p.kb_total) { q1 = qweight[i + step]; }
        if (kb + 2u * SLICES < p.kb_total) { q2 = qweight[i + 2u * step]; }
        if (kb + 3u * SLICES < p.kb_total) { q3 = qweight[i + 3u * step]; }
        if (kb < p.kb_total) { add_block(&total, q0, group_scale(kb, col), kb, row0, rows); }
        if (kb + SLICES < p.kb_total) {
            add_block(&total, q1, group_scale(kb + SLICES, col), kb + SLICES, row0, rows);
        }
        if (kb + 2u * SLICES < p.kb_total) {
            add_block(&total, q2, group_scale(kb + 2u * SLICES, col), kb + 2u * SLICES, row0, rows);
        }
        if (kb + 3u * SLICES < p.kb_total) {
            add_block(&total, q3, group_scale(kb + 3u * SLICES, col), kb + 3u * SLICES, row0, rows);
        }
    }

    // Tree over slices, fixed order: slice s < h adds slice s + h, for h = 8, 4, 2.
    for (var h = HALF; h >= 2u; h /= 2u) {
        if (s >= h && s < 2u * h) {
            for (var r = 0u; r < TM; r++) { red[(r * HALF + s - h) * COLS + c] = total[r]; }
        }
        workgroupBarrier();
        if (s < h) {
            for (var r = 0u; r < TM; r++) { total[r] += red[(r * HALF + s) * COLS + c]; }
        }
        workgroupBarrier();
    }
    if (s < 2u) {
        for (var r = 0u; r < TM; r++) { red[(r * HALF + s) * COLS + c] = total[r]; }
    }
    workgroupBarrier();

    // Epilogue: one owner per output word (row r, chunk columns n, n + 1), TM · 8 ≤ 128 words.
    for (var t = lid; t < TM * (COLS / 2u); t += COLS * SLICES) {
        let r = t / (COLS / 2u);
        let cl = 2u * (t % (COLS / 2u));   // column in the tile, even
        let n = tile * COLS + cl;          // column in the chunk, even
        if (r < rows && n < p.n_chunk) {
            let row = row0 + r;
            let base = r * HALF * COLS + cl;   // slice 0 at base, slice 1 at base + COLS
            let lo = output_bits(red[base] + red[base + COLS], row, p.n_offset + n);
            var hi = 0u;                       // padding column of an odd N: +0.0
            if (n + 1u < p.n_chunk) {
                hi = output_bits(red[base + 1u] + red[base + COLS + 1u], row, p.n_offset + n + 1u);
            }
            y[row * p.y_stride + (p.n_offset + n) / 2u] = lo | (hi << 16u);
        }
    }
}
