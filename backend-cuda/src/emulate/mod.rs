//! A CPU emulator of the GEMM kernel, lane by lane and register by register.
//!
//! It runs the packed weights ([`crate::layout::PackedWeights`]) through exactly what
//! `kernels/w4a8_gemm.cu` does — the cp.async stage copies into the slots of the shared-memory ring
//! buffer (with the A-tile XOR swizzle), the pipeline's prologue, waits, barriers and slot refills
//! ([`pipeline`]), the 128-bit B loads, the dequantization bit operations, `ldmatrix.x4` and
//! `mma.m16n8k32` through the fragment map of the PTX ISA ([`fragments`]), the intra-block k-warp
//! reduction, the stream-K segments, partial sums and tile tickets (in any block order), and the epilogue — so that a test can hold it to the CPU oracle bit for bit.
//! That test is what ties the Rust packing (`layout::pack_weights`) to the CUDA dequantization, and
//! the pipeline model is what makes a slot overwritten before it is read fail without a GPU.

// Index loops on purpose: `lane`, `mi`, `ni`, `e` are the kernel's own register indices.
#![allow(clippy::needless_range_loop)]

pub mod fragments;
pub mod pipeline;

use w4a8_core::{QuantizedActivations, f16};

pub use fragments::{dequant_per_channel, dequant_per_group, group_offset, ldmatrix_x4, mma_m16n8k32};
pub use pipeline::{PipelineFault, Schedule};

use crate::layout::{
    BK, CHUNK_WORDS, GemmConfig, KSTEP, LaunchPlan, PackedWeights, SCALE_SLOT_BYTES, WARP_N, group_slots,
    pad_activations,
};
use fragments::epilogue;

/// One pipeline slot's bytes: the A tile (swizzled), the B chunks, the group-scale slots.
struct Stage {
    a: Vec<u8>,
    b: Vec<u8>,
    s: Vec<u8>,
}

/// What every block of one launch shares.
struct Launch<'a> {
    cfg: GemmConfig,
    w: &'a PackedWeights,
    xa: Vec<i8>,
    m: usize,
    kts: usize,
    /// Group size (BK per channel) and group-scale slots per k-tile (0 per channel).
    gsz: usize,
    gps: usize,
}

/// `acc[mi][ni][lane][e]` of one warp.
type WarpAcc = [[[[i32; 4]; 32]; 4]; 8];

impl Launch<'_> {
    /// `w4a8_load_stage`: the bytes block (`m0`, `tile0`) copies for k-tile `kt`.
    fn load_stage(&self, m0: usize, tile0: usize, kt: usize) -> Stage {
        let (cfg, w, kp) = (self.cfg, self.w, self.w.k_pad);
        let mut a = vec![0u8; cfg.bm * BK];
        for c in 0..cfg.bm * BK / 16 {
            let (r, ch) = (c >> 3, c & 7);
            let dst = r * BK + ((ch ^ (r & 7)) << 4);
            if m0 + r < self.m {
                let src = (m0 + r) * kp + kt * BK + ch * 16;
                for b in 0..16 {
                    a[dst + b] = self.xa[src + b] as u8;
                }
            } // else: zero-filled (cp.async with src-size 0)
        }
        let mut b = vec![0u8; cfg.warps_n * CHUNK_WORDS * 4];
        for c in 0..b.len() / 16 {
            let (wn, e) = (c >> 7, c & 127);
            let src_word = ((tile0 + wn) * self.kts + kt) * CHUNK_WORDS + e * 4;
            for q in 0..4 {
                b[c * 16 + 4 * q..c * 16 + 4 * q + 4].copy_from_slice(&w.words[src_word + q].to_le_bytes());
            }
        }
        let mut s = vec![0u8; cfg.warps_n * 4 * SCALE_SLOT_BYTES];
        for c in 0..cfg.warps_n * self.gps * 2 {
            let (wn, rem) = (c / (self.gps * 2), c % (self.gps * 2));
            let src = ((tile0 + wn) * self.kts + kt) * self.gps * SCALE_SLOT_BYTES + rem * 16;
            s[c * 16..c * 16 + 16].copy_from_slice(&w.group_scales[src..src + 16]);
        }
        Stage { a, b, s }
    }

    /// Each warp's k32 steps of one stage: B words, dequantization, ldmatrix, mma.
    fn compute_stage(&self, st: &Stage, acc: &mut [WarpAcc]) {
        let cfg = self.cfg;
        let (mt, wm_rows) = (cfg.wm() / 16, cfg.wm());
        for (warp, acc_w) in acc.iter_mut().enumerate() {
            let wk = warp % cfg.warps_k;
            let wn = (warp / cfg.warps_k) % cfg.warps_n;
            let wmi = warp / (cfg.warps_k * cfg.warps_n);
            for s in (wk..BK / KSTEP).step_by(cfg.warps_k) {
                let mut b = [[[0u32; 2]; 32]; 4]; // [ni][lane]
                for lane in 0..32 {
                    let off = wn * CHUNK_WORDS * 4 + (s * 32 + lane) * 16;
                    let words: [u32; 4] = std::array::from_fn(|q| word(&st.b, off + 4 * q));
                    let sw = if self.gps > 0 {
                        let slot = if self.gsz < BK { s * KSTEP / self.gsz } else { 0 };
                        word(&st.s, (wn * self.gps + slot) * SCALE_SLOT_BYTES + (lane >> 2) * 4)
                    } else {
                        0
                    };
                    for ni in 0..4 {
                        b[ni][lane] = if self.gps > 0 {
                            let sg = (sw >> (8 * ni)) & 0xFF; // __byte_perm(sw, 0, 0x4440 + ni)
                            dequant_per_group(words[ni], sg, group_offset(sg))
                        } else {
                            dequant_per_channel(words[ni])
                        };
                    }
                }
                for (mi, acc_mi) in acc_w.iter_mut().enumerate().take(mt) {
                    let addrs: [usize; 32] = std::array::from_fn(|lane| {
                        let r = wmi * wm_rows + mi * 16 + (lane & 15);
                        let ch = 2 * s + (lane >> 4);
                        r * BK + ((ch ^ (r & 7)) << 4)
                    });
                    let a = ldmatrix_x4(&st.a, &addrs);
                    for ni in 0..4 {
                        mma_m16n8k32(&mut acc_mi[ni], &a, &b[ni]);
                    }
                }
            }
        }
    }
}

fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Emulates the launch `plan` describes, with the kernel's own pipeline schedule, blocks run in
/// index order.
pub fn emulate_gemm(
    x: &QuantizedActivations,
    w: &PackedWeights,
    plan: &LaunchPlan,
) -> Result<Vec<f16>, PipelineFault> {
    let order: Vec<usize> = (0..plan.blocks).collect();
    emulate_gemm_with(x, w, plan, Schedule::kernel(plan.config.stages), &order)
}

/// [`emulate_gemm`] with another pipeline schedule (tests show a broken one is caught) and the
/// blocks run in `order` (a permutation of `0..blocks`): on the GPU they run concurrently, so any
/// order of arrival at a shared tile's semaphore must give the same bits.
pub fn emulate_gemm_with(
    x: &QuantizedActivations,
    w: &PackedWeights,
    plan: &LaunchPlan,
    schedule: Schedule,
    order: &[usize],
) -> Result<Vec<f16>, PipelineFault> {
    assert_eq!(x.k(), w.k);
    assert_eq!(plan.k_tiles, w.k_pad / BK, "the plan was made for another K");
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    assert!(sorted.iter().copied().eq(0..plan.blocks), "order must be a permutation of the blocks");
    let (m, n) = (x.m(), w.n);
    let cfg = plan.config;
    let gsz = w.granularity.group_size().unwrap_or(BK);
    let gps = if w.granularity.group_size().is_some() { group_slots(gsz) } else { 0 };
    let launch = Launch { cfg, w, xa: pad_activations(x.values(), m, x.k()), m, kts: plan.k_tiles, gsz, gps };
    let (mt, wm_rows) = (cfg.wm() / 16, cfg.wm());
    let warps = cfg.warps_m * cfg.warps_n * cfg.warps_k;
    let slot_len = cfg.bm * cfg.bn();
    let mut y = vec![f16::from_bits(0x7E00); m * n]; // NaN poison: every element must be written
    let mut ws = vec![0i32; plan.workspace_len()];
    let mut sem = vec![0u32; plan.tiles()];

    // The warps holding the k-reduced sums (wk = 0), with their (warp, wn, wm).
    let sum_warps: Vec<(usize, usize, usize)> = (0..warps)
        .filter(|w| w % cfg.warps_k == 0)
        .map(|w| (w, (w / cfg.warps_k) % cfg.warps_n, w / (cfg.warps_k * cfg.warps_n)))
        .collect();

    for &b in order {
        for seg in plan.segments(b) {
            let (tm, tn) = plan.tile_coords(seg.tile);
            let (m0, tile0) = (tm * cfg.bm, tn * cfg.warps_n);
            let mut acc = vec![[[[[0i32; 4]; 32]; 4]; 8]; warps];
            pipeline::run(
                schedule,
                (seg.k_lo, seg.k_hi),
                cfg.warps_k > 1,
                |kt| launch.load_stage(m0, tile0, kt),
                |_, stage| launch.compute_stage(stage, &mut acc),
            )?;
            // Intra-block k reduction in the kernel's order: warp wk = 0 adds wk = 1, 2, 3.
            for &(warp, _, _) in &sum_warps {
                for q in 1..cfg.warps_k {
                    let other = acc[warp + q];
                    for (mine, theirs) in acc[warp].iter_mut().zip(&other).take(mt) {
                        add_fragments(mine, theirs);
                    }
                }
            }
            // The k-reduced accumulators live in the WARPS_M × WARPS_N warps with wk = 0; `ws`
            // slot index of (warp tile, register r = (mi·4 + ni)·4 + e, lane):
            // ((wm·WARPS_N + wn)·MT·16 + r)·32 + lane — lanes adjacent, so the kernel's stores coalesce.
            let at = |wmi: usize, wn: usize, mi: usize, ni: usize, e: usize, lane: usize| {
                (((wmi * cfg.warps_n + wn) * mt * 16 + (mi * 4 + ni) * 4 + e) * 32) + lane
            };
            let (first, last) = plan.contributors(seg.tile);
            if first != last {
                // A shared tile: park this share, take a ticket; the last to arrive finishes it.
                let base = (b * 2 + plan.partial_slot(b, seg.tile)) * slot_len;
                for &(warp, wn, wmi) in &sum_warps {
                    for_each_register(mt, |mi, ni, e, lane| {
                        ws[base + at(wmi, wn, mi, ni, e, lane)] = acc[warp][mi][ni][lane][e];
                    });
                }
                let ticket = sem[seg.tile];
                sem[seg.tile] += 1;
                if ticket as usize != last - first {
                    continue;
                }
                sem[seg.tile] = 0; // reset for the next launch (the kernel's last block does this)
                for &(warp, wn, wmi) in &sum_warps {
                    for_each_register(mt, |mi, ni, e, lane| {
                        // The other blocks' shares, in block order, onto this block's own.
                        for other in (first..=last).filter(|&o| o != b) {
                            let slot = (other * 2 + plan.partial_slot(other, seg.tile)) * slot_len;
                            let v = ws[slot + at(wmi, wn, mi, ni, e, lane)];
                            acc[warp][mi][ni][lane][e] = acc[warp][mi][ni][lane][e].wrapping_add(v);
                        }
                    });
                }
            }
            // The epilogue of a finished tile.
            for &(warp, wn, wmi) in &sum_warps {
                for_each_register(mt, |mi, ni, e, lane| {
                    let (g, t) = (lane >> 2, lane & 3);
                    let row = m0 + wmi * wm_rows + mi * 16 + g + 8 * (e >> 1);
                    let col = (tile0 + wn) * WARP_N + ni * 8 + 2 * t + (e & 1);
                    if row < m && col < n {
                        let raw = acc[warp][mi][ni][lane][e];
                        // Per channel the mma summed 16·q: the shift divides exactly.
                        let v = if gps > 0 { raw } else { raw >> 4 };
                        y[row * n + col] = epilogue(
                            v,
                            x.scales()[row],
                            w.channel_scales[col],
                            w.bias.as_ref().map(|b| b[col]),
                        );
                    }
                });
            }
        }
    }
    if let Some(t) = sem.iter().position(|&c| c != 0) {
        return Err(PipelineFault(format!("tile {t}'s semaphore was left at {} after the launch", sem[t])));
    }
    Ok(y)
}

/// `acc[ni][lane][e] += other[ni][lane][e]` for one m16 tile of a warp.
fn add_fragments(acc: &mut [[[i32; 4]; 32]; 4], other: &[[[i32; 4]; 32]; 4]) {
    for ni in 0..4 {
        for lane in 0..32 {
            for e in 0..4 {
                acc[ni][lane][e] = acc[ni][lane][e].wrapping_add(other[ni][lane][e]);
            }
        }
    }
}

/// Calls `f(mi, ni, e, lane)` for every accumulator register of a warp with `mt` m16 tiles.
fn for_each_register(mt: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    for mi in 0..mt {
        for ni in 0..4 {
            for e in 0..4 {
                for lane in 0..32 {
                    f(mi, ni, e, lane);
                }
            }
        }
    }
}
