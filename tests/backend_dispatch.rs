//! The conformance properties through the run-time dispatch layer (`w4a8::Backend`), on the backend
//! that `Backend::best()` picks here.

use conformance::backend_suite;
use w4a8::{Backend, BackendKind};

backend_suite!(best, BackendKind::Cpu, Backend, Backend::best);

/// A handle made by one backend variant and passed to another is a foreign buffer, not a crash.
#[test]
fn handles_do_not_cross_backends() {
    use w4a8::{Error, Gemm, f16};
    let kinds: Vec<Backend> = Backend::compiled().into_iter().filter_map(|k| Backend::open(k).ok()).collect();
    let (x, w) = conformance::inputs::gemm_inputs(&conformance::inputs::GemmShape {
        m: 2,
        n: 3,
        k: 32,
        granularity: w4a8::Granularity::PerChannel,
        bias: false,
        seed: 1,
        values: conformance::inputs::Values::Typical,
    });
    for a in &kinds {
        for b in &kinds {
            if std::ptr::eq(a, b) {
                continue;
            }
            let (xa, wa, mut ya) = (
                a.upload_activations(&x).unwrap(),
                a.prepare(&w).unwrap(),
                a.alloc_output(2, 3, f16::ZERO).unwrap(),
            );
            let (xb, wb) = (b.upload_activations(&x).unwrap(), b.prepare(&w).unwrap());
            let foreign = |r: w4a8::Result<()>| matches!(r, Err(Error::ForeignBuffer { .. }));
            assert!(foreign(b.gemm_into(&xa, &wb, &mut ya)), "{} accepted {}'s buffers", b.kind(), a.kind());
            assert!(foreign(a.gemm_into(&xb, &wa, &mut ya)));
            assert!(matches!(b.read_output(&ya), Err(Error::ForeignBuffer { .. })));
            assert!(matches!(b.read_weights(&wa), Err(Error::ForeignBuffer { .. })));
            a.gemm_into(&xa, &wa, &mut ya).unwrap();
        }
    }
    // With only the CPU oracle compiled in, two instances still refuse each other's handles.
    let (a, b) = (Backend::open(BackendKind::Cpu).unwrap(), Backend::open(BackendKind::Cpu).unwrap());
    let wa = a.prepare(&w).unwrap();
    assert!(matches!(b.read_weights(&wa), Err(Error::ForeignBuffer { .. })));
}

/// Asking for a backend that is not compiled in, or by an unknown name, is `Unavailable`.
#[test]
fn unknown_or_missing_backends_are_unavailable() {
    assert!(matches!(Backend::open_named("tpu"), Err(w4a8::Error::Unavailable { .. })));
    for kind in BackendKind::ALL {
        if !Backend::compiled().contains(&kind) {
            let e = Backend::open(kind).unwrap_err();
            assert!(e.to_string().contains("not compiled in"), "{e}");
        }
    }
}
