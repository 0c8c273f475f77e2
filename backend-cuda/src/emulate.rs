//! A CPU emulator of the GEMM kernel, lane by lane and register by register.
//!
//! It runs the packed weights ([`crate::layout::PackedWeights`]) through exactly what
//! `kernels/w4a8_gemm.cu` does — the cp.async stage copies into a shared-memory image (with the
//! A-tile XOR swizzle), the 128-bit B loads, the dequantization bit operations, `ldmatrix.x4`, and
//! `mma.m16n8k32` through the fragment map of the PTX ISA ("Matrix Fragments for mma.m16n8k32",
//! written out independently below from the specification's formulas), the intra-block k-warp
//! reduction, split-K, and the epilogue — so that a test can hold it to the CPU oracle bit for bit.
//! That test is what ties the Rust packing (`layout::pack_weights`) to the CUDA dequantization.

// Index loops on purpose: `lane`, `mi`, `ni`, `e` are the kernel's own register indices.
#![allow(clippy::needless_range_loop)]

use w4a8_core::{Granularity, QuantizedActivations, f16};

use crate::layout::{
    BK, CHUNK_WORDS, GemmConfig, KSTEP, PackedWeights, SCALE_SLOT_BYTES, WARP_N, group_slots, pad_activations,
};

/// `w4a8_dequant_per_channel`: both mma registers of one packed word, nibbles as 16·q.
pub fn dequant_per_channel(w: u32) -> [u32; 2] {
    [(w << 4) & 0xF0F0_F0F0, w & 0xF0F0_F0F0]
}

/// `w4a8_group_offset`: K1 = (128 − 8·s_g) in every byte, as 0x80808080 − s_g·0x08080808.
pub fn group_offset(s_g: u32) -> u32 {
    0x8080_8080u32.wrapping_sub(s_g.wrapping_mul(0x0808_0808))
}

/// `w4a8_dequant_per_group`: both mma registers of one packed word, bytes s_g·q.
pub fn dequant_per_group(w: u32, s_g: u32, k1: u32) -> [u32; 2] {
    [
        ((w & 0x0F0F_0F0F).wrapping_mul(s_g).wrapping_add(k1)) ^ 0x8080_8080,
        (((w >> 4) & 0x0F0F_0F0F).wrapping_mul(s_g).wrapping_add(k1)) ^ 0x8080_8080,
    ]
}

fn byte(r: u32, i: usize) -> i8 {
    (r >> (8 * i)) as u8 as i8
}

/// One warp-wide `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`, per the PTX ISA fragment map:
/// `groupID = lane >> 2`, `threadID_in_group = lane % 4`;
/// A element a_i (i = 0..15, register i/4, byte i%4): row = groupID for 0 ≤ i < 4 or 8 ≤ i < 12,
/// groupID + 8 otherwise; col = threadID_in_group·4 + (i & 3), + 16 for i ≥ 8.
/// B element b_i (i = 0..7): row = threadID_in_group·4 + (i & 3), + 16 for i ≥ 4; col = groupID.
/// C/D element c_i (i = 0..3): row = groupID, + 8 for i ≥ 2; col = threadID_in_group·2 + (i & 1).
pub fn mma_m16n8k32(d: &mut [[i32; 4]; 32], a: &[[u32; 4]; 32], b: &[[u32; 2]; 32]) {
    let mut am = [[0i32; 32]; 16];
    let mut bm = [[0i32; 8]; 32];
    for lane in 0..32 {
        let (gid, tig) = (lane >> 2, lane % 4);
        for i in 0..16 {
            let row = if i < 4 || (8..12).contains(&i) { gid } else { gid + 8 };
            let col = tig * 4 + (i & 3) + if i >= 8 { 16 } else { 0 };
            am[row][col] = byte(a[lane][i / 4], i % 4) as i32;
        }
        for i in 0..8 {
            let row = tig * 4 + (i & 3) + if i >= 4 { 16 } else { 0 };
            bm[row][gid] = byte(b[lane][i / 4], i % 4) as i32;
        }
    }
    for (lane, dl) in d.iter_mut().enumerate() {
        let (gid, tig) = (lane >> 2, lane % 4);
        for (i, di) in dl.iter_mut().enumerate() {
            let row = gid + if i >= 2 { 8 } else { 0 };
            let col = tig * 2 + (i & 1);
            let dot: i32 = (0..32).map(|k| am[row][k] * bm[k][col]).fold(0i32, |s, v| s.wrapping_add(v));
            *di = di.wrapping_add(dot);
        }
    }
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: lane l supplies the address of row l % 8 of matrix
/// l / 8; register i of lane L gets the 4 bytes at offset 4·(L % 4) of row L / 4 of matrix i.
pub fn ldmatrix_x4(smem: &[u8], row_addr: &[usize; 32]) -> [[u32; 4]; 32] {
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        for (i, r) in regs.iter_mut().enumerate() {
            let base = row_addr[8 * i + lane / 4] + 4 * (lane % 4);
            *r = u32::from_le_bytes(smem[base..base + 4].try_into().unwrap());
        }
    }
    out
}

/// `f16(((f32(acc) · s_x) · s_ch) + bias)` with the kernel's operation order.
fn epilogue(acc: i32, s_x: f32, s_ch: f32, bias: Option<f32>) -> f16 {
    let y = (acc as f32 * s_x) * s_ch;
    f16::from_f32(match bias {
        Some(b) => y + b,
        None => y,
    })
}

/// Emulates one GEMM launch (+ the split-K epilogue when `splits > 1`) with configuration `cfg`.
pub fn emulate_gemm(x: &QuantizedActivations, w: &PackedWeights, cfg: GemmConfig, splits: usize) -> Vec<f16> {
    assert_eq!(x.k(), w.k);
    let (m, n) = (x.m(), w.n);
    let (kp, np) = (w.k_pad, w.n_pad);
    let kts = kp / BK;
    let xa = pad_activations(x.values(), m, x.k());
    let per_group = matches!(w.granularity, Granularity::PerGroup { .. });
    let gsz = w.granularity.group_size().unwrap_or(BK);
    let gps = if per_group { group_slots(gsz) } else { 1 };
    let (mt, wm_rows) = (cfg.wm() / 16, cfg.wm());
    let a_stage = cfg.bm * BK;
    let b_stage = cfg.warps_n * CHUNK_WORDS * 4;
    let mut y = vec![f16::from_bits(0x7E00); m * n]; // NaN poison: every element must be written
    let mut ws = vec![0i32; splits * m * np];
    let (bx_count, by_count) = cfg.grid_mn(m, np);
    let warps = cfg.warps_m * cfg.warps_n * cfg.warps_k;

    for by in 0..by_count {
        for bx in 0..bx_count {
            for z in 0..splits {
                let kt_begin = z * kts / splits;
                let kt_end = (z + 1) * kts / splits;
                let m0 = by * cfg.bm;
                let tile0 = bx * cfg.warps_n;
                // acc[warp][mi][ni][lane][e]
                let mut acc = vec![[[[[0i32; 4]; 32]; 4]; 8]; warps];
                for kt in kt_begin..kt_end {
                    // The stage copies of w4a8_load_stage, into a shared-memory image.
                    let mut sa = vec![0u8; a_stage];
                    for c in 0..a_stage / 16 {
                        let (r, ch) = (c >> 3, c & 7);
                        let row = m0 + r;
                        let dst = r * BK + ((ch ^ (r & 7)) << 4);
                        if row < m {
                            let src = row * kp + kt * BK + ch * 16;
                            for b in 0..16 {
                                sa[dst + b] = xa[src + b] as u8;
                            }
                        } // else: zero-filled
                    }
                    let mut sb = vec![0u8; b_stage];
                    for c in 0..b_stage / 16 {
                        let (wn, e) = (c >> 7, c & 127);
                        let src_word = ((tile0 + wn) * kts + kt) * CHUNK_WORDS + e * 4;
                        for q in 0..4 {
                            sb[c * 16 + 4 * q..c * 16 + 4 * q + 4]
                                .copy_from_slice(&w.words[src_word + q].to_le_bytes());
                        }
                    }
                    let mut ss = vec![0u8; cfg.warps_n * 4 * SCALE_SLOT_BYTES];
                    if per_group {
                        for c in 0..cfg.warps_n * gps * 2 {
                            let (wn, rem) = (c / (gps * 2), c % (gps * 2));
                            let src = ((tile0 + wn) * kts + kt) * gps * SCALE_SLOT_BYTES + rem * 16;
                            ss[c * 16..c * 16 + 16].copy_from_slice(&w.group_scales[src..src + 16]);
                        }
                    }
                    // Each warp's k32 steps.
                    for (warp, acc_w) in acc.iter_mut().enumerate() {
                        let wk = warp % cfg.warps_k;
                        let wn = (warp / cfg.warps_k) % cfg.warps_n;
                        let wmi = warp / (cfg.warps_k * cfg.warps_n);
                        for s in (wk..BK / KSTEP).step_by(cfg.warps_k) {
                            let mut b = [[[0u32; 2]; 32]; 4]; // [ni][lane]
                            for lane in 0..32 {
                                let off = wn * CHUNK_WORDS * 4 + (s * 32 + lane) * 16;
                                let words: [u32; 4] = std::array::from_fn(|q| {
                                    u32::from_le_bytes(sb[off + 4 * q..off + 4 * q + 4].try_into().unwrap())
                                });
                                let sw = if per_group {
                                    let slot = if gsz < BK { s * KSTEP / gsz } else { 0 };
                                    let o = (wn * gps + slot) * SCALE_SLOT_BYTES + (lane >> 2) * 4;
                                    u32::from_le_bytes(ss[o..o + 4].try_into().unwrap())
                                } else {
                                    0
                                };
                                for ni in 0..4 {
                                    b[ni][lane] = if per_group {
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
                                let a = ldmatrix_x4(&sa, &addrs);
                                for ni in 0..4 {
                                    mma_m16n8k32(&mut acc_mi[ni], &a, &b[ni]);
                                }
                            }
                        }
                    }
                }
                // Intra-block k reduction in the kernel's order (wk = 0 adds wk = 1, 2, 3).
                for warp in 0..warps {
                    let wk = warp % cfg.warps_k;
                    if wk != 0 {
                        continue;
                    }
                    for q in 1..cfg.warps_k {
                        let other = acc[warp + q];
                        for mi in 0..mt {
                            for ni in 0..4 {
                                for lane in 0..32 {
                                    for e in 0..4 {
                                        acc[warp][mi][ni][lane][e] =
                                            acc[warp][mi][ni][lane][e].wrapping_add(other[mi][ni][lane][e]);
                                    }
                                }
                            }
                        }
                    }
                    let wn = (warp / cfg.warps_k) % cfg.warps_n;
                    let wmi = warp / (cfg.warps_k * cfg.warps_n);
                    for mi in 0..mt {
                        for lane in 0..32 {
                            let (g, t) = (lane >> 2, lane & 3);
                            for h in 0..2 {
                                let row = m0 + wmi * wm_rows + mi * 16 + g + 8 * h;
                                if row >= m {
                                    continue;
                                }
                                for ni in 0..4 {
                                    let col = (tile0 + wn) * WARP_N + ni * 8 + 2 * t;
                                    for e in 0..2 {
                                        let raw = acc[warp][mi][ni][lane][2 * h + e];
                                        let v = if per_group { raw } else { raw >> 4 };
                                        let c = col + e;
                                        if splits > 1 {
                                            ws[(z * m + row) * np + c] = v;
                                        } else if c < n {
                                            y[row * n + c] = epilogue(
                                                v,
                                                x.scales()[row],
                                                w.channel_scales[c],
                                                w.bias.as_ref().map(|b| b[c]),
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if splits > 1 {
        for row in 0..m {
            for col in 0..n {
                let acc = (0..splits).fold(0i32, |a, z| a.wrapping_add(ws[(z * m + row) * np + col]));
                y[row * n + col] =
                    epilogue(acc, x.scales()[row], w.channel_scales[col], w.bias.as_ref().map(|b| b[col]));
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequant_decodes_every_nibble_and_scale() {
        for q in -8i32..=7 {
            let nib = (q as u32) & 0xF;
            // Per channel: 16·q in both registers.
            let [b0, b1] = dequant_per_channel(nib | (nib << 4));
            assert_eq!(byte(b0, 0) as i32, 16 * q);
            assert_eq!(byte(b1, 0) as i32, 16 * q);
            for s in 1u32..=16 {
                let u = nib ^ 8;
                let word = (u | (u << 4)) * 0x0101_0101;
                let [b0, b1] = dequant_per_group(word, s, group_offset(s));
                for i in 0..4 {
                    assert_eq!(byte(b0, i) as i32, q * s as i32, "q={q} s={s}");
                    assert_eq!(byte(b1, i) as i32, q * s as i32, "q={q} s={s}");
                }
            }
        }
    }

    #[test]
    fn mma_map_is_a_bijection_onto_the_tiles() {
        // Feed A = row index pattern and B = identity-like pattern; D must equal the true product.
        let mut a = [[0u32; 4]; 32];
        let mut b = [[0u32; 2]; 32];
        let av = |r: usize, k: usize| ((r * 7 + k * 3) % 11) as i32 - 5;
        let bv = |k: usize, c: usize| ((k * 5 + c * 13) % 9) as i32 - 4;
        for lane in 0..32 {
            let (g, t) = (lane >> 2, lane % 4);
            for r in 0..4 {
                let (row, kk) = (g + 8 * (r & 1), 4 * t + 16 * (r >> 1));
                a[lane][r] = u32::from_le_bytes(std::array::from_fn(|i| av(row, kk + i) as i8 as u8));
            }
            for r in 0..2 {
                b[lane][r] =
                    u32::from_le_bytes(std::array::from_fn(|i| bv(4 * t + 16 * r + i, g) as i8 as u8));
            }
        }
        let mut d = [[0i32; 4]; 32];
        mma_m16n8k32(&mut d, &a, &b);
        for lane in 0..32 {
            let (g, t) = (lane >> 2, lane % 4);
            for (i, &v) in d[lane].iter().enumerate() {
                let (row, col) = (g + 8 * (i >> 1), 2 * t + (i & 1));
                assert_eq!(v, (0..32).map(|k| av(row, k) * bv(k, col)).sum::<i32>());
            }
        }
    }
}
