//! CPU-side work: int4 packing, RTN weight quantization (both granularities), activation quantization
//! and the oracle GEMM. Sizes and sample counts keep `cargo bench -p w4a8-benches` to a few minutes on a
//! 2-core machine; each bench checks once, before timing, that what it times is right.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use w4a8_benches::check::check_w4a8;
use w4a8_benches::data::{random_f32, random_quantized_activations, random_weights};
use w4a8_core::oracle::reference_gemm;
use w4a8_core::pack::{pack_int4, unpack_int4};
use w4a8_core::quantize::{quantize_activations, quantize_weights_rtn};
use w4a8_core::{CpuOracle, Gemm, Granularity};

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

fn packing(c: &mut Criterion) {
    let (n, k) = (1024, 4096);
    let q = random_weights(n, k, Granularity::PerChannel, 1).unwrap().int4();
    let packed = pack_int4(&q, n, k).unwrap();
    assert_eq!(unpack_int4(&packed, n, k).unwrap(), q, "pack → unpack must be lossless");
    let mut g = c.benchmark_group("int4");
    g.throughput(Throughput::Elements((n * k) as u64));
    g.bench_function(BenchmarkId::new("pack", format!("{n}x{k}")), |b| {
        b.iter(|| pack_int4(black_box(&q), n, k))
    });
    g.bench_function(BenchmarkId::new("unpack", format!("{n}x{k}")), |b| {
        b.iter(|| unpack_int4(black_box(&packed), n, k))
    });
    g.finish();
}

fn weight_quantization(c: &mut Criterion) {
    let (n, k) = (256, 4096);
    let w = random_f32(n * k, 2);
    let mut g = c.benchmark_group("quantize_weights_rtn");
    // The g128 scale search takes ~0.3 s per call here: ten samples need a few seconds.
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements((n * k) as u64));
    for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
        let q = quantize_weights_rtn(&w, n, k, gran, None).unwrap();
        // Uniform data in ±[0.25, 1) quantizes to int4 with a relative Frobenius error near 0.08; a
        // broken quantizer (wrong scale, wrong nibble order) is far above 0.15.
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (a, &b) in q.dequantize_f64().iter().zip(&w) {
            num += (a - b as f64).powi(2);
            den += (b as f64).powi(2);
        }
        let rel = (num / den).sqrt();
        assert!(rel < 0.15, "{gran}: relative reconstruction error {rel}");
        g.bench_function(BenchmarkId::new(gran.to_string(), format!("{n}x{k}")), |b| {
            b.iter(|| quantize_weights_rtn(black_box(&w), n, k, gran, None))
        });
    }
    g.finish();
}

fn activation_quantization(c: &mut Criterion) {
    let k = 4096;
    let mut g = c.benchmark_group("quantize_activations");
    for m in [16, 256] {
        let x = random_f32(m * k, 3);
        let q = quantize_activations(&x, m, k, None).unwrap();
        // Every |x| ≥ 0.25, so every row's scale is at least 0.25/127 and no value quantizes to zero
        // unless it is below half a step.
        assert!(q.scales().iter().all(|&s| s > 0.25 / 127.0));
        g.throughput(Throughput::Elements((m * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(format!("{m}x{k}")), |b| {
            b.iter(|| quantize_activations(black_box(&x), m, k, None))
        });
    }
    g.finish();
}

fn oracle_gemm(c: &mut Criterion) {
    let (n, k) = (1024, 4096);
    let mut g = c.benchmark_group("oracle_gemm");
    g.measurement_time(Duration::from_secs(3));
    let oracle = CpuOracle::new();
    for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
        let w = random_weights(n, k, gran, 4).unwrap();
        let prepared = oracle.prepare(&w).unwrap();
        for m in [1, 16] {
            let x = random_quantized_activations(m, k, 5).unwrap();
            let xd = oracle.upload_activations(&x).unwrap();
            let mut y = oracle.alloc_output(m, n, f16::NAN).unwrap();
            oracle.gemm_into(&xd, &prepared, &mut y).unwrap();
            let all: Vec<(usize, usize)> = (0..m).flat_map(|r| (0..n).map(move |c| (r, c))).collect();
            assert!(check_w4a8(&oracle.read_output(&y).unwrap(), &x, &w, &all).ok());
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(BenchmarkId::new(format!("gemm_into/{gran}"), format!("M{m}/{n}x{k}")), |b| {
                b.iter(|| oracle.gemm_into(black_box(&xd), &prepared, &mut y))
            });
            if m == 1 {
                // reference_gemm expands the int8 weights on every call: the cost the oracle's
                // `prepare` saves.
                g.bench_function(
                    BenchmarkId::new(format!("reference_gemm/{gran}"), format!("M{m}/{n}x{k}")),
                    |b| b.iter(|| reference_gemm(black_box(&x), &w)),
                );
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = cpu;
    config = config();
    targets = packing, weight_quantization, activation_quantization, oracle_gemm
}
criterion_main!(cpu);
