//! Canonical int4 packing: eight two's-complement nibbles per u32, lowest nibble = lowest k.

use crate::error::{Error, Result};

/// Number of u32 words that hold one row of `k` nibbles.
pub fn words_per_row(k: usize) -> usize {
    k.div_ceil(8)
}

/// Packs N×K int4 values (each in [-8, 7]) into N × ⌈K/8⌉ words; padding nibbles are zero.
pub fn pack_int4(q: &[i8], n: usize, k: usize) -> Result<Vec<u32>> {
    if q.len() != n.saturating_mul(k) {
        return Err(Error::ShapeMismatch {
            what: "int4 weights (N·K)",
            expected: n.saturating_mul(k),
            got: q.len(),
        });
    }
    if let Some(index) = q.iter().position(|&v| !(-8..=7).contains(&v)) {
        return Err(Error::InvalidValue {
            what: "int4 weights",
            index,
            reason: format!("{} is outside [-8, 7]", q[index]),
        });
    }
    let wpr = words_per_row(k);
    let mut out = vec![0u32; n * wpr];
    for (row, words) in q.chunks(k.max(1)).zip(out.chunks_mut(wpr)) {
        for (i, &v) in row.iter().enumerate() {
            // `& 0xF` keeps the low four bits of the two's-complement byte: -1 → 0xF, -8 → 0x8.
            words[i / 8] |= ((v as u8 & 0xF) as u32) << (4 * (i % 8));
        }
    }
    Ok(out)
}

/// Unpacks one row of `k` nibbles.
pub fn unpack_int4_row(words: &[u32], k: usize) -> Vec<i8> {
    (0..k)
        .map(|i| {
            let nib = (words[i / 8] >> (4 * (i % 8))) & 0xF;
            // Shift the nibble into the top of a byte, then arithmetic-shift back to sign-extend.
            ((nib as u8) << 4) as i8 >> 4
        })
        .collect()
}

/// Unpacks N × ⌈K/8⌉ words into N×K int4 values.
pub fn unpack_int4(words: &[u32], n: usize, k: usize) -> Result<Vec<i8>> {
    let wpr = words_per_row(k);
    if words.len() != n * wpr {
        return Err(Error::ShapeMismatch {
            what: "qweight (N·⌈K/8⌉ words)",
            expected: n * wpr,
            got: words.len(),
        });
    }
    Ok(words.chunks(wpr.max(1)).take(n).flat_map(|w| unpack_int4_row(w, k)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibble_order_is_lowest_k_first() {
        let q = [1i8, -1, -8, 7, 0, 2, 3, 4, 5];
        let w = pack_int4(&q, 1, 9).unwrap();
        assert_eq!(w, vec![0x4320_78F1, 0x5]);
        assert_eq!(unpack_int4(&w, 1, 9).unwrap(), q);
    }

    #[test]
    fn out_of_range_nibble_is_rejected() {
        assert!(matches!(pack_int4(&[8], 1, 1), Err(Error::InvalidValue { index: 0, .. })));
        assert!(matches!(pack_int4(&[0, -9], 1, 2), Err(Error::InvalidValue { index: 1, .. })));
    }
}
