//! Every property of the conformance contract, on every backend compiled in. One line per backend.

use conformance::backend_suite;
use conformance::w4a8_core::{BackendKind, CpuOracle};

backend_suite!(cpu, BackendKind::Cpu, CpuOracle, || Ok(CpuOracle::new()));
