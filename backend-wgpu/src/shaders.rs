//! The WGSL sources and the one table of their entry points.
//!
//! A shader module is one or more files from `shaders/` joined in order; the first file starts with
//! the `requires packed_4x8_integer_dot_product;` directive and `common.wgsl` (functions only) comes
//! last (then `softfloat.wgsl`, `epilogue_exact.wgsl` and `quantize_exact.wgsl`), since WGSL declarations may be used before they appear.

/// The helpers every module appends (f16 ⇄ f32 bit conversions, int4 unpacking).
const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// Exactly rounded f32 arithmetic in integer operations, appended to every module after `common.wgsl`.
const SOFTFLOAT: &str = include_str!("../../shaders/softfloat.wgsl");

/// The exact W4A8 output value (`epilogue_f16_bits`), appended after it.
const EPILOGUE_EXACT: &str = include_str!("../../shaders/epilogue_exact.wgsl");

/// The exact activation quantization, element by element, appended last.
const QUANTIZE_EXACT: &str = include_str!("../../shaders/quantize_exact.wgsl");

/// One shader module: its parts and the entry points the backend looks up in it.
#[derive(Clone, Copy, Debug)]
pub struct ShaderModuleSpec {
    /// A label for wgpu and for messages.
    pub name: &'static str,
    /// The source files, concatenated in this order (before `common.wgsl`).
    pub parts: &'static [&'static str],
    /// Needs `wgpu::Features::SUBGROUP` (uses subgroup builtins).
    pub needs_subgroups: bool,
    /// The `@compute` entry points the backend uses.
    pub entry_points: &'static [&'static str],
}

impl ShaderModuleSpec {
    /// The complete WGSL source of the module.
    pub fn source(&self) -> String {
        let mut s = String::new();
        for part in self.parts {
            s.push_str(part);
            s.push('\n');
        }
        for part in [COMMON, SOFTFLOAT, EPILOGUE_EXACT, QUANTIZE_EXACT] {
            s.push_str(part);
            s.push('\n');
        }
        s
    }
}

/// Per-token activation quantization, row maximum through workgroup memory.
pub const QUANTIZE_SHARED: ShaderModuleSpec = ShaderModuleSpec {
    name: "quantize_activations",
    parts: &[
        include_str!("../../shaders/quantize_activations.wgsl"),
        include_str!("../../shaders/quantize_reduce_shared.wgsl"),
    ],
    needs_subgroups: false,
    entry_points: &[entry::QUANTIZE],
};

/// Per-token activation quantization, row maximum with `subgroupMax`.
pub const QUANTIZE_SUBGROUP: ShaderModuleSpec = ShaderModuleSpec {
    name: "quantize_activations_subgroup",
    parts: &[
        include_str!("../../shaders/quantize_activations.wgsl"),
        include_str!("../../shaders/quantize_reduce_subgroup.wgsl"),
    ],
    needs_subgroups: true,
    entry_points: &[entry::QUANTIZE_SUBGROUP],
};

/// Per-token quantization with the online Walsh–Hadamard rotation fused in; its workgroup array
/// (`HCHUNK` channels of f32) is sized by an override, one pipeline per [`HADAMARD_CHUNKS`] value.
pub const QUANTIZE_HADAMARD: ShaderModuleSpec = ShaderModuleSpec {
    name: "quantize_hadamard",
    parts: &[
        include_str!("../../shaders/quantize_activations.wgsl"),
        include_str!("../../shaders/quantize_hadamard.wgsl"),
    ],
    needs_subgroups: false,
    entry_points: &[entry::QUANTIZE_HADAMARD],
};

/// The rotated quantizer's chunk sizes (its `HCHUNK` override), largest first: it rotates `HCHUNK`
/// channels at a time in workgroup memory, so a chunk is also the largest block it takes. 4096
/// needs 16 KiB (WebGPU's default limit), 2048 needs 8 KiB (the least the backend accepts); the
/// backend takes the largest that fits the device and refuses a larger block.
pub const HADAMARD_CHUNKS: [u32; 2] = [4096, 2048];

/// Workgroup memory of the rotated quantizer at chunk `chunk`: one f32 (as u32 bits) per channel.
pub const fn hadamard_workgroup_bytes(chunk: u32) -> u64 {
    chunk as u64 * 4
}

/// The decode GEMM (M ≤ 16): one dispatch, K reduced inside the workgroup, epilogue fused.
pub const GEMM_DECODE: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_gemm_decode",
    parts: &[include_str!("../../shaders/w4a8_gemm_decode.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::GEMM_DECODE],
};

/// The tiled prefill GEMM with the fused epilogue, 128×128 tiles (needs 32 KiB of workgroup memory).
pub const GEMM_TILED_128: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_gemm_tiled_128",
    parts: &[
        include_str!("../../shaders/w4a8_gemm_tiled_128.wgsl"),
        include_str!("../../shaders/w4a8_gemm_tiled.wgsl"),
    ],
    needs_subgroups: false,
    entry_points: &[entry::GEMM_TILED_128],
};

/// The tiled prefill GEMM, 64×64 tiles (16 KiB of workgroup memory, WebGPU's default limit).
pub const GEMM_TILED_64: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_gemm_tiled_64",
    parts: &[
        include_str!("../../shaders/w4a8_gemm_tiled_64.wgsl"),
        include_str!("../../shaders/w4a8_gemm_tiled.wgsl"),
    ],
    needs_subgroups: false,
    entry_points: &[entry::GEMM_TILED_64],
};

/// The f16 GEMM baseline, 128×128 tiles (32 KiB of workgroup memory).
pub const F16_GEMM_128: ShaderModuleSpec = ShaderModuleSpec {
    name: "f16_gemm_128",
    parts: &[include_str!("../../shaders/f16_gemm_128.wgsl"), include_str!("../../shaders/f16_gemm.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::F16_GEMM_128],
};

/// The f16 GEMM baseline, 64×64 tiles (16 KiB of workgroup memory).
pub const F16_GEMM_64: ShaderModuleSpec = ShaderModuleSpec {
    name: "f16_gemm_64",
    parts: &[include_str!("../../shaders/f16_gemm_64.wgsl"), include_str!("../../shaders/f16_gemm.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::F16_GEMM_64],
};

/// One size of the two tiled GEMMs (`w4a8_gemm_tiled.wgsl` and `f16_gemm.wgsl`, which share their
/// tiling): a workgroup of `(tile/8)²` invocations computes a `tile × tile` block of the output,
/// 8 × 8 outputs per invocation, from operands staged in double-buffered k-major vec4 tiles.
#[derive(Clone, Copy, Debug)]
pub struct TiledVariant {
    /// Rows and columns of one workgroup's output tile (`8 · TG` in the shaders).
    pub tile: usize,
    /// The W4A8 GEMM of this size.
    pub w4a8: ShaderModuleSpec,
    /// The f16 baseline of this size.
    pub f16: ShaderModuleSpec,
}

impl TiledVariant {
    /// Invocations per workgroup (`TG · TG`).
    pub const fn invocations(&self) -> usize {
        (self.tile / 8) * (self.tile / 8)
    }

    /// Workgroup memory of either kernel: two buffers × two operands × 4 k-slices × `tile` slots
    /// of one 16-byte vec4 (`xs`/`ws` int8×16 per 64-k step, `fxs`/`fws` f32×4 per 16-k step).
    pub const fn workgroup_bytes(&self) -> u64 {
        (2 * 2 * TILED_K_SLICES * self.tile * 16) as u64
    }
}

/// k-slices (vec4 of k) per staged step of the tiled GEMMs (`KQ`): 64 k of int8, 16 k of f32.
pub const TILED_K_SLICES: usize = 4;

/// K per barrier of the tiled W4A8 GEMM (`KQ` slices of 16 int8).
pub const TILED_W4A8_STEP_K: usize = TILED_K_SLICES * 16;

/// K per barrier of the f16 baseline (`KQ` slices of 4 f32).
pub const TILED_F16_STEP_K: usize = TILED_K_SLICES * 4;

/// The tiled sizes, largest first; the backend takes the first whose workgroup memory fits.
pub const TILED_VARIANTS: [TiledVariant; 2] = [
    TiledVariant { tile: 128, w4a8: GEMM_TILED_128, f16: F16_GEMM_128 },
    TiledVariant { tile: 64, w4a8: GEMM_TILED_64, f16: F16_GEMM_64 },
];

/// Test-only (not in [`MODULES`], never compiled by the backend): the exact-arithmetic functions
/// applied to a list of cases, so the tests can compare them with the CPU's.
#[doc(hidden)]
pub const EXACT_CHECK: ShaderModuleSpec = ShaderModuleSpec {
    name: "exact_check",
    parts: &[include_str!("../../shaders/exact_check.wgsl")],
    needs_subgroups: false,
    entry_points: &["exact_check"],
};

/// Every module, in the order the backend compiles them.
pub const MODULES: [ShaderModuleSpec; 8] = [
    QUANTIZE_SHARED,
    QUANTIZE_SUBGROUP,
    QUANTIZE_HADAMARD,
    GEMM_DECODE,
    GEMM_TILED_128,
    GEMM_TILED_64,
    F16_GEMM_128,
    F16_GEMM_64,
];

/// Entry-point names, spelled once.
pub mod entry {
    /// `quantize_reduce_shared.wgsl`.
    pub const QUANTIZE: &str = "quantize_activations";
    /// `quantize_reduce_subgroup.wgsl`.
    pub const QUANTIZE_SUBGROUP: &str = "quantize_activations_subgroup";
    /// `quantize_hadamard.wgsl`.
    pub const QUANTIZE_HADAMARD: &str = "quantize_activations_hadamard";
    /// `w4a8_gemm_decode.wgsl`.
    pub const GEMM_DECODE: &str = "w4a8_gemm_decode";
    /// `w4a8_gemm_tiled_128.wgsl`.
    pub const GEMM_TILED_128: &str = "w4a8_gemm_tiled_128";
    /// `w4a8_gemm_tiled_64.wgsl`.
    pub const GEMM_TILED_64: &str = "w4a8_gemm_tiled_64";
    /// `f16_gemm_128.wgsl`.
    pub const F16_GEMM_128: &str = "f16_gemm_tiled_128";
    /// `f16_gemm_64.wgsl`.
    pub const F16_GEMM_64: &str = "f16_gemm_tiled_64";
}

/// The row counts the decode kernel is specialised for (its `TM` override); the backend picks the
/// smallest one ≥ M.
pub const DECODE_ROW_TILES: [u32; 5] = [1, 2, 4, 8, 16];

/// Largest M that takes the decode path.
pub const DECODE_M_MAX: usize = 16;

/// Columns of one decode workgroup (`COLS` in `w4a8_gemm_decode.wgsl`).
pub const DECODE_COLS: usize = 16;

/// K slices of one decode workgroup (`SLICES`); `DECODE_COLS · DECODE_SLICES` invocations.
pub const DECODE_SLICES: usize = 16;

/// Weight blocks (16 bytes each) every decode invocation loads before using any (`UNROLL`).
pub const DECODE_UNROLL: usize = 4;

/// Workgroup memory of the decode kernel at `tm` rows: the tree's partial sums, `DECODE_SLICES / 2`
/// slices × `DECODE_COLS` columns × `tm` rows of i32 (`RED_WORDS`).
pub const fn decode_workgroup_bytes(tm: u32) -> u64 {
    (DECODE_SLICES / 2 * DECODE_COLS) as u64 * tm as u64 * 4
}
