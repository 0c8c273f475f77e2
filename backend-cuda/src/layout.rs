//! The CUDA backend's weight layout: the repacking done once in `prepare`, its exact inverse for
//! `read_weights`, activation padding, and the kernel configurations with their launch geometry.
//!
//! Every constant here mirrors one in `kernels/w4a8_common.cuh` or `kernels/w4a8_gemm.cu`
//! (a test reads the CUDA source and checks they agree).
//!
//! # Packing ↔ dequant invariant
//!
//! The packed weights are a sequence of 2 KiB chunks, one per (n32 tile `j`, k-tile `kt`), in the
//! order `[j][kt]`. Inside a chunk, word `(s·32 + lane)·4 + ni` is lane `lane`'s share of the B
//! fragment of mma k32-step `s` and n8 sub-tile `ni`: with `g = lane / 4`, `t = lane % 4`,
//! `n = 32·j + 8·ni + g`, `k0 = 128·kt + 32·s`, byte `i` of the word holds
//!
//! ```text
//!   low nibble  = v(n, k0 + 4t + i)        → mma register b[0], byte i   (PTX: b0..b3, k = 4t + i)
//!   high nibble = v(n, k0 + 16 + 4t + i)   → mma register b[1], byte i   (PTX: b4..b7, k = 16 + 4t + i)
//! ```
//!
//! where `v` is the two's-complement nibble `q & 0xF` per channel and the offset nibble
//! `q + 8 = (q & 0xF) ^ 8` per group. The kernel turns one word into both registers with masks
//! (`w4a8_dequant_per_channel` / `w4a8_dequant_per_group` in `w4a8_common.cuh`); [`crate::emulate`]
//! runs the same bit operations through the PTX fragment map and must reproduce the CPU oracle
//! bit for bit, which is the test that ties the two ends together.

use rayon::prelude::*;
use w4a8_core::{Granularity, Result, W4A8Weights, pack::words_per_row};

/// K per pipeline stage; activations and weights are padded to a multiple of it (`W4A8_BK`).
pub const BK: usize = 128;
/// K of one `mma.m16n8k32` (`W4A8_KSTEP`).
pub const KSTEP: usize = 32;
/// Output columns per warp (`W4A8_WARP_N`): four n8 mma tiles.
pub const WARP_N: usize = 32;
/// u32 words per packed chunk of n32 × k128 nibbles (`W4A8_CHUNK_WORDS`).
pub const CHUNK_WORDS: usize = 512;
/// Bytes of group scales per (n32 tile, k-tile, slot) (`W4A8_SCALE_SLOT_BYTES`).
pub const SCALE_SLOT_BYTES: usize = 32;
/// N is padded to a multiple of this (the widest block, so no block reads past the packed data).
pub const N_ALIGN: usize = 128;
/// Tile rows per raster band (`W4A8_RASTER_ROWS`): see [`LaunchPlan::tile_coords`].
pub const RASTER_ROWS: usize = 8;
/// Threads per block of every kernel.
pub const THREADS: u32 = 256;

/// K rounded up to the k-tile.
pub fn padded_k(k: usize) -> usize {
    k.div_ceil(BK) * BK
}

/// N rounded up to [`N_ALIGN`].
pub fn padded_n(n: usize) -> usize {
    n.div_ceil(N_ALIGN) * N_ALIGN
}

/// Group-scale slots per k-tile: 4 groups of 32, 2 of 64, else the one group a k-tile lies in.
pub fn group_slots(group_size: usize) -> usize {
    if group_size < BK { BK / group_size } else { 1 }
}

/// Weights in the CUDA layout, on the host (what `prepare` uploads and `read_weights` downloads).
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    /// Output features.
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// Per channel or per group.
    pub granularity: Granularity,
    /// N padded to [`N_ALIGN`].
    pub n_pad: usize,
    /// K padded to [`BK`].
    pub k_pad: usize,
    /// The chunks, `[n_pad/32][k_pad/128][512]` words.
    pub words: Vec<u32>,
    /// Group scales `[n_pad/32][k_pad/128][slots][8][4]` (empty per channel); padding is 1.
    pub group_scales: Vec<u8>,
    /// `s_ch`, padded with zeros to `n_pad`.
    pub channel_scales: Vec<f32>,
    /// Bias padded with zeros to `n_pad`, if any.
    pub bias: Option<Vec<f32>>,
}

/// The nibble stored for weight (n, k): two's complement per channel, offset by 8 per group;
/// padding (n ≥ N or k ≥ K) stores the value 0.
#[inline]
fn stored_nibble(
    qweight: &[u32],
    wpr: usize,
    n_real: usize,
    k_real: usize,
    per_group: bool,
    n: usize,
    k: usize,
) -> u32 {
    let offset = if per_group { 8 } else { 0 };
    if n >= n_real || k >= k_real {
        return offset;
    }
    // Canonical storage: nibble k%8 of word k/8 of row n (lowest nibble = lowest k).
    let nib = (qweight[n * wpr + k / 8] >> (4 * (k % 8))) & 0xF;
    // q + 8 == q ^ 8 on a 4-bit two's-complement nibble (flips the sign bit: -8..7 → 0..15).
    nib ^ offset
}

/// Packs one word: see the module docs for the invariant.
#[allow(clippy::too_many_arguments)]
fn pack_word(
    w: &W4A8Weights,
    wpr: usize,
    per_group: bool,
    j: usize,
    kt: usize,
    s: usize,
    lane: usize,
    ni: usize,
) -> u32 {
    let (g, t) = (lane / 4, lane % 4);
    let n = WARP_N * j + 8 * ni + g;
    let k0 = BK * kt + KSTEP * s;
    let q = w.qweight();
    let mut word = 0u32;
    for i in 0..4 {
        let lo = stored_nibble(q, wpr, w.n(), w.k(), per_group, n, k0 + 4 * t + i);
        let hi = stored_nibble(q, wpr, w.n(), w.k(), per_group, n, k0 + 16 + 4 * t + i);
        word |= (lo | (hi << 4)) << (8 * i);
    }
    word
}

/// Repacks canonical weights into the CUDA layout.
pub fn pack_weights(w: &W4A8Weights) -> PackedWeights {
    let (n, k) = (w.n(), w.k());
    let (n_pad, k_pad) = (padded_n(n), padded_k(k));
    let (tiles, kts) = (n_pad / WARP_N, k_pad / BK);
    let wpr = words_per_row(k);
    let per_group = w.granularity().group_size().is_some();
    let mut words = vec![0u32; tiles * kts * CHUNK_WORDS];
    words.par_chunks_mut(CHUNK_WORDS).enumerate().for_each(|(chunk, out)| {
        let (j, kt) = (chunk / kts, chunk % kts);
        for (idx, word) in out.iter_mut().enumerate() {
            let (s, lane, ni) = (idx / 128, (idx / 4) % 32, idx % 4);
            *word = pack_word(w, wpr, per_group, j, kt, s, lane, ni);
        }
    });
    let group_scales = match w.granularity().group_size() {
        None => Vec::new(),
        Some(gsz) => {
            let slots = group_slots(gsz);
            let groups = k / gsz;
            let mut out = vec![1u8; tiles * kts * slots * SCALE_SLOT_BYTES];
            for (idx, v) in out.iter_mut().enumerate() {
                let byte = idx % SCALE_SLOT_BYTES;
                let rest = idx / SCALE_SLOT_BYTES;
                let (slot, kt, j) = (rest % slots, (rest / slots) % kts, rest / (slots * kts));
                let (g, ni) = (byte / 4, byte % 4);
                let col = WARP_N * j + 8 * ni + g;
                let grp = (BK * kt + slot * gsz.min(BK)) / gsz;
                if col < n && grp < groups {
                    *v = w.group_scales()[grp * n + col];
                }
            }
            out
        }
    };
    let pad = |v: &[f32]| {
        let mut p = v.to_vec();
        p.resize(n_pad, 0.0);
        p
    };
    PackedWeights {
        n,
        k,
        granularity: w.granularity(),
        n_pad,
        k_pad,
        words,
        group_scales,
        channel_scales: pad(w.channel_scales()),
        bias: w.bias().map(pad),
    }
}

/// The exact inverse of [`pack_weights`]: canonical weights back from the CUDA layout.
pub fn unpack_weights(p: &PackedWeights) -> Result<W4A8Weights> {
    let (n, k) = (p.n, p.k);
    let kts = p.k_pad / BK;
    let wpr = words_per_row(k);
    let per_group = p.granularity.group_size().is_some();
    let offset = if per_group { 8 } else { 0 };
    let mut qweight = vec![0u32; n * wpr];
    for (chunk, words) in p.words.chunks(CHUNK_WORDS).enumerate() {
        let (j, kt) = (chunk / kts, chunk % kts);
        for (idx, &word) in words.iter().enumerate() {
            let (s, lane, ni) = (idx / 128, (idx / 4) % 32, idx % 4);
            let (g, t) = (lane / 4, lane % 4);
            let row = WARP_N * j + 8 * ni + g;
            if row >= n {
                continue;
            }
            let k0 = BK * kt + KSTEP * s;
            for i in 0..4 {
                let byte = word >> (8 * i);
                for (col, nib) in [(k0 + 4 * t + i, byte & 0xF), (k0 + 16 + 4 * t + i, (byte >> 4) & 0xF)] {
                    if col < k {
                        qweight[row * wpr + col / 8] |= (nib ^ offset) << (4 * (col % 8));
                    }
                }
            }
        }
    }
    let group_scales = match p.granularity.group_size() {
        None => Vec::new(),
        Some(gsz) => {
            let slots = group_slots(gsz);
            let groups = k / gsz;
            let mut out = vec![0u8; groups * n];
            for grp in 0..groups {
                // The first (k-tile, slot) that holds group `grp`.
                let (kt, slot) = ((grp * gsz) / BK, ((grp * gsz) % BK) / gsz.min(BK));
                for col in 0..n {
                    let (j, g, ni) = (col / WARP_N, col % 8, (col % WARP_N) / 8);
                    out[grp * n + col] =
                        p.group_scales[((j * kts + kt) * slots + slot) * SCALE_SLOT_BYTES + g * 4 + ni];
                }
            }
            out
        }
    };
    W4A8Weights::new(
        n,
        k,
        p.granularity,
        qweight,
        p.channel_scales[..n].to_vec(),
        group_scales,
        p.bias.as_ref().map(|b| b[..n].to_vec()),
    )
}

/// Activations as the GEMM reads them: M rows of `padded_k(K)` int8, zeros past K.
pub fn pad_activations(values: &[i8], m: usize, k: usize) -> Vec<i8> {
    let kp = padded_k(k);
    let mut out = vec![0i8; m * kp];
    for (dst, src) in out.chunks_mut(kp).zip(values.chunks(k)) {
        dst[..k].copy_from_slice(src);
    }
    out
}

/// One block-tiling configuration of the GEMM kernel (mirrors `W4A8_GEMM_ENTRY` in w4a8_gemm.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmConfig {
    /// Entry point per channel.
    pub per_channel: &'static str,
    /// Entry point per group.
    pub per_group: &'static str,
    /// Rows per block.
    pub bm: usize,
    /// Warps along M.
    pub warps_m: usize,
    /// Warps along N (each 32 columns).
    pub warps_n: usize,
    /// Warps along K (sharing a stage's four k32 steps).
    pub warps_k: usize,
    /// cp.async pipeline depth.
    pub stages: usize,
    /// The largest M this configuration is chosen for.
    pub max_m: usize,
}

/// The configurations, smallest M first.
pub const CONFIGS: [GemmConfig; 3] = [
    GemmConfig {
        per_channel: "w4a8_gemm_small_per_channel",
        per_group: "w4a8_gemm_small_per_group",
        bm: 16,
        warps_m: 1,
        warps_n: 2,
        warps_k: 4,
        stages: 6,
        max_m: 16,
    },
    GemmConfig {
        per_channel: "w4a8_gemm_medium_per_channel",
        per_group: "w4a8_gemm_medium_per_group",
        bm: 64,
        warps_m: 2,
        warps_n: 2,
        warps_k: 2,
        stages: 4,
        max_m: 64,
    },
    GemmConfig {
        per_channel: "w4a8_gemm_large_per_channel",
        per_group: "w4a8_gemm_large_per_group",
        bm: 128,
        warps_m: 2,
        warps_n: 4,
        warps_k: 1,
        stages: 4,
        max_m: usize::MAX,
    },
];

impl GemmConfig {
    /// The configuration used for `m` rows.
    pub fn for_m(m: usize) -> GemmConfig {
        *CONFIGS.iter().find(|c| m <= c.max_m).unwrap_or(&CONFIGS[2])
    }
    /// Columns per block.
    pub fn bn(&self) -> usize {
        WARP_N * self.warps_n
    }
    /// Rows per warp.
    pub fn wm(&self) -> usize {
        self.bm / self.warps_m
    }
    /// Bytes of one pipeline stage: A tile, B chunks, group-scale slots.
    pub fn stage_bytes(&self) -> usize {
        self.bm * BK + self.warps_n * CHUNK_WORDS * 4 + self.warps_n * 4 * SCALE_SLOT_BYTES
    }
    /// Dynamic shared memory per block (`W4a8Config::SMEM`).
    pub fn smem_bytes(&self) -> usize {
        let pipe = self.stages * self.stage_bytes();
        let red = (self.warps_k - 1) * self.warps_m * self.warps_n * 32 * (self.wm() / 16) * 16 * 4;
        pipe.max(red)
    }
    /// The entry point for a granularity.
    pub fn entry(&self, granularity: Granularity) -> &'static str {
        match granularity {
            Granularity::PerChannel => self.per_channel,
            Granularity::PerGroup { .. } => self.per_group,
        }
    }
    /// Output tiles along (N, M).
    pub fn grid_mn(&self, m: usize, n_pad: usize) -> (usize, usize) {
        (n_pad / self.bn(), m.div_ceil(self.bm))
    }
}

/// Everything one GEMM launch is decided by: the block tiling and the persistent stream-K grid.
///
/// The output is cut into `tiles_m × tiles_n` tiles of `bm × bn`; each tile needs `k_tiles` k-tiles
/// of work, so the launch has `tiles · k_tiles` iterations (tile-major, k-tile minor, n fastest).
/// Block `b` of `blocks` takes iterations `[b·I/G, (b+1)·I/G)`: a run of segments, each a k-range of
/// one tile. A segment that covers its tile's whole K writes the output itself; a tile cut between
/// blocks is finished by whichever of its blocks arrives last (a semaphore per tile), which adds the
/// others' int32 partial sums (exact, so the order cannot change a bit) and applies the epilogue.
/// With `blocks = tiles` every block owns whole tiles (no partial sums at all).
/// [`crate::CudaBackend`] launches exactly this; `kernel_plan` reports it; the emulator runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The block tiling.
    pub config: GemmConfig,
    /// Output tiles along N (`n_pad / bn`).
    pub tiles_n: usize,
    /// Output tiles along M (`⌈M / bm⌉`).
    pub tiles_m: usize,
    /// k-tiles of `BK` along the padded K.
    pub k_tiles: usize,
    /// Persistent blocks (`gridDim.x`).
    pub blocks: usize,
}

/// One block's share of one tile: k-tiles `k_lo..k_hi` of tile `tile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Tile index, `tm · tiles_n + tn`.
    pub tile: usize,
    /// First k-tile.
    pub k_lo: usize,
    /// One past the last k-tile.
    pub k_hi: usize,
}

impl LaunchPlan {
    /// The plan for `m` rows against weights padded to `n_pad` × `k_pad`, when `resident` blocks of
    /// the chosen configuration fit on the device at once (SMs × blocks per SM): every tile its own
    /// block when there are at least that many tiles, else exactly `resident` blocks sharing the
    /// iterations evenly (one wave, no tail). `forced_blocks` overrides the choice (tests and
    /// benches only): it must lie in 1..=iterations, else `Err` names the valid range.
    pub fn new(
        m: usize,
        n_pad: usize,
        k_pad: usize,
        resident: usize,
        forced_blocks: Option<usize>,
    ) -> std::result::Result<Self, String> {
        let config = GemmConfig::for_m(m);
        let (tiles_n, tiles_m) = config.grid_mn(m, n_pad);
        let mut plan = LaunchPlan { config, tiles_n, tiles_m, k_tiles: k_pad / BK, blocks: 1 };
        let iters = plan.iterations();
        plan.blocks = match forced_blocks {
            None if plan.tiles() >= resident.max(1) => plan.tiles(),
            None => resident.max(1).min(iters),
            Some(b) if (1..=iters).contains(&b) => b,
            Some(b) => {
                return Err(format!("{b} blocks requested; this GEMM has {iters} iterations (1..={iters})"));
            }
        };
        Ok(plan)
    }

    /// Output tiles.
    pub fn tiles(&self) -> usize {
        self.tiles_m * self.tiles_n
    }

    /// (tile row, tile column) of tile `t`: tiles are numbered in bands of [`RASTER_ROWS`] tile
    /// rows, column by column inside a band (the last band may be shorter), so that the blocks
    /// running at once share weight columns when M spans many tiles.
    pub fn tile_coords(&self, t: usize) -> (usize, usize) {
        let band = t / (RASTER_ROWS * self.tiles_n);
        let rows = RASTER_ROWS.min(self.tiles_m - band * RASTER_ROWS);
        let in_band = t - band * RASTER_ROWS * self.tiles_n;
        (band * RASTER_ROWS + in_band % rows, in_band / rows)
    }

    /// Tile × k-tile iterations of the whole launch.
    pub fn iterations(&self) -> usize {
        self.tiles() * self.k_tiles
    }

    /// Iterations `[begin, end)` of block `b`, as the kernel computes them.
    pub fn range(&self, b: usize) -> (usize, usize) {
        let (i, g) = (self.iterations() as u128, self.blocks as u128);
        ((b as u128 * i / g) as usize, ((b as u128 + 1) * i / g) as usize)
    }

    /// The block whose range holds iteration `i`: the largest `b` with `⌊b·I/G⌋ ≤ i`.
    pub fn block_of(&self, i: usize) -> usize {
        let (it, g) = (self.iterations() as u128, self.blocks as u128);
        (((i as u128 + 1) * g - 1) / it) as usize
    }

    /// Block `b`'s segments, in the order it runs them.
    pub fn segments(&self, b: usize) -> Vec<Segment> {
        let (mut i, end) = self.range(b);
        let mut out = Vec::new();
        while i < end {
            let tile = i / self.k_tiles;
            let k_lo = i - tile * self.k_tiles;
            let k_hi = self.k_tiles.min(k_lo + (end - i));
            out.push(Segment { tile, k_lo, k_hi });
            i += k_hi - k_lo;
        }
        out
    }

    /// The first and last block working on `tile`: a tile with `first < last` is finished through
    /// partial sums and its semaphore.
    pub fn contributors(&self, tile: usize) -> (usize, usize) {
        (self.block_of(tile * self.k_tiles), self.block_of((tile + 1) * self.k_tiles - 1))
    }

    /// Which of block `b`'s two partial-sum slots holds its share of `tile`: 0 when that share
    /// starts the block's range (its first segment), 1 when it ends it (its last segment).
    pub fn partial_slot(&self, b: usize, tile: usize) -> usize {
        usize::from(self.range(b).0 < tile * self.k_tiles)
    }

    /// Whether some tile is cut between blocks (the launch uses partial sums and semaphores): some
    /// block's range starts inside a tile. Called on every GEMM, so it never walks the tiles: when
    /// the block count divides the tile count every range starts on a tile boundary, and otherwise
    /// the plan has at most one wave of blocks to look at.
    pub fn is_stream_k(&self) -> bool {
        !self.tiles().is_multiple_of(self.blocks)
            && (1..self.blocks).any(|b| !self.range(b).0.is_multiple_of(self.k_tiles))
    }

    /// The fewest k-tiles of any segment: below `stages - 1` a segment's pipeline never recycles a
    /// slot.
    pub fn min_segment_k_tiles(&self) -> usize {
        (0..self.blocks).flat_map(|b| self.segments(b)).map(|s| s.k_hi - s.k_lo).min().unwrap_or(0)
    }

    /// i32 elements of the partial-sum workspace: two slots of `bm × bn` per block.
    pub fn workspace_len(&self) -> usize {
        self.blocks * 2 * self.config.bm * self.config.bn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize, k: usize, gran: Granularity, seed: u64, bias: bool) -> W4A8Weights {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let q: Vec<i8> = (0..n * k).map(|_| (next() % 16) as i8 - 8).collect();
        let s_ch: Vec<f32> = (0..n).map(|_| (next() % 1000) as f32 * 1e-4).collect();
        let s_g: Vec<u8> = (0..gran.groups(k) * n).map(|_| (next() % 16) as u8 + 1).collect();
        let b = bias.then(|| (0..n).map(|_| (next() % 200) as f32 * 0.01 - 1.0).collect());
        W4A8Weights::from_int4(n, k, gran, &q, s_ch, s_g, b).unwrap()
    }

    #[test]
    fn pack_then_unpack_is_lossless() {
        for (n, k, gran) in [
            (1, 1, Granularity::PerChannel),
            (37, 129, Granularity::PerChannel),
            (130, 256, Granularity::PerChannel),
            (9, 96, Granularity::PerGroup { group_size: 32 }),
            (33, 192, Granularity::PerGroup { group_size: 64 }),
            (40, 384, Granularity::PerGroup { group_size: 128 }),
            (17, 768, Granularity::PerGroup { group_size: 256 }),
        ] {
            for bias in [false, true] {
                let w = weights(n, k, gran, (n * k) as u64, bias);
                let p = pack_weights(&w);
                assert_eq!(p.words.len(), p.n_pad / WARP_N * (p.k_pad / BK) * CHUNK_WORDS);
                assert_eq!(unpack_weights(&p).unwrap(), w, "n={n} k={k} {gran}");
            }
        }
    }

    #[test]
    fn padding_dequantizes_to_zero() {
        // Per group, padding nibbles are stored as 8 (q = 0); per channel as 0.
        let w = weights(3, 32, Granularity::PerGroup { group_size: 32 }, 1, false);
        let p = pack_weights(&w);
        // Column 3 (n ≥ N) lives in word ni = 0 of lane 12 (g = 3): all nibbles are padding.
        assert_eq!(p.words[12 * 4], 0x8888_8888);
        let w = weights(3, 32, Granularity::PerChannel, 1, false);
        assert_eq!(pack_weights(&w).words[12 * 4], 0);
    }

    #[test]
    fn raster_order_visits_every_tile_once_in_bands() {
        for (m, n_pad) in [(1, 4096), (16, 128), (200, 384), (1000, 1280), (4096, 57344)] {
            let p = LaunchPlan::new(m, n_pad, 128, 1, Some(1)).unwrap();
            let mut seen = vec![false; p.tiles()];
            for t in 0..p.tiles() {
                let (tm, tn) = p.tile_coords(t);
                assert!(tm < p.tiles_m && tn < p.tiles_n && !seen[tm * p.tiles_n + tn], "{p:?} t={t}");
                seen[tm * p.tiles_n + tn] = true;
                // Same band: consecutive tiles stay within RASTER_ROWS rows.
                assert_eq!(tm / RASTER_ROWS, t / (RASTER_ROWS * p.tiles_n));
            }
            if p.tiles_m == 1 {
                assert!((0..p.tiles()).all(|t| p.tile_coords(t) == (0, t)), "decode keeps the n order");
            }
        }
        // 57344×8192 at M = 4096: 32 × 448 tiles; a wave of 264 consecutive tiles touches 33 weight
        // columns (8 rows each) instead of 264.
        let p = LaunchPlan::new(4096, 57344, 8192, 264, None).unwrap();
        let cols: std::collections::BTreeSet<usize> = (0..264).map(|t| p.tile_coords(t).1).collect();
        assert_eq!(cols.len(), 33);
    }

    #[test]
    fn only_the_large_configuration_has_several_tile_rows() {
        // The kernel compiles the raster-band arithmetic only for bm ≥ 128 (w4a8_gemm.cu).
        for c in CONFIGS.iter().filter(|c| c.bm < 128) {
            assert!(c.max_m <= c.bm, "{} is chosen for M up to {} > bm {}", c.per_channel, c.max_m, c.bm);
        }
    }

    #[test]
    fn configuration_follows_m() {
        assert_eq!(GemmConfig::for_m(1).bm, 16);
        assert_eq!(GemmConfig::for_m(16).bm, 16);
        assert_eq!(GemmConfig::for_m(17).bm, 64);
        assert_eq!(GemmConfig::for_m(65).bm, 128);
    }

    #[test]
    fn stream_k_ranges_cover_every_iteration_once_and_name_their_finisher() {
        // M = 1 on 4096×4096 (64 tiles × 32 k-tiles) with 528 resident blocks: one wave of blocks,
        // every tile cut between several of them.
        let p = LaunchPlan::new(1, 4096, 4096, 528, None).unwrap();
        assert_eq!((p.tiles(), p.blocks), (64, 528));
        assert!(p.is_stream_k());
        // 4096 rows: 32 × 32 tiles ≥ 528, so every block owns one whole tile.
        let p = LaunchPlan::new(4096, 4096, 4096, 264, None).unwrap();
        assert!(p.blocks == p.tiles() && !p.is_stream_k());
        assert!(LaunchPlan::new(1, 128, 256, 4, Some(0)).unwrap_err().contains("1..=4"));
        assert!(LaunchPlan::new(1, 128, 256, 4, Some(5)).is_err());
        for (m, n_pad, k_pad) in [(1, 256, 4096), (17, 384, 640), (130, 256, 1280)] {
            let iters = LaunchPlan::new(m, n_pad, k_pad, 1, Some(1)).unwrap().iterations();
            for blocks in (1..=iters).step_by(3).chain([iters]) {
                let p = LaunchPlan::new(m, n_pad, k_pad, 1, Some(blocks)).unwrap();
                let mut seen = vec![0u8; p.iterations()];
                for b in 0..blocks {
                    let segs = p.segments(b);
                    for s in &segs {
                        let (first, last) = p.contributors(s.tile);
                        assert!((first..=last).contains(&b));
                        // A shared tile's slot 1 only for a block's last segment, slot 0 only for
                        // its first: a block's two shared tiles never collide.
                        if first != last {
                            let want = if segs.first() == Some(s) { 0 } else { 1 };
                            assert_eq!(p.partial_slot(b, s.tile), want, "{p:?} b={b} {s:?}");
                            assert!(want == 0 || segs.last() == Some(s));
                        }
                        for k in s.k_lo..s.k_hi {
                            seen[s.tile * p.k_tiles + k] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{p:?}");
                for i in 0..p.iterations() {
                    let (lo, hi) = p.range(p.block_of(i));
                    assert!(lo <= i && i < hi);
                }
            }
        }
    }
}
