//! The peer GEMMs' rows: random f16 or int8 sets loaded into a [`BaselineGemm`], warmed up, both
//! times taken, and the output of set 0 checked against an f64 reference.

use half::f16;
use w4a8_core::Result;

use crate::backend::{BaselineGemm, BaselineKind, HostData};
use crate::check::check_peer;
use crate::config::RunConfig;
use crate::data::{random_f16, random_i8, sample_positions};
use crate::markdown::progress_line;
use crate::measure::{call_time, kernel_time, seed_for};
use crate::model::{Check, Row, RowKind};
use crate::shapes::Shape;
use crate::stats::{Summary, rotation_sets};

/// Host data of one peer set: f16 or int8 per the peer's kind.
pub(crate) enum Owned {
    F16(Vec<f16>),
    I8(Vec<i8>),
}

impl Owned {
    fn random(kind: BaselineKind, len: usize, seed: u64) -> Owned {
        match kind {
            BaselineKind::Fp16 => Owned::F16(random_f16(len, seed)),
            BaselineKind::Int8 => Owned::I8(random_i8(len, seed)),
        }
    }

    fn view(&self) -> HostData<'_> {
        match self {
            Owned::F16(v) => HostData::F16(v),
            Owned::I8(v) => HostData::I8(v),
        }
    }
}

/// Bytes of one input element of a peer of this kind.
fn elem_bytes(kind: BaselineKind) -> usize {
    match kind {
        BaselineKind::Fp16 => 2,
        BaselineKind::Int8 => 1,
    }
}

/// Loads `sets` weight sets into a peer, returning set 0's host copy.
pub(crate) fn load_peer_weights(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    n: usize,
    k: usize,
    sets: usize,
) -> Result<Owned> {
    peer.clear_weights();
    let kind = peer.kind();
    let host0 = Owned::random(kind, n * k, seed_for(cfg, n, k, 4, 0));
    peer.add_weights(n, k, host0.view())?;
    for s in 1..sets {
        peer.add_weights(n, k, Owned::random(kind, n * k, seed_for(cfg, n, k, 4, s)).view())?;
    }
    Ok(host0)
}

/// What timing one peer case yields.
pub(crate) struct PeerCase {
    /// Device time per run, runs back to back.
    pub kernel: Summary,
    /// Host clock around one call and its completion.
    pub call: Summary,
    /// Set 0's output against the f64 reference.
    pub check: Check,
}

/// Times one peer at (M, N, K) on already loaded weights: warm-up, kernel time, whole-call time,
/// then the check of a fresh run on set 0.
pub(crate) fn time_peer(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    host_w: &Owned,
    (m, n, k): (usize, usize, usize),
    sets: usize,
) -> Result<PeerCase> {
    peer.clear_activations();
    let kind = peer.kind();
    let host_x = Owned::random(kind, m * k, seed_for(cfg, m, k, 5, 0));
    peer.add_activations(m, k, host_x.view())?;
    for s in 1..sets {
        peer.add_activations(m, k, Owned::random(kind, m * k, seed_for(cfg, m, k, 5, s)).view())?;
    }
    for i in 0..cfg.warmup {
        peer.run(i % sets)?;
    }
    let kernel = kernel_time(cfg, sets, |first, runs| peer.time_batch(first, runs))?;
    let call = call_time(cfg, sets, |set| peer.time_call(set))?;
    peer.run(0)?;
    let out = peer.read_output()?;
    let positions = sample_positions(m, n, cfg.check_samples, seed_for(cfg, m, n, 6, 0));
    let check = check_peer(&out, host_x.view(), host_w.view(), (m, n, k), peer.accumulation(), &positions);
    peer.clear_activations();
    Ok(PeerCase { kernel, call, check })
}

/// Times one peer at one shape for every M.
pub(crate) fn peer_rows(
    peer: &mut dyn BaselineGemm,
    cfg: &RunConfig,
    shape: &Shape,
    log: &mut dyn FnMut(&str),
) -> Vec<Row> {
    let (n, k) = (shape.n, shape.k);
    let (name, kind) = (peer.name(), peer.kind());
    let row = |m: usize| Row::new(shape, m, name.clone(), RowKind::Baseline { kind });
    let sets = rotation_sets(n * k * elem_bytes(kind), cfg.rotate_bytes, cfg.max_sets);
    let host_w = match load_peer_weights(peer, cfg, n, k, sets) {
        Ok(w) => w,
        Err(e) => {
            log(&format!("  {shape} {name}: weights not loaded: {e}"));
            peer.clear_weights();
            return cfg.m_values.iter().map(|&m| row(m).failed(&e)).collect();
        }
    };
    let mut rows = Vec::new();
    for &m in &cfg.m_values {
        let r = match time_peer(peer, cfg, &host_w, (m, n, k), sets) {
            Ok(c) => {
                let bytes = (elem_bytes(kind) * (n * k + m * k) + peer.output_bytes() * m * n) as f64;
                row(m).measured(sets, bytes, c.kernel, c.call, c.check)
            }
            Err(e) => {
                peer.clear_activations();
                row(m).failed(&e)
            }
        };
        log(&progress_line(&r));
        rows.push(r);
    }
    peer.clear_weights();
    rows
}
