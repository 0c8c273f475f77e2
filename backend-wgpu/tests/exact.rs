//! The exact-arithmetic shader functions (`softfloat.wgsl`, `epilogue_exact.wgsl`,
//! `quantize_exact.wgsl`) against the CPU's IEEE arithmetic and the oracle, bit for bit, on millions of
//! operands run through `exact_check.wgsl` on the device: random bit patterns over every exponent,
//! subnormals, overflow, cancellation, rounding ties, and the integer fallback on its own.

mod common;

use common::Rng;
use w4a8_core::oracle::epilogue;
use w4a8_wgpu::shaders::EXACT_CHECK;
use w4a8_wgpu::{WgpuBackend, wgpu};

/// The operations of `check_one` in `exact_check.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Mul = 0,
    Add = 1,
    Div = 2,
    FromI32 = 3,
    Epilogue = 4,
    EpilogueNoBias = 5,
    EpilogueSoft = 6,
    EpilogueSoftNoBias = 7,
    Scaled = 8,
    Scale = 9,
    Code = 10,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    op: Op,
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// What the CPU (the oracle's arithmetic) says for a case.
fn expected(case: &Case) -> u32 {
    let f = f32::from_bits;
    let (a, b, c, d) = (case.a, case.b, case.c, case.d);
    let out16 = |y: half::f16| y.to_bits() as u32;
    match case.op {
        Op::Mul => (f(a) * f(b)).to_bits(),
        Op::Add => (f(a) + f(b)).to_bits(),
        Op::Div => (f(a) / f(b)).to_bits(),
        Op::FromI32 => (a as i32 as f32).to_bits(),
        Op::Epilogue | Op::EpilogueSoft => out16(epilogue(a as i32, f(b), f(c), Some(f(d)))),
        Op::EpilogueNoBias | Op::EpilogueSoftNoBias => out16(epilogue(a as i32, f(b), f(c), None)),
        Op::Scaled => (f(a) * f(b)).to_bits(),
        Op::Scale => (f(a) / 127.0).to_bits(),
        Op::Code => ((f(a) / f(b)).clamp(-127.0, 127.0).round_ties_even() as i32) as u32,
    }
}

/// Runs the cases on the device and returns each result.
fn run(backend: &WgpuBackend, cases: &[Case]) -> Vec<u32> {
    use wgpu::util::DeviceExt;
    let device = backend.device();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(EXACT_CHECK.name),
        source: wgpu::ShaderSource::Wgsl(EXACT_CHECK.source().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("exact_check"),
        layout: None,
        module: &module,
        entry_point: Some("exact_check"),
        compilation_options: Default::default(),
        cache: None,
    });
    let words: Vec<u32> = cases.iter().flat_map(|c| [c.op as u32, c.a, c.b, c.c, c.d, 0, 0, 0]).collect();
    let storage = |contents: &[u8], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage })
    };
    let params = storage(bytemuck::cast_slice(&[cases.len() as u32, 0, 0, 0]), wgpu::BufferUsages::UNIFORM);
    let input = storage(bytemuck::cast_slice(&words), wgpu::BufferUsages::STORAGE);
    let bytes = (cases.len() * 4) as u64;
    let output = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: params.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: input.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: output.as_entire_binding() },
        ],
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(cases.len().div_ceil(64) as u32, 1, 1);
    }
    encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, bytes);
    backend.queue().submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let out: Vec<u32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    staging.unmap();
    out
}

/// Runs `cases` in slices that keep each dispatch under the per-dimension workgroup limit and asserts
/// every result, reporting the first few mismatches.
fn check(backend: &WgpuBackend, cases: &[Case]) {
    let mut bad = Vec::new();
    for chunk in cases.chunks(1 << 20) {
        for (case, got) in chunk.iter().zip(run(backend, chunk)) {
            let want = expected(case);
            if got != want {
                bad.push(format!("{case:x?}: got {got:#010x}, want {want:#010x}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} cases differ, e.g.\n{}",
        bad.len(),
        cases.len(),
        bad[..bad.len().min(8)].join("\n")
    );
}

/// A finite f32 whose exponent field is drawn from the whole range, edges weighted up.
fn any_finite(rng: &mut Rng) -> u32 {
    let exp = match rng.int(0, 5) {
        0 => rng.int(0, 2) as u32,     // zero, subnormal, smallest normals
        1 => rng.int(252, 254) as u32, // near overflow
        2 => rng.int(100, 154) as u32, // ordinary magnitudes
        _ => rng.int(0, 254) as u32,
    };
    let man = match rng.int(0, 5) {
        0 => 0,
        1 => 0x7fffff,
        2 => rng.int(0, 7) as u32,
        _ => rng.int(0, 0x7fffff) as u32,
    };
    (rng.int(0, 1) as u32) << 31 | exp << 23 | man
}

fn flip_sign_sometimes(rng: &mut Rng, x: u32) -> u32 {
    if rng.chance(0.5) { x ^ 0x8000_0000 } else { x }
}

#[test]
fn softfloat_matches_ieee_arithmetic() {
    let Some(backend) = common::backend() else { return };
    let mut rng = Rng::new(11);
    let mut cases = Vec::new();
    for _ in 0..400_000 {
        let (a, b) = (any_finite(&mut rng), any_finite(&mut rng));
        cases.push(Case { op: Op::Mul, a, b, c: 0, d: 0 });
        // Addition near cancellation: b within a few exponents of a, often its negation nudged.
        let near = match rng.int(0, 2) {
            0 => (a ^ 0x8000_0000).wrapping_add(rng.int(-3, 3) as u32),
            1 => {
                let smaller = (a & 0x7fff_ffff).saturating_sub(rng.int(0, 1 << 26) as u32);
                flip_sign_sometimes(&mut rng, smaller)
            }
            _ => b,
        };
        if near & 0x7f80_0000 != 0x7f80_0000 {
            cases.push(Case { op: Op::Add, a, b: near, c: 0, d: 0 });
        }
        if b & 0x7fff_ffff != 0 {
            cases.push(Case { op: Op::Div, a, b, c: 0, d: 0 });
        }
        let i = match rng.int(0, 2) {
            0 => rng.int(i32::MIN as i64, i32::MAX as i64) as i32,
            1 => rng.int(-(1 << 25), 1 << 25) as i32,
            _ => (rng.int(0, 1) as i32 * 2 - 1) * (1 << rng.int(0, 30)) + rng.int(-2, 2) as i32,
        };
        cases.push(Case { op: Op::FromI32, a: i as u32, b: 0, c: 0, d: 0 });
    }
    // The exactness bound's extreme accumulator and the i32 edges.
    for i in [i32::MIN, i32::MIN + 1, i32::MAX, -1_065_353_216, 16_777_217, -16_777_217, 0] {
        cases.push(Case { op: Op::FromI32, a: i as u32, b: 0, c: 0, d: 0 });
    }
    check(&backend, &cases);
}

/// A non-negative scale from a subnormal-heavy spread, or an ordinary one.
fn scale(rng: &mut Rng) -> u32 {
    match rng.int(0, 3) {
        0 => rng.range(-149.0, -120.0).exp2().to_bits(),
        1 => rng.range(-30.0, 20.0).exp2().to_bits(),
        2 => 0,
        _ => rng.range(-16.0, -8.0).exp2().to_bits(),
    }
}

#[test]
fn the_epilogue_and_its_fallback_match_the_oracle() {
    let Some(backend) = common::backend() else { return };
    let mut rng = Rng::new(12);
    let mut cases = Vec::new();
    for _ in 0..250_000 {
        let acc = match rng.int(0, 2) {
            0 => rng.int(-1_065_353_216, 1_065_353_216) as i32,
            1 => rng.int(-5000, 5000) as i32,
            _ => 0,
        };
        let (sx, sch) = (scale(&mut rng), scale(&mut rng));
        let p = (acc as f32 * f32::from_bits(sx)) * f32::from_bits(sch);
        let bias = match rng.int(0, 3) {
            // Cancelling: the case where a fused multiply-add would differ.
            0 if p.is_normal() => f32::from_bits((-p).to_bits().wrapping_add(rng.int(-3, 3) as u32)),
            1 => rng.range(-1.0, 1.0) * rng.range(-149.0, -120.0).exp2(),
            2 => 0.0,
            _ => rng.range(-2.0, 2.0),
        };
        for op in [Op::Epilogue, Op::EpilogueNoBias, Op::EpilogueSoft, Op::EpilogueSoftNoBias] {
            cases.push(Case { op, a: acc as u32, b: sx, c: sch, d: bias.to_bits() });
        }
    }
    check(&backend, &cases);
}

#[test]
fn the_quantizer_steps_match_the_oracle() {
    let Some(backend) = common::backend() else { return };
    let mut rng = Rng::new(13);
    let mut cases = Vec::new();
    for _ in 0..300_000 {
        // x' = f16 value · smoothing factor (subnormal factors included).
        let x = half::f16::from_f32(rng.range(-300.0, 300.0) * rng.range(-20.0, 0.0).exp2()).to_f32();
        let smooth = match rng.int(0, 2) {
            0 => rng.range(-150.0, -120.0).exp2(),
            1 => 1.0,
            _ => rng.range(-3.0, 3.0).exp2(),
        };
        cases.push(Case { op: Op::Scaled, a: x.to_bits(), b: smooth.to_bits(), c: 0, d: 0 });
        let row_max = f32::from_bits(any_finite(&mut rng) & 0x7fff_ffff);
        cases.push(Case { op: Op::Scale, a: row_max.to_bits(), b: 0, c: 0, d: 0 });
        // Codes: s from a row maximum, x' a quotient near a tie times s (|x'| ≤ max as in a row).
        let max = f32::from_bits(rng.int(1, 0x7f7f_ffff) as u32);
        let s = max / 127.0;
        if s == 0.0 {
            continue;
        }
        let t = rng.int(-126, 126) as f32 + if rng.chance(0.7) { 0.5 } else { rng.unit() };
        let xs = f32::from_bits((t * s).to_bits().wrapping_add(rng.int(-2, 2) as u32));
        if xs.is_finite() && xs.abs() <= max {
            cases.push(Case { op: Op::Code, a: xs.to_bits(), b: s.to_bits(), c: 0, d: 0 });
        }
    }
    check(&backend, &cases);
}
