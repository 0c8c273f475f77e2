//! A tiny deterministic generator for test, demo and benchmark data (not for cryptography).

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit state advanced by the golden-ratio increment and a
/// two-multiply finalizer. Seedable, seekable per stream, and statistically sound for test data.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A generator for `(seed, stream)`: distinct streams give unrelated sequences, so data generated
    /// in parallel chunks does not depend on the number of threads.
    pub fn with_stream(seed: u64, stream: u64) -> Self {
        // 0xD1B5_4A32_D192_ED03 is an odd 64-bit mixing multiplier; one output decorrelates neighbours.
        let mut s = SplitMix64(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        s.next_u64();
        s
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        // 0x9E37_79B9_7F4A_7C15 = 2⁶⁴ / φ, the SplitMix increment.
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        // The MurmurHash3-style finalizer constants of SplitMix64.
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 24 bits scaled by 2⁻²⁴, exact in f32.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as u64;
        // Lemire's multiply-shift: the high 64 bits of a 128-bit product; bias < span / 2⁶⁴.
        lo + ((self.next_u64() as u128 * span as u128) >> 64) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f32) -> bool {
        self.unit() < p
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    #[test]
    fn ranges_hold_and_streams_differ() {
        let mut r = SplitMix64::new(1);
        for _ in 0..10_000 {
            let i = r.int(-8, 7);
            assert!((-8..=7).contains(&i));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_ne!(SplitMix64::with_stream(5, 0).next_u64(), SplitMix64::with_stream(5, 1).next_u64());
        let mean: f32 = (0..20_000).map(|_| r.normal()).sum::<f32>() / 20_000.0;
        assert!(mean.abs() < 0.05, "normal mean {mean}");
    }
}
