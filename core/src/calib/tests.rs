use super::*;

/// Deterministic normal samples (SplitMix64 + Box–Muller).
struct Rng(u64);
impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal()).collect()
    }
}

/// Correlated activations: X = Z·A + 0.1·noise, Z of rank `rank`, so nearby channels co-vary.
fn correlated_x(m: usize, k: usize, rank: usize, rng: &mut Rng) -> Vec<f32> {
    let a = rng.normals(rank * k);
    correlated_x_with(m, k, rank, &a, rng)
}

/// Like [`correlated_x`] with a given mixing matrix A (rank×K): calibration and held-out sets share it.
fn correlated_x_with(m: usize, k: usize, rank: usize, a: &[f32], rng: &mut Rng) -> Vec<f32> {
    let z = rng.normals(m * rank);
    (0..m)
        .flat_map(|i| {
            let (z, a) = (&z, &a);
            (0..k).map(move |j| (0..rank).map(|r| z[i * rank + r] * a[r * k + j]).sum::<f32>())
        })
        .zip(rng.normals(m * k))
        .map(|(v, e)| v + 0.1 * e)
        .collect()
}

fn stats_of(x: &[f32], m: usize, k: usize) -> CalibStats {
    let mut s = CalibStats::new(k).unwrap();
    s.update(x, m).unwrap();
    s
}

fn cfg(method: Method, granularity: Granularity) -> QuantizeConfig {
    QuantizeConfig { method, granularity, ..Default::default() }
}

const G64: Granularity = Granularity::PerGroup { group_size: 64 };

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (m, n, k) = (512, 48, 256);
    let mut rng = Rng(1);
    let a = rng.normals(16 * k);
    let x = correlated_x_with(m, k, 16, &a, &mut rng);
    let w = rng.normals(n * k);
    // Held-out tokens from the same distribution decide.
    let xt = correlated_x_with(256, k, 16, &a, &mut rng);
    let stats = stats_of(&x, m, k);
    for gran in [Granularity::PerChannel, G64] {
        for act_order in [false, true] {
            let mut c = cfg(Method::Gptq, gran);
            c.gptq.act_order = act_order;
            let g = quantize_layer(&w, n, k, &c, Some(&stats)).unwrap();
            let r = quantize_layer(&w, n, k, &cfg(Method::Rtn, gran), None).unwrap();
            let eg = relative_output_error(&xt, 256, &w, None, &g.weights, None).unwrap();
            let er = relative_output_error(&xt, 256, &w, None, &r.weights, None).unwrap();
            assert!(eg < 0.8 * er, "{gran} act_order={act_order}: GPTQ {eg} vs RTN {er}");
        }
    }
}

#[test]
fn act_order_result_is_in_canonical_order() {
    // A diagonal Hessian has no cross terms: GPTQ then propagates nothing and must reproduce RTN with
    // the same scales exactly, in canonical column order, however act-order permuted the processing.
    let (n, k) = (16, 128);
    let mut rng = Rng(7);
    // X with orthogonal columns of very different norms: rows of a Sylvester–Hadamard matrix times a
    // per-channel magnitude. XᵀX is then exactly diagonal, and act-order reorders heavily.
    let mut xo = vec![0.0f32; k * k];
    for t in 0..k {
        for j in 0..k {
            let sign = if (t & j).count_ones() % 2 == 0 { 1.0 } else { -1.0 };
            xo[t * k + j] = sign * (1.0 + ((j * 7919) % 97) as f32);
        }
    }
    let stats = stats_of(&xo, k, k);
    let h = stats.hessian();
    for a in 0..k {
        for b in 0..k {
            if a != b {
                assert_eq!(h[a * k + b], 0.0);
            }
        }
    }
    let w = rng.normals(n * k);
    for gran in [Granularity::PerChannel, G64] {
        let mut c = cfg(Method::Gptq, gran);
        c.gptq.act_order = true;
        let g = quantize_layer(&w, n, k, &c, Some(&stats)).unwrap();
        let r = quantize_layer(&w, n, k, &cfg(Method::Rtn, gran), None).unwrap();
        assert_eq!(g.weights.channel_scales(), r.weights.channel_scales(), "{gran}");
        assert_eq!(g.weights.group_scales(), r.weights.group_scales(), "{gran}");
        assert_eq!(g.weights.int4(), r.weights.int4(), "{gran}");
    }
}

#[test]
fn act_order_on_correlated_inputs_reconstructs_in_canonical_order() {
    let (m, n, k) = (384, 32, 128);
    let mut rng = Rng(5);
    let mut x = correlated_x(m, k, 8, &mut rng);
    // Strongly uneven channel energies: act-order's permutation is far from the identity.
    for (i, v) in x.iter_mut().enumerate() {
        *v *= 1.0 + ((i % k) * 13 % 17) as f32;
    }
    let stats = stats_of(&x, m, k);
    let w = rng.normals(n * k);
    let mut c = cfg(Method::Gptq, Granularity::PerChannel);
    c.gptq.act_order = true;
    let g = quantize_layer(&w, n, k, &c, Some(&stats)).unwrap();
    // Dequantized weights stay near W position by position (a permuted store would not).
    let d = g.weights.dequantize_f64();
    let num: f64 = d.iter().zip(&w).map(|(a, &b)| (a - b as f64).powi(2)).sum();
    let den: f64 = w.iter().map(|&b| (b as f64).powi(2)).sum();
    assert!((num / den).sqrt() < 0.5, "relative weight error {}", (num / den).sqrt());
    let eg = relative_output_error(&x, m, &w, None, &g.weights, None).unwrap();
    let mut c2 = c;
    c2.gptq.act_order = false;
    let e2 = relative_output_error(
        &x,
        m,
        &w,
        None,
        &quantize_layer(&w, n, k, &c2, Some(&stats)).unwrap().weights,
        None,
    )
    .unwrap();
    let er = relative_output_error(
        &x,
        m,
        &w,
        None,
        &quantize_layer(&w, n, k, &cfg(Method::Rtn, Granularity::PerChannel), None).unwrap().weights,
        None,
    )
    .unwrap();
    assert!(eg < er && e2 < er, "act-order {eg}, canonical {e2}, RTN {er}");
}

/// Activations with a few outlier channels 40× larger than the rest, as in transformer residuals.
fn outlier_x(m: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    (0..m * k).map(|i| rng.normal() * if (i % k) % 31 == 3 { 40.0 } else { 1.0 }).collect()
}

#[test]
fn smoothing_reduces_error_with_outlier_channels() {
    let (m, n, k) = (256, 64, 256);
    let mut rng = Rng(11);
    let x = outlier_x(m, k, &mut rng);
    let w: Vec<f32> = rng.normals(n * k).into_iter().map(|v| v * 0.05).collect();
    let xt = outlier_x(128, k, &mut rng);
    let stats = stats_of(&x, m, k);
    for gran in [Granularity::PerChannel, G64] {
        let base = quantize_layer(&w, n, k, &cfg(Method::Rtn, gran), None).unwrap();
        let e0 = relative_output_error(&xt, 128, &w, None, &base.weights, None).unwrap();
        for smoothing in [Smoothing::Adaptive, Smoothing::Log] {
            let c = QuantizeConfig { smoothing, ..cfg(Method::Rtn, gran) };
            let l = quantize_layer(&w, n, k, &c, Some(&stats)).unwrap();
            let smooth = l.smooth.as_deref().expect("outliers call for smoothing");
            assert_eq!(smooth.len(), k);
            let e = relative_output_error(&xt, 128, &w, None, &l.weights, Some(smooth)).unwrap();
            if smoothing == Smoothing::Adaptive {
                assert!(e < 0.9 * e0, "{gran} {smoothing:?}: {e} vs unsmoothed {e0}");
            } else {
                // The fixed log rule does not look at the weights: here it trades the activation error
                // it removes for weight error (measured 0.139 vs 0.132 per channel, 0.103 vs 0.103
                // g64). What it must do is shrink the activation side's quantization error.
                let act_err = |smooth: Option<&[f32]>| {
                    let q = quantize_activations(&xt, 128, k, smooth).unwrap().dequantize();
                    let s = smooth.map_or(vec![1.0; k], |s| s.to_vec());
                    let (mut num, mut den) = (0.0f64, 0.0f64);
                    for (i, (&a, &b)) in q.iter().zip(&xt).enumerate() {
                        num += ((a / s[i % k] - b) as f64).powi(2);
                        den += (b as f64).powi(2);
                    }
                    (num / den).sqrt()
                };
                let (a0, a1) = (act_err(None), act_err(Some(smooth)));
                assert!(a1 < 0.5 * a0, "log equalization activation error {a1} vs {a0}");
            }
        }
    }
}

#[test]
fn adaptive_smoothing_never_loses_on_its_calibration_objective() {
    let (m, n, k) = (128, 32, 128);
    let mut rng = Rng(3);
    let x = correlated_x(m, k, 4, &mut rng);
    let w = rng.normals(n * k);
    let stats = stats_of(&x, m, k);
    let (s, alpha) = adaptive_smoothing(&w, n, k, Granularity::PerChannel, &stats).unwrap();
    let set = smooth::SampleSet::new(&x, m, &w, n, k);
    let par = faer::get_global_parallelism();
    let none = smooth::w4a8_relative_error(&set, &w, n, k, Granularity::PerChannel, None, par).unwrap();
    let chosen =
        smooth::w4a8_relative_error(&set, &w, n, k, Granularity::PerChannel, s.as_deref(), par).unwrap();
    assert!(chosen <= none);
    assert_eq!(s.is_some(), alpha.is_some());
}

/// The α search runs each candidate's GEMM on one thread: its error must not depend on the threads.
#[test]
fn smoothing_error_does_not_depend_on_gemm_threads() {
    let (m, n, k) = (300, 200, 256);
    let mut rng = Rng(31);
    let x = outlier_x(m, k, &mut rng);
    let w = rng.normals(n * k);
    let stats = stats_of(&x, m, k);
    let s = smoothing_scales(stats.absmax(), &weight_column_absmax(&w, k), 0.5);
    let set = smooth::SampleSet::new(&x, m, &w, n, k);
    for gran in [Granularity::PerChannel, G64] {
        let err = |par| smooth::w4a8_relative_error(&set, &w, n, k, gran, Some(&s), par).unwrap();
        let seq = err(faer::Par::Seq);
        for threads in [2, 3, 8] {
            assert_eq!(seq.to_bits(), err(faer::Par::rayon(threads)).to_bits(), "{gran}, {threads} threads");
        }
    }
}

#[test]
fn clipping_lowers_the_output_error() {
    let (m, n, k) = (512, 32, 128);
    let mut rng = Rng(21);
    let x = correlated_x(m, k, 8, &mut rng);
    // Heavy-tailed weights (a few large entries per row): clipping pays off.
    let w: Vec<f32> = rng.normals(n * k).into_iter().map(|v| v * v * v).collect();
    let stats = stats_of(&x, m, k);
    for gran in [Granularity::PerChannel, G64] {
        let plain = quantize_layer(&w, n, k, &cfg(Method::Rtn, gran), None).unwrap();
        let clipped =
            quantize_layer(&w, n, k, &QuantizeConfig { clip: true, ..cfg(Method::Rtn, gran) }, Some(&stats))
                .unwrap();
        let e0 = relative_output_error(&x, m, &w, None, &plain.weights, None).unwrap();
        let e1 = relative_output_error(&x, m, &w, None, &clipped.weights, None).unwrap();
        assert!(e1 < e0, "{gran}: clipped {e1} vs plain {e0}");
    }
}

#[test]
fn every_configuration_gives_valid_weights() {
    let (m, n, k) = (96, 24, 256);
    let mut rng = Rng(17);
    let x = outlier_x(m, k, &mut rng);
    let w = rng.normals(n * k);
    let stats = stats_of(&x, m, k);
    for gran in [
        Granularity::PerChannel,
        Granularity::PerGroup { group_size: 32 },
        Granularity::PerGroup { group_size: 256 },
    ] {
        for method in [Method::Rtn, Method::Gptq] {
            for smoothing in [Smoothing::None, Smoothing::Adaptive, Smoothing::Log] {
                for clip in [false, true] {
                    let c = QuantizeConfig {
                        granularity: gran,
                        method,
                        smoothing,
                        clip,
                        gptq: GptqConfig::default(),
                    };
                    let l = quantize_layer(&w, n, k, &c, Some(&stats)).unwrap();
                    // Round trip through the canonical constructor re-checks every invariant.
                    let w2 = &l.weights;
                    W4A8Weights::new(
                        n,
                        k,
                        gran,
                        w2.qweight().to_vec(),
                        w2.channel_scales().to_vec(),
                        w2.group_scales().to_vec(),
                        None,
                    )
                    .unwrap();
                    let e = relative_output_error(&x, m, &w, None, w2, l.smooth.as_deref()).unwrap();
                    assert!(e < 0.5, "{gran} {method:?} {smoothing:?} clip={clip}: {e}");
                }
            }
        }
    }
}

#[test]
fn bad_calibration_is_an_error() {
    let (n, k) = (8, 64);
    let w = vec![0.5f32; n * k];
    let c = cfg(Method::Gptq, Granularity::PerChannel);
    assert!(matches!(quantize_layer(&w, n, k, &c, None), Err(Error::InvalidValue { .. })));
    let wrong_k = CalibStats::new(32).unwrap();
    assert!(matches!(quantize_layer(&w, n, k, &c, Some(&wrong_k)), Err(Error::ShapeMismatch { .. })));
    let empty = CalibStats::new(k).unwrap();
    assert!(matches!(quantize_layer(&w, n, k, &c, Some(&empty)), Err(Error::InvalidValue { .. })));
    let mut bad = w.clone();
    bad[3] = f32::INFINITY;
    assert!(matches!(quantize_layer(&bad, n, k, &c, None), Err(Error::NonFinite { .. })));
    let g100 = QuantizeConfig { granularity: Granularity::PerGroup { group_size: 100 }, ..c };
    assert!(matches!(quantize_layer(&w, n, k, &g100, None), Err(Error::UnsupportedGroupSize { .. })));
    // RTN without smoothing or clipping needs no calibration.
    quantize_layer(&w, n, k, &cfg(Method::Rtn, Granularity::PerChannel), None).unwrap();
    assert_eq!(Method::from_name("GPTQ"), Some(Method::Gptq));
    assert_eq!(Smoothing::from_name("log"), Some(Smoothing::Log));
    assert_eq!(Smoothing::from_name("x"), None);
}

#[test]
fn dead_channels_do_not_break_gptq() {
    let (m, n, k) = (64, 8, 64);
    let mut rng = Rng(9);
    let mut x = rng.normals(m * k);
    for row in x.chunks_mut(k) {
        row[5] = 0.0;
        row[40] = 0.0;
    }
    let stats = stats_of(&x, m, k);
    let w = rng.normals(n * k);
    let l = quantize_layer(&w, n, k, &cfg(Method::Gptq, G64), Some(&stats)).unwrap();
    let q = l.weights.int4();
    for r in 0..n {
        assert_eq!(q[r * k + 5], 0);
        assert_eq!(q[r * k + 40], 0);
    }
}

/// The speed requirement: GPTQ of a 4096×4096 layer calibrated on 4096 tokens.
/// `cargo test --release -p w4a8-core gptq_4096_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn gptq_4096_timing() {
    let (m, n, k) = (4096, 4096, 4096);
    let mut rng = Rng(42);
    let x = correlated_x(m, k, 64, &mut rng);
    let w = rng.normals(n * k);
    let t0 = std::time::Instant::now();
    let mut stats = CalibStats::new(k).unwrap();
    for batch in x.chunks(512 * k) {
        stats.update(batch, batch.len() / k).unwrap();
    }
    let t_stats = t0.elapsed();
    for gran in [Granularity::PerChannel, Granularity::PerGroup { group_size: 128 }] {
        let t1 = std::time::Instant::now();
        let l = quantize_layer(&w, n, k, &cfg(Method::Gptq, gran), Some(&stats)).unwrap();
        let t_gptq = t1.elapsed();
        assert_eq!(l.weights.n(), n);
        println!(
            "GPTQ {n}x{k}, {m} calibration tokens, {gran}, act-order, {} threads: statistics {:.2} s, quantize_layer {:.2} s",
            rayon::current_num_threads(),
            t_stats.as_secs_f64(),
            t_gptq.as_secs_f64()
        );
    }
}

/// The α search as first written — RTN through the packed format, dequantized in f64, every GEMM on
/// all threads, candidates one after the other — picks the same smoothing, and every candidate's
/// error is the same to the bit.
#[test]
fn adaptive_search_equals_the_first_implementation() {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, Mat, MatRef};
    fn xwt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Mat<f32> {
        let mut y = Mat::<f32>::zeros(m, n);
        let (xt, wt) = (MatRef::from_column_major_slice(x, k, m), MatRef::from_column_major_slice(w, k, n));
        matmul(y.as_mut(), Accum::Replace, xt.transpose(), wt, 1.0, faer::get_global_parallelism());
        y
    }
    let (m, n, k) = (160, 72, 192);
    let mut rng = Rng(41);
    let x = outlier_x(m, k, &mut rng);
    let w: Vec<f32> = rng.normals(n * k).into_iter().map(|v| v * 0.05).collect();
    let stats = stats_of(&x, m, k);
    let y_ref = xwt(&x, m, k, &w, n);
    for gran in [Granularity::PerChannel, G64] {
        let error = |s: Option<&[f32]>| -> f64 {
            let ws: Vec<f32> = match s {
                Some(s) => w.chunks(k).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect(),
                None => w.clone(),
            };
            let inv: Option<Vec<f32>> = s.map(|s| s.iter().map(|v| 1.0 / v).collect());
            let wq = quantize_weights_rtn(&ws, n, k, gran, None).unwrap();
            let wd: Vec<f32> = wq.dequantize_f64().into_iter().map(|v| v as f32).collect();
            let xd = quantize_activations(&x, m, k, inv.as_deref()).unwrap().dequantize();
            let yq = xwt(&xd, m, k, &wd, n);
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for j in 0..n {
                for i in 0..m {
                    let (a, b) = (yq[(i, j)] as f64, y_ref[(i, j)] as f64);
                    num += (a - b) * (a - b);
                    den += b * b;
                }
            }
            (num / den).sqrt()
        };
        let set = smooth::SampleSet::new(&x, m, &w, n, k);
        let w_max = weight_column_absmax(&w, k);
        let mut best = (error(None), None, None);
        for i in 0..=20 {
            let alpha = i as f32 * ALPHA_STEP;
            let s = smoothing_scales(stats.absmax(), &w_max, alpha);
            let e = error(Some(&s));
            let fast = smooth::w4a8_relative_error(&set, &w, n, k, gran, Some(&s), faer::Par::Seq).unwrap();
            assert_eq!(e.to_bits(), fast.to_bits(), "{gran} α = {alpha}");
            if e < best.0 {
                best = (e, Some(s), Some(alpha));
            }
        }
        let (s, alpha) = adaptive_smoothing(&w, n, k, gran, &stats).unwrap();
        assert_eq!(alpha, best.2, "{gran}");
        assert_eq!(s, best.1, "{gran}");
    }
}
