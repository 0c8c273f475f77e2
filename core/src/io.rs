//! Weight files: the canonical W4A8 format as safetensors with a versioned metadata header, and
//! reading float (f32/f16/bf16) linear weights for quantization.
//!
//! Layout of a W4A8 file, per layer `NAME`:
//! - tensors `NAME.qweight` U32 `[N, ⌈K/8⌉]`, `NAME.channel_scales` F32 `[N]`,
//!   `NAME.group_scales` U8 `[K/g, N]` (per group only), `NAME.bias` F32 `[N]` (optional),
//!   `NAME.smooth` F32 `[K]` (optional: the activation multiplier of a smoothed layer, applied by
//!   [`crate::Gemm::quantize_activations`] before quantizing);
//! - metadata `format = "w4a8"`, `version = "1"`, `NAME.k = K`, `NAME.granularity =
//!   "per-channel" | "g32" | "g64" | "g128" | "g256"`, and `NAME.hadamard_block = B` for a layer
//!   whose input is rotated online ([`crate::transform`]; the weights hold `W · H / B`). A file with
//!   a rotated layer is written as version 2 ([`ROTATED_FORMAT_VERSION`]), so that a reader that
//!   predates rotation refuses it instead of computing without the rotation; files without one stay
//!   version 1, readable by every release. Both versions are read.
//!
//! Loading validates every invariant of [`W4A8Weights`]; a malformed or truncated file is an
//! [`Error::Format`], never a panic. Every byte of a file is untrusted: the readers allocate in
//! proportion to the bytes actually present, whatever the header claims, and are fuzzed
//! (`fuzz/fuzz_targets`). Paths are read with [`read_file`] (regular files only, no unbounded
//! reads) and written with [`write_file_atomically`] (a crash never leaves a half-written file).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::{Error, Result};
use crate::format::{Granularity, W4A8Weights};

/// The `format` metadata value of a W4A8 file.
pub const FORMAT_NAME: &str = "w4a8";
/// The `version` this library writes for files without a rotated layer (and reads).
pub const FORMAT_VERSION: u32 = 1;
/// The `version` of a file with at least one rotated layer (`NAME.hadamard_block`); read as well.
pub const ROTATED_FORMAT_VERSION: u32 = 2;

fn fmt_err(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

fn st_err(e: safetensors::SafeTensorError) -> Error {
    Error::Format(format!("not a valid safetensors file: {e}"))
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.display().to_string(), source }
}

fn le_bytes<const N: usize, T>(values: &[T], to: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(to).collect()
}

/// One quantized linear layer as stored: its weights, the smoothing multiplier its activations
/// need (`x[:, k] · smooth[k]` before quantization) when it was calibrated with smoothing, and the
/// block of the online Walsh–Hadamard rotation when its input is rotated.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// The quantized weights (and bias).
    pub weights: W4A8Weights,
    /// Length K, finite and positive; `None` for an unsmoothed layer.
    pub smooth: Option<Vec<f32>>,
    /// The Hadamard block b of a rotated layer (a power of two dividing K, at most
    /// [`crate::MAX_HADAMARD_BLOCK`]); `None` for an unrotated one.
    pub hadamard_block: Option<usize>,
}

impl From<W4A8Weights> for Layer {
    fn from(weights: W4A8Weights) -> Self {
        Layer { weights, smooth: None, hadamard_block: None }
    }
}

impl Layer {
    /// A layer with a smoothing multiplier, checked: length K, every value finite and positive.
    pub fn new(weights: W4A8Weights, smooth: Option<Vec<f32>>) -> Result<Self> {
        if let Some(s) = &smooth {
            crate::format::check_len("smoothing vector (K)", weights.k(), s.len())?;
            crate::format::check_finite("smoothing vector", s)?;
            if let Some(index) = s.iter().position(|&v| v <= 0.0) {
                return Err(Error::InvalidValue {
                    what: "smoothing vector",
                    index,
                    reason: format!("{} is not positive", s[index]),
                });
            }
        }
        Ok(Layer { weights, smooth, hadamard_block: None })
    }

    /// The same layer with its input rotated by blocks of `b` (or not, for `None`), checked
    /// ([`crate::transform::check_hadamard_block`]).
    pub fn with_hadamard_block(self, hadamard_block: Option<usize>) -> Result<Self> {
        if let Some(b) = hadamard_block {
            crate::transform::check_hadamard_block(b, self.weights.k())?;
        }
        Ok(Layer { hadamard_block, ..self })
    }

    /// What the activation quantizer must apply to this layer's input:
    /// `Gemm::quantize_activations_with(x, m, k, &layer.transform())`.
    pub fn transform(&self) -> crate::transform::ActivationTransform<'_> {
        crate::transform::ActivationTransform {
            smooth: self.smooth.as_deref(),
            hadamard_block: self.hadamard_block,
        }
    }
}

/// Serializes named layers into a W4A8 safetensors file image.
pub fn layers_to_bytes(layers: &BTreeMap<String, Layer>) -> Result<Vec<u8>> {
    let rotated = layers.values().any(|l| l.hadamard_block.is_some());
    let version = if rotated { ROTATED_FORMAT_VERSION } else { FORMAT_VERSION };
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT_NAME.to_string()),
        ("version".to_string(), version.to_string()),
    ]);
    let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, Layer { weights: w, smooth, hadamard_block }) in layers {
        let (n, k) = (w.n(), w.k());
        meta.insert(format!("{name}.k"), k.to_string());
        meta.insert(format!("{name}.granularity"), w.granularity().to_string());
        if let Some(b) = hadamard_block {
            meta.insert(format!("{name}.hadamard_block"), b.to_string());
        }
        blobs.push((
            format!("{name}.qweight"),
            Dtype::U32,
            vec![n, k.div_ceil(8)],
            le_bytes(w.qweight(), |v| v.to_le_bytes()),
        ));
        blobs.push((
            format!("{name}.channel_scales"),
            Dtype::F32,
            vec![n],
            le_bytes(w.channel_scales(), |v| v.to_le_bytes()),
        ));
        if let Some(g) = w.granularity().group_size() {
            blobs.push((
                format!("{name}.group_scales"),
                Dtype::U8,
                vec![k / g, n],
                w.group_scales().to_vec(),
            ));
        }
        if let Some(b) = w.bias() {
            blobs.push((format!("{name}.bias"), Dtype::F32, vec![n], le_bytes(b, |v| v.to_le_bytes())));
        }
        if let Some(s) = smooth {
            blobs.push((format!("{name}.smooth"), Dtype::F32, vec![k], le_bytes(s, |v| v.to_le_bytes())));
        }
    }
    let views = blobs
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((name.clone(), TensorView::new(*dtype, shape.clone(), data).map_err(st_err)?))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta)).map_err(st_err)
}

fn parse_granularity(s: &str) -> Option<Granularity> {
    match s {
        "per-channel" => Some(Granularity::PerChannel),
        _ => s.strip_prefix('g')?.parse().ok().map(|group_size| Granularity::PerGroup { group_size }),
    }
}

fn tensor<'a>(st: &SafeTensors<'a>, name: &str, dtype: Dtype, shape: &[usize]) -> Result<TensorView<'a>> {
    let t = st.tensor(name).map_err(|_| fmt_err(format!("missing tensor {name}")))?;
    if t.dtype() != dtype {
        return Err(fmt_err(format!("{name} has dtype {:?}, expected {dtype:?}", t.dtype())));
    }
    if t.shape() != shape {
        return Err(fmt_err(format!("{name} has shape {:?}, expected {shape:?}", t.shape())));
    }
    Ok(t)
}

fn u32s(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Parses a W4A8 safetensors file image into named layers, validating everything.
pub fn layers_from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Layer>> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format").map(String::as_str) {
        Some(FORMAT_NAME) => {}
        other => return Err(fmt_err(format!("metadata format is {other:?}, expected \"{FORMAT_NAME}\""))),
    }
    let version = meta.get("version").map(String::as_str).unwrap_or("none");
    if version != FORMAT_VERSION.to_string() && version != ROTATED_FORMAT_VERSION.to_string() {
        return Err(fmt_err(format!(
            "unsupported version {version}; this library reads versions {FORMAT_VERSION} and \
             {ROTATED_FORMAT_VERSION}"
        )));
    }
    let mut layers = BTreeMap::new();
    for name in st.names() {
        let Some(layer) = name.strip_suffix(".qweight") else { continue };
        let get = |key: &str| {
            meta.get(&format!("{layer}.{key}"))
                .ok_or_else(|| fmt_err(format!("missing metadata {layer}.{key}")))
        };
        let k: usize =
            get("k")?.parse().map_err(|_| fmt_err(format!("metadata {layer}.k is not an integer")))?;
        let gran_s = get("granularity")?;
        let granularity = parse_granularity(gran_s)
            .ok_or_else(|| fmt_err(format!("metadata {layer}.granularity = {gran_s:?} is not understood")))?;
        let qt = st.tensor(name).map_err(st_err)?;
        let n = *qt.shape().first().ok_or_else(|| fmt_err(format!("{name} is a scalar")))?;
        let qweight = u32s(tensor(&st, name, Dtype::U32, &[n, k.div_ceil(8)])?.data());
        let channel_scales = f32s(tensor(&st, &format!("{layer}.channel_scales"), Dtype::F32, &[n])?.data());
        let group_scales = match granularity.group_size() {
            Some(g) => {
                granularity.validate(k)?;
                tensor(&st, &format!("{layer}.group_scales"), Dtype::U8, &[k / g, n])?.data().to_vec()
            }
            None => Vec::new(),
        };
        let bias_name = format!("{layer}.bias");
        let bias = match st.tensor(&bias_name) {
            Ok(_) => Some(f32s(tensor(&st, &bias_name, Dtype::F32, &[n])?.data())),
            Err(_) => None,
        };
        let smooth_name = format!("{layer}.smooth");
        let smooth = match st.tensor(&smooth_name) {
            Ok(_) => Some(f32s(tensor(&st, &smooth_name, Dtype::F32, &[k])?.data())),
            Err(_) => None,
        };
        let hadamard_block = match meta.get(&format!("{layer}.hadamard_block")) {
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                fmt_err(format!("metadata {layer}.hadamard_block = {v:?} is not an integer"))
            })?),
            None => None,
        };
        let w = W4A8Weights::new(n, k, granularity, qweight, channel_scales, group_scales, bias)
            .and_then(|w| Layer::new(w, smooth))
            .and_then(|l| l.with_hadamard_block(hadamard_block))
            .map_err(|e| fmt_err(format!("layer {layer}: {e}")))?;
        layers.insert(layer.to_string(), w);
    }
    Ok(layers)
}

/// Writes named layers to a W4A8 safetensors file, atomically (see [`write_file_atomically`]): a
/// crash or a failed write leaves either the previous file or the complete new one, never a
/// truncated file.
pub fn save_layers(path: impl AsRef<Path>, layers: &BTreeMap<String, Layer>) -> Result<()> {
    write_file_atomically(path.as_ref(), &layers_to_bytes(layers)?)
}

/// Reads a W4A8 safetensors file.
pub fn load_layers(path: impl AsRef<Path>) -> Result<BTreeMap<String, Layer>> {
    layers_from_bytes(&read_file(path.as_ref())?)
}

/// Replaces `path` with `bytes` so that no reader, and no crash, ever sees a partial file.
///
/// The bytes go to a temporary file in the same folder (`.NAME.PID.N.tmp`, same filesystem, so the
/// rename is atomic), which is flushed to disk and then renamed over `path`. On an error the
/// temporary file is removed and `path` is untouched. A process killed mid-write leaves its
/// temporary file behind, never a half-written `path`.
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| {
        io_err(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))
    })?;
    // Unique per process and per call, so concurrent writers of one path never share a file.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "wasm32"))]
    let pid = std::process::id();
    #[cfg(target_arch = "wasm32")]
    let pid = 0; // no processes there (`process::id` would panic); the call counter suffices
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{pid}.{call}.tmp"));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    // Make the rename itself durable where the platform allows syncing a directory.
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Reads a whole regular file, refusing what cannot be held instead of aborting: a path that is
/// not a regular file (a device such as `/dev/zero` would never end) is an [`Error::Io`], and a
/// file larger than the allocator can provide is [`Error::OutOfMemory`] before anything is read.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    let len = meta.len();
    let mut bytes = Vec::new();
    usize::try_from(len).ok().and_then(|n| bytes.try_reserve_exact(n).ok()).ok_or_else(|| {
        Error::OutOfMemory {
            backend: None,
            what: "file contents",
            requested: len,
            reason: format!("reading {}", path.display()),
        }
    })?;
    // `take`: a file that grows while it is read cannot make this allocate past its length.
    file.take(len).read_to_end(&mut bytes).map_err(|e| io_err(path, e))?;
    Ok(bytes)
}

/// A float tensor read from a model file, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatTensor {
    /// Its shape as stored.
    pub shape: Vec<usize>,
    /// Its values, row-major, as f32.
    pub data: Vec<f32>,
}

/// Reads every F32, F16 and BF16 tensor of a safetensors file image (other dtypes are skipped).
pub fn float_tensors_from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, FloatTensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let d = t.data();
        let data = match t.dtype() {
            Dtype::F32 => f32s(d),
            Dtype::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => continue,
        };
        out.insert(name, FloatTensor { shape: t.shape().to_vec(), data });
    }
    Ok(out)
}

/// Reads the float tensors of a safetensors file ([`float_tensors_from_bytes`]).
pub fn load_float_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, FloatTensor>> {
    float_tensors_from_bytes(&read_file(path.as_ref())?)
}

/// Writes f32 tensors as a safetensors file image (for calibration data and tests).
pub fn float_tensors_to_bytes(tensors: &BTreeMap<String, FloatTensor>) -> Result<Vec<u8>> {
    let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.shape.clone(), le_bytes(&t.data, |v| v.to_le_bytes())))
        .collect();
    let views = blobs
        .iter()
        .map(|(name, shape, data)| {
            Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).map_err(st_err)?))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(st_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(k: usize) -> W4A8Weights {
        let q: Vec<i8> = (0..2 * k).map(|i| (i % 16) as i8 - 8).collect();
        W4A8Weights::from_int4(2, k, Granularity::PerChannel, &q, vec![0.5, 0.25], vec![], None).unwrap()
    }

    fn version_of(bytes: &[u8]) -> String {
        let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
        header.metadata().as_ref().unwrap()["version"].clone()
    }

    #[test]
    fn a_rotated_layer_round_trips_as_version_2_and_plain_files_stay_version_1() {
        let plain = BTreeMap::from([("a".to_string(), Layer::from(sample(64)))]);
        let bytes = layers_to_bytes(&plain).unwrap();
        assert_eq!(version_of(&bytes), "1");
        assert_eq!(layers_from_bytes(&bytes).unwrap()["a"].hadamard_block, None);

        let rotated =
            Layer::new(sample(64), Some(vec![2.0; 64])).unwrap().with_hadamard_block(Some(32)).unwrap();
        let layers = BTreeMap::from([("a".to_string(), Layer::from(sample(64))), ("b".to_string(), rotated)]);
        let bytes = layers_to_bytes(&layers).unwrap();
        assert_eq!(version_of(&bytes), "2");
        let back = layers_from_bytes(&bytes).unwrap();
        assert_eq!(back, layers);
        assert_eq!(back["b"].transform().hadamard_block, Some(32));
        assert_eq!(back["b"].transform().smooth, Some(&[2.0f32; 64][..]));
    }

    #[test]
    fn a_bad_block_in_a_file_is_a_format_error() {
        assert!(Layer::from(sample(64)).with_hadamard_block(Some(48)).is_err());
        let good = Layer::from(sample(64)).with_hadamard_block(Some(16)).unwrap();
        let bytes = layers_to_bytes(&BTreeMap::from([("a".to_string(), good)])).unwrap();
        let key = b"\"a.hadamard_block\":\"16\"";
        let pos = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() - 4;
        for to in ["\"48\"", "\"x6\""] {
            let mut b = bytes.clone();
            b[pos..pos + to.len()].copy_from_slice(to.as_bytes());
            let e = layers_from_bytes(&b).unwrap_err();
            assert!(
                matches!(&e, Error::Format(m) if m.contains("layer a") || m.contains("hadamard_block")),
                "{e}"
            );
        }
    }
}
