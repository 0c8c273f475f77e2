//! Every shader module parses and validates with naga (so a broken shader fails on any machine,
//! GPU or not), and every entry point the backend looks up exists in its module.

use w4a8_wgpu::shaders::{self, MODULES};

fn parse_and_validate(spec: &shaders::ShaderModuleSpec) -> naga::Module {
    let source = spec.source();
    let module = naga::front::wgsl::parse_str(&source)
        .unwrap_or_else(|e| panic!("{} does not parse:\n{}", spec.name, e.emit_to_string(&source)));
    let mut caps = naga::valid::Capabilities::default();
    if spec.needs_subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let subgroup_ops = if spec.needs_subgroups {
        naga::valid::SubgroupOperationSet::all()
    } else {
        naga::valid::SubgroupOperationSet::empty()
    };
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(subgroup_ops)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} does not validate:\n{}", spec.name, e.emit_to_string(&source)));
    module
}

#[test]
fn every_shader_module_parses_and_validates() {
    for spec in MODULES.iter().chain([&shaders::EXACT_CHECK]) {
        parse_and_validate(spec);
    }
}

#[test]
fn modules_without_subgroups_validate_without_the_capability() {
    // The portable paths must not rely on subgroups by accident.
    for spec in MODULES.iter().filter(|s| !s.needs_subgroups) {
        let source = spec.source();
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} needs a capability:\n{}", spec.name, e.emit_to_string(&source)));
    }
}

#[test]
fn every_entry_point_in_the_table_resolves() {
    let mut seen = 0;
    for spec in MODULES {
        let module = parse_and_validate(&spec);
        for name in spec.entry_points {
            let ep = module
                .entry_points
                .iter()
                .find(|ep| ep.name == *name)
                .unwrap_or_else(|| panic!("entry point {name} is not in module {}", spec.name));
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}");
            seen += 1;
        }
    }
    // The names of `shaders::entry`, each listed by exactly one module.
    let all = [
        shaders::entry::QUANTIZE,
        shaders::entry::QUANTIZE_SUBGROUP,
        shaders::entry::QUANTIZE_HADAMARD,
        shaders::entry::GEMM_DECODE,
        shaders::entry::GEMM_TILED_128,
        shaders::entry::GEMM_TILED_64,
        shaders::entry::F16_GEMM_128,
        shaders::entry::F16_GEMM_64,
    ];
    assert_eq!(seen, all.len());
    for name in all {
        assert_eq!(MODULES.iter().filter(|s| s.entry_points.contains(&name)).count(), 1, "{name}");
    }
}

#[test]
fn every_kernel_file_starts_with_the_requires_directive() {
    for spec in MODULES {
        assert!(
            spec.parts[0].starts_with("requires packed_4x8_integer_dot_product;"),
            "{} must start with the requires directive",
            spec.name
        );
    }
}

/// The value of a `const` of the module (a u32 literal).
fn const_u32(module: &naga::Module, name: &str) -> u32 {
    let c = module.constants.iter().find(|(_, c)| c.name.as_deref() == Some(name)).map(|(_, c)| c);
    let c = c.unwrap_or_else(|| panic!("no const {name}"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref e => panic!("const {name} is not a u32 literal: {e:?}"),
    }
}

#[test]
fn decode_kernel_shape_matches_the_host_constants() {
    // The host sizes the grid and checks workgroup memory with these; the shader must agree.
    let module = parse_and_validate(&shaders::GEMM_DECODE);
    assert_eq!(const_u32(&module, "COLS") as usize, shaders::DECODE_COLS);
    assert_eq!(const_u32(&module, "SLICES") as usize, shaders::DECODE_SLICES);
    assert_eq!(const_u32(&module, "UNROLL") as usize, shaders::DECODE_UNROLL);
    assert_eq!(const_u32(&module, "MAX_TM"), *shaders::DECODE_ROW_TILES.last().unwrap());
    let ep = module.entry_points.iter().find(|ep| ep.name == shaders::entry::GEMM_DECODE).unwrap();
    assert_eq!(ep.workgroup_size, [(shaders::DECODE_COLS * shaders::DECODE_SLICES) as u32, 1, 1]);
    // The only workgroup variable is sized by the TM override (through RED_WORDS), not by 16 rows.
    let shared: Vec<_> =
        module.global_variables.iter().filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup).collect();
    assert_eq!(shared.len(), 1);
    let naga::TypeInner::Array { size: naga::ArraySize::Pending(o), stride, .. } =
        module.types[shared[0].1.ty].inner
    else {
        panic!("the decode kernel's workgroup array must be sized by an override")
    };
    assert_eq!(module.overrides[o].name.as_deref(), Some("RED_WORDS"));
    assert_eq!(stride, 4);
    // Every row tile fits WebGPU's default 16 KiB of workgroup memory.
    for tm in shaders::DECODE_ROW_TILES {
        assert!(shaders::decode_workgroup_bytes(tm) <= 16 << 10, "TM = {tm}");
    }
    assert_eq!(shaders::decode_workgroup_bytes(1), 512);
}

#[test]
fn hadamard_quantizer_shape_matches_the_host_constants() {
    // The host picks the chunk (the HCHUNK override) by workgroup memory and refuses blocks larger
    // than it; the shader's only workgroup array must be HCHUNK u32s, and 256 invocations wide.
    let module = parse_and_validate(&shaders::QUANTIZE_HADAMARD);
    let ep = module.entry_points.iter().find(|ep| ep.name == shaders::entry::QUANTIZE_HADAMARD).unwrap();
    assert_eq!(ep.workgroup_size, [256, 1, 1]);
    let shared: Vec<_> =
        module.global_variables.iter().filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup).collect();
    assert_eq!(shared.len(), 1);
    let naga::TypeInner::Array { size: naga::ArraySize::Pending(o), stride, .. } =
        module.types[shared[0].1.ty].inner
    else {
        panic!("the rotated quantizer's workgroup array must be sized by an override")
    };
    assert_eq!(module.overrides[o].name.as_deref(), Some("HCHUNK"));
    assert_eq!(stride, 4);
    // Largest first; the largest is the largest block of the format and fits WebGPU's default
    // 16 KiB; the smallest fits the 8 KiB the backend requires; each holds the 256-slot max tree.
    assert!(shaders::HADAMARD_CHUNKS.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(shaders::HADAMARD_CHUNKS[0] as usize, w4a8_core::MAX_HADAMARD_BLOCK);
    assert_eq!(shaders::hadamard_workgroup_bytes(shaders::HADAMARD_CHUNKS[0]), 16 << 10);
    assert!(shaders::hadamard_workgroup_bytes(*shaders::HADAMARD_CHUNKS.last().unwrap()) <= 8 << 10);
    assert!(shaders::HADAMARD_CHUNKS.iter().all(|&c| c.is_power_of_two() && c >= 256));
}

#[test]
fn tiled_kernel_shapes_match_the_host_constants() {
    // The host picks a size by these figures (workgroup memory against the device limit, tile for
    // the grid); each module's own declarations must agree.
    for v in shaders::TILED_VARIANTS {
        for spec in [v.w4a8, v.f16] {
            let module = parse_and_validate(&spec);
            assert_eq!(const_u32(&module, "TG") as usize * 8, v.tile, "{}", spec.name);
            assert_eq!(const_u32(&module, "KQ") as usize, shaders::TILED_K_SLICES, "{}", spec.name);
            let ep = module.entry_points.iter().find(|ep| ep.name == spec.entry_points[0]).unwrap();
            assert_eq!(ep.workgroup_size, [v.invocations() as u32, 1, 1], "{}", spec.name);
            let shared: u64 = module
                .global_variables
                .iter()
                .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
                .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()) as u64)
                .sum();
            assert_eq!(shared, v.workgroup_bytes(), "{}", spec.name);
        }
    }
    // Largest first, and the smallest fits WebGPU's default 16 KiB.
    assert!(shaders::TILED_VARIANTS.windows(2).all(|w| w[0].tile > w[1].tile));
    assert!(shaders::TILED_VARIANTS.last().unwrap().workgroup_bytes() <= 16 << 10);
}

/// `scale_int4x4` of w4a8_gemm_tiled.wgsl, transcribed: four nibbles (low half of each byte) times
/// s -> four int8 s·q.
fn scale_int4x4(b: u32, s: u32) -> u32 {
    b.wrapping_mul(s).wrapping_add(((b >> 3) & 0x0101_0101).wrapping_mul(256 - 16 * s))
}

#[test]
fn scaled_int4_unpack_is_exact_for_every_nibble_and_group_scale() {
    // Ties the tiled kernel's dequantization to the number format: byte i of the result, read as
    // int8, is s·q_i for every int4 q_i and every group scale s ∈ [1, 16], and s = 1 is the plain
    // unpack (unpack_int4x8_lo/hi in common.wgsl).
    let source = shaders::GEMM_TILED_128.source();
    assert!(source.contains("return b * s + ((b >> 3u) & 0x01010101u) * (256u - 16u * s);"));
    for s in 1..=16u32 {
        for q0 in -8i32..8 {
            for q1 in [-8i32, -1, 0, 7] {
                let qs = [q0, q1, -q0.max(-7), 3];
                let b = qs.iter().enumerate().fold(0u32, |w, (i, &q)| w | (((q as u32) & 0xF) << (8 * i)));
                let got = scale_int4x4(b, s).to_le_bytes().map(|v| v as i8 as i32);
                assert_eq!(got, qs.map(|q| q * s as i32), "s={s} q={qs:?}");
                if s == 1 {
                    assert_eq!(scale_int4x4(b, 1), b | ((b & 0x0808_0808) * 0x1E));
                }
            }
        }
    }
}
