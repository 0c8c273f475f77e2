//! A reader of GGUF v2/v3 files (llama.cpp's model format): header, metadata, tensor infos, and
//! dequantization of F32, F16, Q4_0, Q4_1 and Q8_0 tensors to f32.
//!
//! ```text
//!   "GGUF" u32 version | u64 tensor_count | u64 kv_count
//!   kv_count × (string key, u32 value type, value)         string = u64 length + UTF-8 bytes
//!   tensor_count × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type, u64 offset)
//!   padding to `general.alignment` (default 32)
//!   tensor data; each tensor at data_start + offset
//! ```
//!
//! Little-endian only (big-endian GGUF files exist but none that we read). `ne[0]` is the innermost
//! (fastest-varying) dimension: a linear layer's `[K, N]` tensor is N rows of K, the row-major N×K
//! layout the quantizers take.
//!
//! Every offset and size is bounds-checked with checked arithmetic: a truncated or garbled file is a
//! [`GgufError`], never a panic or an allocation sized by an untrusted count.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;

/// What can be wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A version other than 2 or 3.
    #[error("unsupported GGUF version {0} (2 and 3 are read)")]
    UnsupportedVersion(u32),
    /// The file ends inside a field.
    #[error("truncated file: {what} needs {need} bytes at offset {offset}, file has {len}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Bytes it needs.
        need: u64,
        /// File length.
        len: u64,
    },
    /// A metadata value type id outside the specification.
    #[error("metadata key {key:?}: unknown value type {ty}")]
    BadValueType {
        /// The key.
        key: String,
        /// The type id read.
        ty: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("metadata key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    TooDeep {
        /// The key.
        key: String,
    },
    /// A string that is not UTF-8.
    #[error("{what} at offset {offset} is not UTF-8")]
    Utf8 {
        /// The field.
        what: &'static str,
        /// Where the string starts.
        offset: u64,
    },
    /// Two metadata entries or two tensors with one name.
    #[error("duplicate {what} {name:?}")]
    Duplicate {
        /// "metadata key" or "tensor".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A bad `general.alignment`.
    #[error("general.alignment {0} is not a power of two")]
    BadAlignment(u64),
    /// A tensor whose info is inconsistent (dimensions, type, offset or size).
    #[error("tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor type this reader does not dequantize.
    #[error("tensor {name:?}: ggml type {ty} is not supported (F32, F16, Q4_0, Q4_1, Q8_0 are)")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// The ggml type id.
        ty: u32,
    },
    /// A required metadata key is absent.
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    /// A metadata value of another type than expected.
    #[error("metadata key {key:?} is not {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The type wanted.
        expected: &'static str,
    },
    /// A required tensor is absent.
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    /// A tensor of another shape than the model needs.
    #[error("tensor {name:?} has dimensions {got:?}, expected {expected:?}")]
    WrongShape {
        /// The tensor.
        name: String,
        /// `ne` as stored (innermost first).
        got: Vec<u64>,
        /// `ne` expected.
        expected: Vec<u64>,
    },
}

/// Result of the GGUF reader.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Deepest nesting of metadata arrays accepted (GGUF files in the wild nest at most once; a bound
/// keeps a garbled file from recursing the stack away).
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Most tensor dimensions (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9: elements of one type.
    Array(Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// The ggml tensor types this reader knows the block layout of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 0: f32.
    F32,
    /// 1: f16.
    F16,
    /// 2: blocks of 32: f16 d, 16 bytes of nibbles; value d·(q − 8).
    Q4_0,
    /// 3: blocks of 32: f16 d, f16 m, 16 bytes of nibbles; value d·q + m.
    Q4_1,
    /// 8: blocks of 32: f16 d, 32 int8; value d·q.
    Q8_0,
}

impl GgmlType {
    /// The type of a ggml type id, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Its name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// `ne`: dimensions, innermost first.
    pub dims: Vec<u64>,
    /// The ggml type id as stored.
    pub type_id: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

/// A GGUF file read into memory, with its metadata parsed and every tensor's extent checked.
#[derive(Debug)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: u64,
}

/// A cursor over the file's bytes that turns every short read into [`GgufError::Truncated`].
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        let len = self.bytes.len() as u64;
        let truncated = || GgufError::Truncated { what, offset: self.pos as u64, need: n, len };
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= len).ok_or_else(truncated)?;
        let s = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        let n = self.u64(what)?;
        let offset = self.pos as u64;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::Utf8 { what, offset })
    }

    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<Value> {
        const W: &str = "metadata value";
        Ok(match ty {
            0 => Value::U8(self.array::<1>(W)?[0]),
            1 => Value::I8(self.array::<1>(W)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            4 => Value::U32(self.u32(W)?),
            5 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            7 => Value::Bool(self.array::<1>(W)?[0] != 0),
            8 => Value::String(self.string("metadata string")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::TooDeep { key: key.to_string() });
                }
                let elem = self.u32("array element type")?;
                let count = self.u64("array length")?;
                // Every element takes at least one byte: a count past the bytes left cannot be
                // satisfied, so the reservation is capped by them (the read then fails as truncated).
                let left = (self.bytes.len() - self.pos) as u64;
                let mut v = Vec::with_capacity(count.min(left) as usize);
                for _ in 0..count {
                    v.push(self.value(key, elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(W)?),
            11 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            ty => return Err(GgufError::BadValueType { key: key.to_string(), ty }),
        })
    }
}

impl Gguf {
    /// Reads and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Gguf> {
        let bytes = std::fs::read(path)
            .map_err(|source| GgufError::Io { path: path.display().to_string(), source })?;
        Gguf::from_bytes(bytes)
    }

    /// Parses a GGUF file held in memory: header, metadata and tensor infos; checks that every
    /// tensor's data lies inside the file.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        let mut r = Reader { bytes: &bytes, pos: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(&key, ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Duplicate { what: "metadata key", name: key });
            }
        }
        let left = (bytes.len() - r.pos) as u64;
        let mut tensors = Vec::with_capacity(tensor_count.min(left) as usize);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..tensor_count {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadTensor { name, reason: format!("{n_dims} dimensions (1..=4)") });
            }
            let dims = (0..n_dims).map(|_| r.u64("tensor dimension")).collect::<Result<Vec<_>>>()?;
            let type_id = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Duplicate { what: "tensor", name });
            }
            tensors.push(TensorInfo { name, dims, type_id, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                Some(a) => return Err(GgufError::BadAlignment(a)),
                None => {
                    return Err(GgufError::WrongType {
                        key: "general.alignment".into(),
                        expected: "an unsigned integer",
                    });
                }
            },
        };
        // Cannot overflow: pos ≤ file length and alignment ≤ 2^63.
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let gguf = Gguf { version, metadata, tensors, bytes, data_start };
        for t in &gguf.tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::BadTensor {
                    name: t.name.clone(),
                    reason: format!("offset {} is not a multiple of the alignment {alignment}", t.offset),
                });
            }
            // Unknown types are let through here (a file may carry tensors we never load); their
            // extent is checked when one is asked for.
            if GgmlType::from_id(t.type_id).is_some() {
                gguf.extent(t)?;
            }
        }
        Ok(gguf)
    }

    /// The tensor info of `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name).ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// (type, element count, byte range in the file) of a tensor, all checked.
    fn extent(&self, t: &TensorInfo) -> Result<(GgmlType, usize, std::ops::Range<usize>)> {
        let bad = |reason: String| GgufError::BadTensor { name: t.name.clone(), reason };
        let ty = GgmlType::from_id(t.type_id)
            .ok_or_else(|| GgufError::UnsupportedType { name: t.name.clone(), ty: t.type_id })?;
        let (block_elems, block_bytes) = ty.block();
        let elems = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("element count of {:?} overflows", t.dims)))?;
        if elems == 0 {
            return Err(bad(format!("dimensions {:?} hold no element", t.dims)));
        }
        // Blocks run along the innermost dimension, so each row holds whole blocks.
        if !t.dims[0].is_multiple_of(block_elems) {
            return Err(bad(format!(
                "row length {} is not a multiple of the block size {block_elems}",
                t.dims[0]
            )));
        }
        let size = (elems / block_elems)
            .checked_mul(block_bytes)
            .ok_or_else(|| bad("byte size overflows".into()))?;
        let start = self.data_start.checked_add(t.offset).ok_or_else(|| bad("offset overflows".into()))?;
        let end = start.checked_add(size).ok_or_else(|| bad("offset + size overflows".into()))?;
        if end > self.bytes.len() as u64 {
            return Err(GgufError::Truncated {
                what: "tensor data",
                offset: start,
                need: size,
                len: self.bytes.len() as u64,
            });
        }
        let elems = usize::try_from(elems).map_err(|_| bad("element count exceeds usize".into()))?;
        Ok((ty, elems, start as usize..end as usize))
    }

    /// Dequantizes a tensor to f32 (in storage order: `ne[0]` fastest) and returns it with its `ne`.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<f32>, Vec<u64>)> {
        let t = self.tensor_info(name)?;
        let (ty, elems, range) = self.extent(t)?;
        Ok((dequantize(ty, &self.bytes[range], elems), t.dims.clone()))
    }

    /// Dequantizes a tensor that must have exactly the dimensions `ne` (innermost first).
    pub fn dequantize_shaped(&self, name: &str, ne: &[u64]) -> Result<Vec<f32>> {
        let t = self.tensor_info(name)?;
        if t.dims != ne {
            return Err(GgufError::WrongShape {
                name: name.into(),
                got: t.dims.clone(),
                expected: ne.to_vec(),
            });
        }
        Ok(self.dequantize(name)?.0)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    /// An unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)?
            .as_u64()
            .ok_or_else(|| GgufError::WrongType { key: key.into(), expected: "an unsigned integer" })
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)?.as_f64().ok_or_else(|| GgufError::WrongType { key: key.into(), expected: "a number" })
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            _ => Err(GgufError::WrongType { key: key.into(), expected: "a string" }),
        }
    }

    /// An array metadata value.
    pub fn get_array(&self, key: &str) -> Result<&[Value]> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(GgufError::WrongType { key: key.into(), expected: "an array" }),
        }
    }

    /// An array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(GgufError::WrongType { key: key.into(), expected: "an array of strings" }),
            })
            .collect()
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `elems` values of type `ty` from `data` (exactly `elems / block · block_bytes` bytes).
fn dequantize(ty: GgmlType, data: &[u8], elems: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(elems);
    match ty {
        GgmlType::F32 => {
            out.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))))
        }
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                // Low nibbles are elements 0–15, high nibbles 16–31; stored offset by 8.
                out.extend(qs.iter().map(|q| d * ((q & 0x0F) as i32 - 8) as f32));
                out.extend(qs.iter().map(|q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
    }
    debug_assert_eq!(out.len(), elems);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_layout_low_nibbles_first() {
        // d = 0.5, m = -1: element j (j < 16) is the low nibble of byte j, element 16 + j the high one.
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let v = dequantize(GgmlType::Q4_1, &b, 32);
        for j in 0..16 {
            assert_eq!(v[j], 0.5 * j as f32 - 1.0);
            assert_eq!(v[16 + j], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_and_q4_0_blocks() {
        let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b, 32);
        assert!(v.iter().enumerate().all(|(j, &x)| x == 0.25 * (j as f32 - 16.0)));
        let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend([0x80u8; 16]);
        let v = dequantize(GgmlType::Q4_0, &b, 32);
        assert!(v[..16].iter().all(|&x| x == -16.0) && v[16..].iter().all(|&x| x == 0.0));
    }
}
