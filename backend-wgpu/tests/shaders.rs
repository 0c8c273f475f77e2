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
    for spec in MODULES {
        parse_and_validate(&spec);
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
        shaders::entry::GEMM_SMALL_M,
        shaders::entry::ZERO_ACCUMULATORS,
        shaders::entry::EPILOGUE,
        shaders::entry::GEMM_TILED,
        shaders::entry::F16_GEMM,
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
