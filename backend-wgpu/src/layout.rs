//! The prepared weight layout and its exact inverse (CPU side, no device needed).
//!
//! Canonical storage (w4a8-core) is N rows of ⌈K/8⌉ words, nibble j of word w = `q_w[n, 8w + j]`.
//! The shaders want, per weight chunk of `nc` columns starting at column `n0`:
//!
//! ```text
//!   K padded to Kp = 32·⌈K/32⌉ (zero nibbles), cut into blocks of 32:
//!   qweight[(kb · nc + c) · 4 + j] = word 4·kb + j of column n0 + c, nibbles permuted
//!
//!   block kb:  | col 0: w0 w1 w2 w3 | col 1: w0 w1 w2 w3 | ... | col nc-1: ... |
//!                16 bytes per column, columns adjacent: one coalesced vec4 per invocation
//! ```
//!
//! and within each word the nibbles are permuted so that one mask gives int8 bytes in k order
//! (decoded by `unpack_int4x8_lo/hi` in `common.wgsl`):
//!
//! ```text
//!   stored nibble position: 7  6  5  4  3  2  1  0
//!   canonical nibble (k):   7  3  6  2  5  1  4  0
//! ```
//!
//! Group scales of the chunk are u8 packed four columns per word: byte `c % 4` of word
//! `grp · ⌈nc/4⌉ + c/4`. [`unpack_chunks`] inverts all of it exactly (padding is zero on both sides).

use w4a8_core::pack::words_per_row;
use w4a8_core::{Granularity, Result, W4A8Weights};

/// K per block of the shaders (one vec4<u32> of nibbles per column).
pub const BLOCK_K: usize = 32;

/// Weight chunks are cut at multiples of this many columns: chunk offsets stay even, as the
/// two-f16-per-word output needs, and whole tiles of the kernels' column widths up to 64 (a chunk of
/// an odd number of 64s leaves the 128-column tiled GEMM a partial tile, handled as an N tail).
pub const CHUNK_ALIGN_N: usize = 64;

/// K rounded up to a whole block.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(BLOCK_K) * BLOCK_K
}

/// Canonical word → stored word: canonical nibble i (i < 4) goes to position 2i, nibble 4 + i to
/// position 2i + 1.
pub fn permute_nibbles(w: u32) -> u32 {
    let mut out = 0;
    for i in 0..4 {
        out |= ((w >> (4 * i)) & 0xF) << (8 * i);
        out |= ((w >> (4 * (i + 4))) & 0xF) << (8 * i + 4);
    }
    out
}

/// Stored word → canonical word (inverse of [`permute_nibbles`]).
pub fn unpermute_nibbles(w: u32) -> u32 {
    let mut out = 0;
    for i in 0..4 {
        out |= ((w >> (8 * i)) & 0xF) << (4 * i);
        out |= ((w >> (8 * i + 4)) & 0xF) << (4 * (i + 4));
    }
    out
}

/// One weight chunk in the shader layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedChunk {
    /// First column.
    pub n0: usize,
    /// Columns.
    pub nc: usize,
    /// `Kp/32 · nc · 4` words.
    pub qweight: Vec<u32>,
    /// `groups · ⌈nc/4⌉` words (empty per channel).
    pub group_scales: Vec<u32>,
}

/// Repacks columns `n0 .. n0 + nc` of canonical weights into the shader layout.
pub fn pack_chunk(w: &W4A8Weights, n0: usize, nc: usize) -> PackedChunk {
    let (n, k) = (w.n(), w.k());
    let wpr = words_per_row(k);
    let kb_total = padded_k(k) / BLOCK_K;
    let canon = w.qweight();
    let mut qweight = vec![0u32; kb_total * nc * 4];
    for c in 0..nc {
        let row = &canon[(n0 + c) * wpr..(n0 + c + 1) * wpr];
        for (word, &v) in row.iter().enumerate() {
            let (kb, j) = (word / 4, word % 4);
            qweight[(kb * nc + c) * 4 + j] = permute_nibbles(v);
        }
    }
    let groups = w.granularity().groups(k);
    let sg_stride = nc.div_ceil(4);
    let mut group_scales = vec![0u32; groups * sg_stride];
    for grp in 0..groups {
        for c in 0..nc {
            let s = w.group_scales()[grp * n + n0 + c] as u32;
            group_scales[grp * sg_stride + c / 4] |= s << (8 * (c % 4));
        }
    }
    PackedChunk { n0, nc, qweight, group_scales }
}

/// Column ranges `(n0, nc)` covering N, each at most `max_cols` (a multiple of [`CHUNK_ALIGN_N`]).
pub fn chunk_ranges(n: usize, max_cols: usize) -> Vec<(usize, usize)> {
    let step = max_cols.max(CHUNK_ALIGN_N) / CHUNK_ALIGN_N * CHUNK_ALIGN_N;
    (0..n).step_by(step).map(|n0| (n0, step.min(n - n0))).collect()
}

/// Rebuilds canonical weights from the chunks (which must cover 0..N in order) and the scales.
pub fn unpack_chunks(
    n: usize,
    k: usize,
    granularity: Granularity,
    chunks: &[PackedChunk],
    channel_scales: Vec<f32>,
    bias: Option<Vec<f32>>,
) -> Result<W4A8Weights> {
    let wpr = words_per_row(k);
    let groups = granularity.groups(k);
    let mut qweight = vec![0u32; n * wpr];
    let mut group_scales = vec![0u8; groups * n];
    for ch in chunks {
        let sg_stride = ch.nc.div_ceil(4);
        for c in 0..ch.nc {
            for word in 0..wpr {
                let (kb, j) = (word / 4, word % 4);
                qweight[(ch.n0 + c) * wpr + word] = unpermute_nibbles(ch.qweight[(kb * ch.nc + c) * 4 + j]);
            }
            for grp in 0..groups {
                group_scales[grp * n + ch.n0 + c] =
                    (ch.group_scales[grp * sg_stride + c / 4] >> (8 * (c % 4))) as u8;
            }
        }
    }
    W4A8Weights::new(n, k, granularity, qweight, channel_scales, group_scales, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shader decodes stored word `w` as lo = bytes (k0..k3), hi = bytes (k4..k7) with these
    /// exact masks; this mirrors `unpack_int4x8_lo/hi` in common.wgsl and ties both ends.
    fn shader_unpack(w: u32) -> [i8; 8] {
        let ext = |b: u32| b | ((b & 0x0808_0808).wrapping_mul(0x1E));
        let lo = ext(w & 0x0F0F_0F0F).to_le_bytes();
        let hi = ext((w >> 4) & 0x0F0F_0F0F).to_le_bytes();
        let mut out = [0i8; 8];
        for i in 0..4 {
            out[i] = lo[i] as i8;
            out[i + 4] = hi[i] as i8;
        }
        out
    }

    #[test]
    fn permutation_round_trips_and_matches_the_shader_decode() {
        let q: Vec<i8> = (0..8).map(|i| [-8, 7, -1, 0, 3, -5, 6, -2][i]).collect();
        let canon = w4a8_core::pack::pack_int4(&q, 1, 8).unwrap()[0];
        let stored = permute_nibbles(canon);
        assert_eq!(unpermute_nibbles(stored), canon);
        assert_eq!(shader_unpack(stored).to_vec(), q);
        for v in -8i8..=7 {
            let canon = w4a8_core::pack::pack_int4(&[v; 8], 1, 8).unwrap()[0];
            assert_eq!(shader_unpack(permute_nibbles(canon)), [v; 8]);
        }
    }

    #[test]
    fn chunks_round_trip_exactly() {
        for (gran, k) in [
            (Granularity::PerChannel, 45usize),
            (Granularity::PerGroup { group_size: 32 }, 96),
            (Granularity::PerGroup { group_size: 64 }, 128),
        ] {
            let n = 131;
            let q: Vec<i8> = (0..n * k).map(|i| ((i * 7 + i / 5) % 16) as i8 - 8).collect();
            let groups = gran.groups(k);
            let gs: Vec<u8> = (0..groups * n).map(|i| (i % 16) as u8 + 1).collect();
            let cs: Vec<f32> = (0..n).map(|i| 0.01 * (i + 1) as f32).collect();
            let w = W4A8Weights::from_int4(n, k, gran, &q, cs.clone(), gs, Some(vec![0.5; n])).unwrap();
            for max_cols in [64, 128, 4096] {
                let chunks: Vec<_> =
                    chunk_ranges(n, max_cols).into_iter().map(|(n0, nc)| pack_chunk(&w, n0, nc)).collect();
                let back = unpack_chunks(n, k, gran, &chunks, cs.clone(), Some(vec![0.5; n])).unwrap();
                assert_eq!(back, w, "{gran} k={k} max_cols={max_cols}");
            }
        }
    }

    #[test]
    fn chunk_ranges_cover_n_at_aligned_offsets() {
        assert_eq!(chunk_ranges(200, 64), vec![(0, 64), (64, 64), (128, 64), (192, 8)]);
        assert_eq!(chunk_ranges(200, 100), vec![(0, 64), (64, 64), (128, 64), (192, 8)]);
        assert_eq!(chunk_ranges(5, 1 << 20), vec![(0, 5)]);
    }
}
