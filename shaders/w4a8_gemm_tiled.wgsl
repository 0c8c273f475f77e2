requires packed_4x8_integer_dot_product;

// w4a8_gemm_tiled.wgsl — the prefill path (M > 16): 64×64 output tiles, K in blocks of 32,
// operands staged in workgroup memory, 4×4 outputs per invocation, epilogue fused.
//
// Tile of one workgroup (256 invocations, tx = lid % 16, ty = lid / 16):
//
//            n: tile_n + 4·tx + (0..3)
//          +---------------------------------+
//   m:     | rows ty, ty+16, ty+32, ty+48    |   each invocation: 4 rows × 4 adjacent columns
//   tile_m | (strided so that the 16 ty     |   (adjacent columns so that it owns whole output
//   + ...  |  values hit distinct rows)      |    words of two f16)
//          +---------------------------------+
//
// Per K block (32 k):
//   xs[64 rows][8 words]   int8×4, copied from xq (2 words per invocation)
//   ws[64 cols][8 words]   int8×4, unpacked from one nibble word per invocation (see common.wgsl)
// then each invocation does 4·4·8 = 128 dot4I8Packed from 32 + 32 staged words. The block sum is
// scaled by s_g (per group; a block never straddles a group) and added to the int32 total.
//
// Weight layout as in w4a8_gemm_small_m.wgsl, read as plain words: word j of column n in block kb
// is qweight[(kb · n_chunk + n) · 4 + j].

struct TiledParams {
    m: u32,            // rows in this dispatch (the activation/output bindings start at its row 0)
    n_chunk: u32,      // columns of this weight chunk
    n_offset: u32,     // first column of the chunk in the output (a multiple of 64: even)
    n_total: u32,      // N (for channel scales and bias)
    kb_total: u32,     // Kp / 32
    m_tiles: u32,      // ceil(m / 64)
    n_tiles: u32,      // ceil(n_chunk / 64)
    group_blocks: u32, // g / 32, 0 per channel
    sg_stride: u32,    // ceil(n_chunk / 4)
    x_stride: u32,     // Kp / 4
    y_stride: u32,     // Np / 2 words per output row
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: TiledParams;
@group(0) @binding(1) var<storage, read> qweight: array<u32>;        // [kb][n_chunk][4]
@group(0) @binding(2) var<storage, read> group_scales: array<u32>;   // see small-M kernel
@group(0) @binding(3) var<storage, read> xq: array<u32>;             // [m][Kp/4]
@group(0) @binding(4) var<storage, read> x_scales: array<f32>;       // [m]
@group(0) @binding(5) var<storage, read> channel_scales: array<f32>; // [N]
@group(0) @binding(6) var<storage, read> bias: array<f32>;           // [N] or 1 placeholder
@group(0) @binding(7) var<storage, read_write> y: array<u32>;        // [m][Np/2] f16×2

const BM: u32 = 64u;
const BN: u32 = 64u;

var<workgroup> xs: array<u32, 512>;   // BM × 8 words
var<workgroup> ws: array<u32, 512>;   // BN × 8 words

@compute @workgroup_size(256)
fn w4a8_gemm_tiled(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let lin = linear_workgroup(wid, nwg);
    if (lin >= p.m_tiles * p.n_tiles) { return; }   // uniform per workgroup
    // Column tiles vary fastest: neighbouring workgroups share the same activation rows.
    let tile_m = (lin / p.n_tiles) * BM;
    let tile_n = (lin % p.n_tiles) * BN;
    let tx = lid % 16u;
    let ty = lid / 16u;

    var total: array<i32, 16>;   // [i row][j col], row ty + 16i, column 4tx + j
    for (var t = 0u; t < 16u; t++) { total[t] = 0; }

    for (var kb = 0u; kb < p.kb_total; kb++) {
        // Stage activations: 512 words, two per invocation; rows past m read as zero.
        for (var r = 0u; r < 2u; r++) {
            let t = lid + r * 256u;
            let row = tile_m + t / 8u;
            var v = 0u;
            if (row < p.m) { v = xq[row * p.x_stride + kb * 8u + t % 8u]; }
            xs[t] = v;
        }
        // Stage weights: column lid / 4, nibble word lid % 4 -> two int8×4 words.
        {
            let col = tile_n + lid / 4u;
            let j = lid % 4u;
            var wq = 0u;
            if (col < p.n_chunk) { wq = qweight[(kb * p.n_chunk + col) * 4u + j]; }
            ws[(lid / 4u) * 8u + 2u * j] = unpack_int4x8_lo(wq);
            ws[(lid / 4u) * 8u + 2u * j + 1u] = unpack_int4x8_hi(wq);
        }
        workgroupBarrier();

        var sg = vec4<i32>(1);
        if (p.group_blocks > 0u) {
            let grp = kb / p.group_blocks;
            // Four adjacent columns 4tx .. 4tx+3 of a 64-aligned tile share one packed word.
            let c = tile_n + 4u * tx;
            if (c < p.n_chunk) {
                let word = group_scales[grp * p.sg_stride + c / 4u];
                sg = vec4<i32>(unpack4xU8(word));
            }
        }
        var wr: array<u32, 32>;   // 4 columns × 8 words
        for (var j = 0u; j < 4u; j++) {
            for (var w = 0u; w < 8u; w++) {
                wr[j * 8u + w] = ws[(4u * tx + j) * 8u + w];
            }
        }
        for (var i = 0u; i < 4u; i++) {
            let xb = (ty + 16u * i) * 8u;
            let x0 = xs[xb]; let x1 = xs[xb + 1u]; let x2 = xs[xb + 2u]; let x3 = xs[xb + 3u];
            let x4 = xs[xb + 4u]; let x5 = xs[xb + 5u]; let x6 = xs[xb + 6u]; let x7 = xs[xb + 7u];
            for (var j = 0u; j < 4u; j++) {
                let wb = j * 8u;
                var blk = dot4I8Packed(x0, wr[wb]);
                blk += dot4I8Packed(x1, wr[wb + 1u]);
                blk += dot4I8Packed(x2, wr[wb + 2u]);
                blk += dot4I8Packed(x3, wr[wb + 3u]);
                blk += dot4I8Packed(x4, wr[wb + 4u]);
                blk += dot4I8Packed(x5, wr[wb + 5u]);
                blk += dot4I8Packed(x6, wr[wb + 6u]);
                blk += dot4I8Packed(x7, wr[wb + 7u]);
                total[i * 4u + j] += sg[j] * blk;
            }
        }
        workgroupBarrier();
    }

    // Fused epilogue, two columns per output word.
    for (var i = 0u; i < 4u; i++) {
        let row = tile_m + ty + 16u * i;
        if (row >= p.m) { continue; }
        let sx = x_scales[row];
        for (var h = 0u; h < 2u; h++) {
            let c = tile_n + 4u * tx + 2u * h;      // chunk column (even)
            if (c >= p.n_chunk) { continue; }
            let n = p.n_offset + c;                 // global column
            var bits = array<u32, 2>(0u, 0u);       // second half stays +0.0 past N
            for (var e = 0u; e < 2u; e++) {
                if (c + e < p.n_chunk) {
                    var v = (f32(total[i * 4u + 2u * h + e]) * sx) * channel_scales[n + e];
                    if (p.has_bias == 1u) { v = v + bias[n + e]; }
                    bits[e] = f32_to_f16_bits(v);
                }
            }
            y[row * p.y_stride + n / 2u] = bits[0] | (bits[1] << 16u);
        }
    }
}
