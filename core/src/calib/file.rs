//! Reading a layer's calibration inputs from the tensors of a calibration file.
//!
//! A calibration file is a safetensors file of float tensors (read with
//! [`crate::io::float_tensors_from_bytes`]): for the weight tensor `NAME.weight` (or any `NAME`),
//! the tensor `NAME.input` (or `NAME`) holds that layer's inputs as `[tokens, K]`. Everything in it
//! is untrusted: shapes, lengths and values are checked before any statistics are accumulated.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::io::FloatTensor;

use super::CalibStats;

/// The calibration tensor of the layer whose weight tensor is `weight_name`: `PREFIX.input`, else
/// `PREFIX`, where `PREFIX` is `weight_name` without its `.weight` suffix.
pub fn calibration_tensor<'a>(
    calib: &'a BTreeMap<String, FloatTensor>,
    weight_name: &str,
) -> Result<&'a FloatTensor> {
    let prefix = weight_name.strip_suffix(".weight").unwrap_or(weight_name);
    calib.get(&format!("{prefix}.input")).or_else(|| calib.get(prefix)).ok_or_else(|| Error::InvalidValue {
        what: "calibration file",
        index: 0,
        reason: format!("no calibration tensor {prefix}.input or {prefix}"),
    })
}

/// Statistics of the calibration inputs of one K-wide layer (see [`calibration_tensor`]).
///
/// Errors: no tensor for the layer ([`Error::InvalidValue`]), a tensor that is not 2-D or not K
/// wide ([`Error::ShapeMismatch`]), no tokens ([`Error::EmptyDimension`]), a NaN or infinity
/// ([`Error::NonFinite`]), a K outside the format ([`Error::KTooLarge`]), a Gram matrix the host
/// cannot hold ([`Error::OutOfMemory`]).
pub fn layer_calibration(
    calib: &BTreeMap<String, FloatTensor>,
    weight_name: &str,
    k: usize,
) -> Result<CalibStats> {
    let t = calibration_tensor(calib, weight_name)?;
    crate::format::check_len("calibration tensor rank (2: [tokens, K])", 2, t.shape.len())?;
    crate::format::check_len("calibration tensor columns (K)", k, t.shape[1])?;
    crate::format::check_nonzero("calibration tokens", t.shape[0])?;
    let mut stats = CalibStats::new(k)?;
    stats.update(&t.data, t.shape[0])?;
    Ok(stats)
}
