requires packed_4x8_integer_dot_product;

// w4a8_gemm_small_m.wgsl — the decode path (M ≤ 16): memory bound, every weight byte read once.
//
// Weights (prepared layout, one N-chunk of the tensor, see `layout.rs`): K is cut into blocks of 32
// and the chunk is stored block-major, one 16-byte vec4<u32> per (block, column):
//
//   qweight[kb * n_chunk + n] = 32 int4 of column n, k = 32·kb .. 32·kb+31
//                               (word j: k = 32·kb + 8j .. +7, nibbles permuted, see common.wgsl)
//
// so the 64 invocations of a workgroup, one column each, read 64 consecutive vec4 (1 KiB) per
// block: fully coalesced. Split-K fills the GPU when N alone is too narrow:
//
//            columns →  [ wg 0 | wg 1 | wg 2 | ... ]   64 columns per workgroup
//   K blocks  split 0   [      |      |      |     ]   kb_per_split blocks each
//      ↓      split 1   [      |      |      |     ]
//             ...
//
// Each workgroup adds its exact int32 partial sums into acc[m][n] with atomicAdd: integer addition
// is associative, so the result is the same bit pattern whatever order the splits land in
// (deterministic). `w4a8_epilogue` then turns acc into f16. The activation rows of the split are
// staged in workgroup memory (they are shared by all 64 columns).
//
// Per group (g = 32·group_blocks), w8 = s_g · q_w, and since a 32-block never straddles a group:
//   Σ_k q_x · (s_g · q_w) = s_g · Σ_{k in block} q_x · q_w   (exact in int32)
// so each block is reduced with the raw int4 values and scaled once by its s_g.

struct SmallMParams {
    m: u32,            // rows in this dispatch (≤ TM), starting at row m0
    n_chunk: u32,      // columns in this weight chunk
    n_offset: u32,     // first column of the chunk in the whole output
    n_total: u32,      // N: row stride of acc
    kb_total: u32,     // Kp / 32 blocks
    kb_per_split: u32, // blocks per split
    n_tiles: u32,      // ceil(n_chunk / 64)
    splits: u32,       // number of K splits
    group_blocks: u32, // g / 32 per group, 0 per channel
    sg_stride: u32,    // words per row of packed group scales: ceil(n_chunk / 4)
    x_stride: u32,     // words per activation row: Kp / 4
    m0: u32,           // first activation / accumulator row of this dispatch
}

@group(0) @binding(0) var<uniform> p: SmallMParams;
@group(0) @binding(1) var<storage, read> qweight: array<vec4<u32>>;    // [kb][n_chunk]
// Group scales s_g of the chunk, u8 packed four columns per word: byte (n % 4) of
// group_scales[grp * sg_stride + n / 4]. A 1-word placeholder per channel.
@group(0) @binding(2) var<storage, read> group_scales: array<u32>;
@group(0) @binding(3) var<storage, read> xq: array<u32>;               // [m][Kp/4] int8×4
@group(0) @binding(4) var<storage, read_write> acc: array<atomic<i32>>; // [m][N] int32

// Rows handled per pipeline: the host compiles TM ∈ {1, 2, 4, 8, 16} and picks the smallest ≥ M,
// so the m-loops have a constant trip count and the accumulators stay in registers.
override TM: u32 = 16u;
const SMALL_WG: u32 = 64u;
const MAX_TM: u32 = 16u;
// Blocks of activations staged per pass: 16 rows × 16 blocks × 8 words × 4 B = 8 KiB.
const STAGE_BLOCKS: u32 = 16u;

var<workgroup> xs: array<u32, 2048>;   // [stage block][row][8 words], MAX_TM * STAGE_BLOCKS * 8

@compute @workgroup_size(64)
fn w4a8_gemm_small_m(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= p.n_tiles * p.splits) { return; }   // uniform: whole workgroup leaves together
    let tile = lin % p.n_tiles;
    let split = lin / p.n_tiles;
    let n = tile * SMALL_WG + lid;
    let kb_begin = split * p.kb_per_split;
    let kb_end = min(kb_begin + p.kb_per_split, p.kb_total);

    var total: array<i32, 16>;   // MAX_TM
    for (var i = 0u; i < MAX_TM; i++) { total[i] = 0; }

    for (var kb0 = kb_begin; kb0 < kb_end; kb0 += STAGE_BLOCKS) {
        let nb = min(STAGE_BLOCKS, kb_end - kb0);
        // Stage x[0..TM][kb0 .. kb0+nb] (8 words per block per row); rows ≥ m read as zero.
        for (var t = lid; t < nb * TM * 8u; t += SMALL_WG) {
            let b = t / (TM * 8u);
            let r = (t / 8u) % TM;
            let w = t % 8u;
            var v = 0u;
            if (r < p.m) { v = xq[(p.m0 + r) * p.x_stride + (kb0 + b) * 8u + w]; }
            xs[(b * TM + r) * 8u + w] = v;
        }
        workgroupBarrier();
        if (n < p.n_chunk) {
            for (var b = 0u; b < nb; b++) {
                let kb = kb0 + b;
                let wq = qweight[kb * p.n_chunk + n];
                // 32 int4 -> 8 words of 4 int8, k order (see common.wgsl).
                let w0 = unpack_int4x8_lo(wq.x); let w1 = unpack_int4x8_hi(wq.x);
                let w2 = unpack_int4x8_lo(wq.y); let w3 = unpack_int4x8_hi(wq.y);
                let w4 = unpack_int4x8_lo(wq.z); let w5 = unpack_int4x8_hi(wq.z);
                let w6 = unpack_int4x8_lo(wq.w); let w7 = unpack_int4x8_hi(wq.w);
                var sg = 1;
                if (p.group_blocks > 0u) {
                    let grp = kb / p.group_blocks;
                    sg = i32((group_scales[grp * p.sg_stride + n / 4u] >> ((n % 4u) * 8u)) & 0xffu);
                }
                for (var r = 0u; r < TM; r++) {
                    let base = (b * TM + r) * 8u;
                    var blk = dot4I8Packed(xs[base], w0);
                    blk += dot4I8Packed(xs[base + 1u], w1);
                    blk += dot4I8Packed(xs[base + 2u], w2);
                    blk += dot4I8Packed(xs[base + 3u], w3);
                    blk += dot4I8Packed(xs[base + 4u], w4);
                    blk += dot4I8Packed(xs[base + 5u], w5);
                    blk += dot4I8Packed(xs[base + 6u], w6);
                    blk += dot4I8Packed(xs[base + 7u], w7);
                    total[r] += sg * blk;
                }
            }
        }
        workgroupBarrier();
    }
    if (n < p.n_chunk) {
        for (var r = 0u; r < TM; r++) {
            if (r < p.m) {
                atomicAdd(&acc[(p.m0 + r) * p.n_total + p.n_offset + n], total[r]);
            }
        }
    }
}
