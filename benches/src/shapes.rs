//! The shapes the report times: LLaMA-2 layer shapes from DESIGN.md, and tiny ones for `--quick`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A weight shape N×K (out_features × in_features), named after the layer it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Output features.
    pub n: usize,
    /// Input features (the reduction dimension).
    pub k: usize,
    /// Where the shape comes from, e.g. "7B qkv".
    pub layer: String,
}

impl Shape {
    /// A shape with a layer label.
    pub fn new(n: usize, k: usize, layer: &str) -> Self {
        Shape { n, k, layer: layer.to_string() }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}×{}", self.n, self.k)
    }
}

impl FromStr for Shape {
    type Err = String;
    /// Parses `NxK` (or `N×K`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, k) = s.split_once(['x', 'X', '×']).ok_or_else(|| format!("shape `{s}` is not NxK"))?;
        let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("shape `{s}`: {e}"));
        let (n, k) = (parse(n)?, parse(k)?);
        if n == 0 || k == 0 {
            return Err(format!("shape `{s}` has a zero dimension"));
        }
        let layer =
            llama_shapes().into_iter().find(|l| l.n == n && l.k == k).map_or("custom".into(), |l| l.layer);
        Ok(Shape { n, k, layer })
    }
}

/// LLaMA-2-7B and -70B linear-layer shapes (N×K), as listed in DESIGN.md.
pub fn llama_shapes() -> Vec<Shape> {
    vec![
        Shape::new(4096, 4096, "7B attn out"),
        Shape::new(12288, 4096, "7B qkv"),
        Shape::new(22016, 4096, "7B gate+up"),
        Shape::new(4096, 11008, "7B down"),
        Shape::new(8192, 8192, "70B attn out"),
        Shape::new(10240, 8192, "70B qkv (GQA)"),
        Shape::new(57344, 8192, "70B gate+up"),
        Shape::new(8192, 28672, "70B down"),
    ]
}

/// Token counts M timed at every shape: decode (1–64), small and large prefill batches.
pub const M_VALUES: [usize; 8] = [1, 16, 32, 64, 128, 256, 1024, 4096];

/// `--quick` shapes: tiny (the CPU oracle runs them in debug builds in seconds), K a multiple of 128 so
/// that g128 applies, N not a multiple of 64 to exercise tile tails.
pub fn quick_shapes() -> Vec<Shape> {
    vec![
        Shape::new(256, 256, "tiny square"),
        Shape::new(200, 384, "tiny, N tail"),
        Shape::new(72, 128, "tiny, one group"),
    ]
}

/// `--quick` token counts: decode, an odd small batch, and one past 32 (tiled kernels, row tails).
pub const QUICK_M_VALUES: [usize; 3] = [1, 5, 33];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shapes_and_labels_known_ones() {
        let s: Shape = "12288x4096".parse().unwrap();
        assert_eq!((s.n, s.k, s.layer.as_str()), (12288, 4096, "7B qkv"));
        assert_eq!("7×3".parse::<Shape>().unwrap().layer, "custom");
        assert!("7x0".parse::<Shape>().is_err());
        assert!("7".parse::<Shape>().is_err());
    }

    #[test]
    fn design_shapes_fit_the_format() {
        for s in llama_shapes().into_iter().chain(quick_shapes()) {
            assert_eq!(s.k % 128, 0, "{s}: g128 needs K % 128 == 0");
            assert!(s.k <= w4a8_core::MAX_K);
        }
    }
}
