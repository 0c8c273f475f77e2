//! W4A8 GEMMs on the GPU backends compiled in (features `wgpu`, `cuda`), timed by the adapter's kernel
//! timer through criterion's `iter_custom`: runs back to back under CUDA events or wgpu timestamp
//! queries, not the host clock. Each case is checked against the oracle's arithmetic before it is
//! timed.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;
use w4a8_benches::backend::BenchBackend;
use w4a8_benches::check::check_w4a8;
use w4a8_benches::data::{random_quantized_activations, random_weights, sample_positions};
use w4a8_benches::open::{BackendVisitor, compiled_backends, visit_backend};
use w4a8_core::{BackendKind, Gemm, Granularity};

/// (N, K, M): LLaMA-2-7B attention-out and gate+up at decode and small-prefill M.
const CASES: [(usize, usize, usize); 4] =
    [(4096, 4096, 1), (4096, 4096, 16), (22016, 4096, 1), (22016, 4096, 128)];

/// Rotating sets: 2 × 22016×4096 int4 ≈ 90 MB, over the 50 MB L2 of the largest lent GPUs.
const SETS: usize = 3;

struct Bench<'c>(&'c mut Criterion);

impl BackendVisitor for Bench<'_> {
    type Output = ();
    fn visit<B: BenchBackend>(self, b: &B) {
        let c = self.0;
        let device = b.device();
        let name = device.backend;
        if let Some(why) = device.meaningless
            && std::env::var_os("W4A8_BENCH_SOFTWARE").is_none()
        {
            println!("gpu benches: skipping {name}: {why} (set W4A8_BENCH_SOFTWARE=1 to time it anyway)");
            return;
        }
        let gemm = b.gemm();
        let mut group = c.benchmark_group(format!("{name}/w4a8_gemm"));
        for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
            for &(n, k, m) in &CASES {
                let host_w: Vec<_> =
                    (0..SETS).map(|s| random_weights(n, k, gran, s as u64).unwrap()).collect();
                let host_x: Vec<_> =
                    (0..SETS).map(|s| random_quantized_activations(m, k, 100 + s as u64).unwrap()).collect();
                let w: Vec<_> = host_w.iter().map(|h| gemm.prepare(h).unwrap()).collect();
                let x: Vec<_> = host_x.iter().map(|h| gemm.upload_activations(h).unwrap()).collect();
                let mut y = gemm.alloc_output(m, n, f16::NAN).unwrap();
                gemm.gemm_into(&x[0], &w[0], &mut y).unwrap();
                let check = check_w4a8(
                    &gemm.read_output(&y).unwrap(),
                    &host_x[0],
                    &host_w[0],
                    &sample_positions(m, n, 64, 7),
                );
                assert!(check.ok(), "{name} {gran} M={m} {n}x{k}: {:?}", check.first_failure);
                group.throughput(Throughput::Elements((2 * m * n * k) as u64));
                group.bench_function(BenchmarkId::new(gran.to_string(), format!("M{m}/{n}x{k}")), |bench| {
                    bench.iter_custom(|iters| {
                        let runs: Vec<_> =
                            (0..iters as usize).map(|i| (&x[i % SETS], &w[i % SETS])).collect();
                        let per_run = b.time_gemm_batch(&runs, &mut y).expect("timed GEMM");
                        Duration::from_secs_f64(per_run * iters as f64)
                    })
                });
            }
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let gpus: Vec<BackendKind> = compiled_backends().into_iter().filter(|&k| k != BackendKind::Cpu).collect();
    if gpus.is_empty() {
        println!("gpu benches: no GPU backend compiled in (build with --features wgpu and/or cuda)");
    }
    for kind in gpus {
        if let Err(e) = visit_backend(kind, Bench(&mut c)) {
            println!("gpu benches: skipping {kind}: {e}");
        }
    }
    c.final_summary();
}
