//! The kernel's arithmetic, one warp-wide instruction at a time: the int4 → int8 dequantization
//! bit operations, `ldmatrix.x4` and `mma.m16n8k32` through the PTX ISA fragment maps (written out
//! independently from the specification's formulas), and the epilogue's operation order.

// Index loops on purpose: `lane`, `i` are the instruction's own register indices.
#![allow(clippy::needless_range_loop)]

use w4a8_core::f16;

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

pub(super) fn byte(r: u32, i: usize) -> i8 {
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
pub(super) fn epilogue(acc: i32, s_x: f32, s_ch: f32, bias: Option<f32>) -> f16 {
    let y = (acc as f32 * s_x) * s_ch;
    f16::from_f32(match bias {
        Some(b) => y + b,
        None => y,
    })
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
