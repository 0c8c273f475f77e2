//! The conformance properties through the run-time dispatch layer (`w4a8::Backend`), on the backend
//! that `Backend::best()` picks here.

use conformance::backend_suite;
use w4a8::{Backend, BackendKind};

backend_suite!(best, BackendKind::Cpu, Backend, Backend::best);
