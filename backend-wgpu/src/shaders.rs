//! The WGSL sources and the one table of their entry points.
//!
//! A shader module is one or more files from `shaders/` joined in order; the first file starts with
//! the `requires packed_4x8_integer_dot_product;` directive and `common.wgsl` (functions only) comes
//! last, since WGSL declarations may be used before they appear.

/// The helpers every module appends (f16 ⇄ f32 bit conversions, int4 unpacking).
const COMMON: &str = include_str!("../../shaders/common.wgsl");

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
        s.push_str(COMMON);
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

/// The split-K decode GEMM (M ≤ 16).
pub const GEMM_SMALL_M: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_gemm_small_m",
    parts: &[include_str!("../../shaders/w4a8_gemm_small_m.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::GEMM_SMALL_M],
};

/// Clearing the split-K accumulators and the epilogue that follows them.
pub const EPILOGUE: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_epilogue",
    parts: &[include_str!("../../shaders/w4a8_epilogue.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::ZERO_ACCUMULATORS, entry::EPILOGUE],
};

/// The tiled prefill GEMM with the fused epilogue.
pub const GEMM_TILED: ShaderModuleSpec = ShaderModuleSpec {
    name: "w4a8_gemm_tiled",
    parts: &[include_str!("../../shaders/w4a8_gemm_tiled.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::GEMM_TILED],
};

/// The f16 GEMM baseline.
pub const F16_GEMM: ShaderModuleSpec = ShaderModuleSpec {
    name: "f16_gemm",
    parts: &[include_str!("../../shaders/f16_gemm.wgsl")],
    needs_subgroups: false,
    entry_points: &[entry::F16_GEMM],
};

/// Every module, in the order the backend compiles them.
pub const MODULES: [ShaderModuleSpec; 6] =
    [QUANTIZE_SHARED, QUANTIZE_SUBGROUP, GEMM_SMALL_M, EPILOGUE, GEMM_TILED, F16_GEMM];

/// Entry-point names, spelled once.
pub mod entry {
    /// `quantize_reduce_shared.wgsl`.
    pub const QUANTIZE: &str = "quantize_activations";
    /// `quantize_reduce_subgroup.wgsl`.
    pub const QUANTIZE_SUBGROUP: &str = "quantize_activations_subgroup";
    /// `w4a8_gemm_small_m.wgsl`.
    pub const GEMM_SMALL_M: &str = "w4a8_gemm_small_m";
    /// `w4a8_epilogue.wgsl`.
    pub const ZERO_ACCUMULATORS: &str = "zero_accumulators";
    /// `w4a8_epilogue.wgsl`.
    pub const EPILOGUE: &str = "w4a8_epilogue";
    /// `w4a8_gemm_tiled.wgsl`.
    pub const GEMM_TILED: &str = "w4a8_gemm_tiled";
    /// `f16_gemm.wgsl`.
    pub const F16_GEMM: &str = "f16_gemm_tiled";
}

/// The row counts the small-M kernel is specialised for (its `TM` override); the backend picks the
/// smallest one ≥ M.
pub const SMALL_M_TILES: [u32; 5] = [1, 2, 4, 8, 16];

/// Largest M that takes the small-M (decode) path.
pub const SMALL_M_MAX: usize = 16;
