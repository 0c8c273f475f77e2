//! Run-time backend choice: one enum over every backend compiled in, itself a [`Gemm`].

use half::f16;
use w4a8_core::gemm::check_owner;
use w4a8_core::oracle::{CpuActivations, CpuOutput, CpuWeights};
use w4a8_core::{
    ActivationTransform, BackendKind, CpuOracle, DeviceInfo, DeviceTensor, Error, Gemm, Granularity,
    KernelPlan, QuantizedActivations, Result, W4A8Weights,
};

#[cfg(feature = "cuda")]
use w4a8_cuda::{CudaActivations, CudaBackend, CudaOutput, CudaWeights};
#[cfg(feature = "wgpu")]
use w4a8_wgpu::{WgpuActivations, WgpuBackend, WgpuOutput, WgpuWeights};

/// One of the backends compiled in.
///
/// A backend is opened once and lives long; its size does not matter, so the variants are not boxed.
///
/// `Send + Sync` on native targets, with whichever backends are compiled in, as are its handles
/// ([`AnyWeights`], [`AnyActivations`], [`AnyOutput`]): open one backend and share it by reference
/// across threads (see the thread-safety notes of [`Gemm`] and of each backend type). Checked at
/// compile time.
#[non_exhaustive]
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// The exact CPU oracle.
    Cpu(CpuOracle),
    /// WGSL compute shaders on wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu(WgpuBackend),
    /// CUDA kernels on int8 tensor cores.
    #[cfg(feature = "cuda")]
    Cuda(CudaBackend),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.info();
        write!(f, "Backend::{}({:?}, device #{})", info.backend, info.name, info.id)
    }
}

/// What opening one backend gave: its device, or why it is unavailable.
#[derive(Debug)]
pub struct Probe {
    /// Which backend.
    pub kind: BackendKind,
    /// Its device, or the error that says why not.
    pub result: Result<DeviceInfo>,
}

impl Backend {
    /// The backends compiled into this build, fastest first.
    pub fn compiled() -> Vec<BackendKind> {
        BackendKind::ALL
            .into_iter()
            .filter(|k| match k {
                BackendKind::Cuda => cfg!(feature = "cuda"),
                BackendKind::Wgpu => cfg!(feature = "wgpu"),
                BackendKind::Cpu => true,
            })
            .collect()
    }

    /// Opens the backend `kind`; [`Error::Unavailable`] if it is not compiled in or finds no device.
    pub fn open(kind: BackendKind) -> Result<Backend> {
        match kind {
            BackendKind::Cpu => Ok(Backend::Cpu(CpuOracle::new())),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => WgpuBackend::new().map(Backend::Wgpu),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => CudaBackend::new().map(Backend::Cuda),
            #[allow(unreachable_patterns)]
            other => Err(Error::Unavailable {
                backend: other,
                reason: format!("not compiled in: build with `--features {other}`"),
            }),
        }
    }

    /// Opens a backend by name (`cpu`, `wgpu`, `cuda`), or the best one for `auto`.
    pub fn open_named(name: &str) -> Result<Backend> {
        if name.trim().eq_ignore_ascii_case("auto") {
            return Backend::best();
        }
        let kind = BackendKind::from_name(name).ok_or_else(|| Error::Unavailable {
            backend: BackendKind::Cpu,
            reason: format!("unknown backend {name:?}: expected auto, cpu, wgpu or cuda"),
        })?;
        Backend::open(kind)
    }

    /// The best backend present: `W4A8_BACKEND` if set, else CUDA, then wgpu, then the CPU oracle.
    pub fn best() -> Result<Backend> {
        if let Ok(name) = std::env::var("W4A8_BACKEND") {
            return Backend::open_named(&name);
        }
        for kind in Backend::compiled() {
            if let Ok(b) = Backend::open(kind) {
                return Ok(b);
            }
        }
        unreachable!("the CPU oracle always opens")
    }

    /// Tries every compiled-in backend and reports what each found.
    pub fn probe_all() -> Vec<Probe> {
        Backend::compiled()
            .into_iter()
            .map(|kind| Probe { kind, result: Backend::open(kind).map(|b| b.info().clone()) })
            .collect()
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.info().backend
    }
}

/// Runs `$body` with `$b` bound to the inner value of `$enum` (Backend or a handle enum: all have one
/// variant per backend, with the same names), whichever it is.
macro_rules! dispatch {
    ($enum:ident, $self:expr, $b:ident => $body:expr) => {
        match $self {
            $enum::Cpu($b) => $body,
            #[cfg(feature = "wgpu")]
            $enum::Wgpu($b) => $body,
            #[cfg(feature = "cuda")]
            $enum::Cuda($b) => $body,
        }
    };
}

/// Declares a handle enum with one variant per backend, plus the conversions [`dispatch!`] relies on:
/// `From<inner>` to wrap results and [`Pick`] to unwrap arguments (a wrong variant is a foreign buffer).
macro_rules! handle_enum {
    ($(#[$doc:meta])* $name:ident, $cpu:ty, $wgpu:ident, $cuda:ident) => {
        $(#[$doc])*
        #[non_exhaustive]
        pub enum $name {
            /// Held by the CPU oracle.
            Cpu($cpu),
            /// Held by the wgpu backend.
            #[cfg(feature = "wgpu")]
            Wgpu($wgpu),
            /// Held by the CUDA backend.
            #[cfg(feature = "cuda")]
            Cuda($cuda),
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let (rows, cols) = self.shape();
                write!(f, "{}({rows}×{cols} on device #{})", stringify!($name), self.device_id())
            }
        }

        impl DeviceTensor for $name {
            fn device_id(&self) -> u64 {
                dispatch!($name, self, h => h.device_id())
            }
            fn shape(&self) -> (usize, usize) {
                dispatch!($name, self, h => h.shape())
            }
        }

        impl From<$cpu> for $name {
            fn from(h: $cpu) -> Self {
                $name::Cpu(h)
            }
        }
        impl Pick<$cpu> for $name {
            fn pick(&self) -> Option<&$cpu> {
                match self {
                    $name::Cpu(h) => Some(h),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn pick_mut(&mut self) -> Option<&mut $cpu> {
                match self {
                    $name::Cpu(h) => Some(h),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
        #[cfg(feature = "wgpu")]
        impl From<$wgpu> for $name {
            fn from(h: $wgpu) -> Self {
                $name::Wgpu(h)
            }
        }
        #[cfg(feature = "wgpu")]
        impl Pick<$wgpu> for $name {
            fn pick(&self) -> Option<&$wgpu> {
                match self {
                    $name::Wgpu(h) => Some(h),
                    _ => None,
                }
            }
            fn pick_mut(&mut self) -> Option<&mut $wgpu> {
                match self {
                    $name::Wgpu(h) => Some(h),
                    _ => None,
                }
            }
        }
        #[cfg(feature = "cuda")]
        impl From<$cuda> for $name {
            fn from(h: $cuda) -> Self {
                $name::Cuda(h)
            }
        }
        #[cfg(feature = "cuda")]
        impl Pick<$cuda> for $name {
            fn pick(&self) -> Option<&$cuda> {
                match self {
                    $name::Cuda(h) => Some(h),
                    _ => None,
                }
            }
            fn pick_mut(&mut self) -> Option<&mut $cuda> {
                match self {
                    $name::Cuda(h) => Some(h),
                    _ => None,
                }
            }
        }
    };
}

/// Unwraps the variant of a handle enum that belongs to one backend.
trait Pick<T> {
    fn pick(&self) -> Option<&T>;
    fn pick_mut(&mut self) -> Option<&mut T>;
}

handle_enum!(
    /// Prepared weights of any backend.
    AnyWeights, CpuWeights, WgpuWeights, CudaWeights
);
handle_enum!(
    /// Quantized activations of any backend.
    AnyActivations, CpuActivations, WgpuActivations, CudaActivations
);
handle_enum!(
    /// An output buffer of any backend.
    AnyOutput, CpuOutput, WgpuOutput, CudaOutput
);

/// The inner handle for this backend, or [`Error::ForeignBuffer`] if it was made by another backend.
fn pick<'a, T, H: Pick<T> + DeviceTensor>(what: &'static str, h: &'a H, this: u64) -> Result<&'a T> {
    match h.pick() {
        Some(t) => Ok(t),
        None => Err(Error::ForeignBuffer { what, owner: h.device_id(), this }),
    }
}

fn pick_mut<'a, T, H: Pick<T> + DeviceTensor>(
    what: &'static str,
    h: &'a mut H,
    this: u64,
) -> Result<&'a mut T> {
    check_owner(what, h, this)?;
    let owner = h.device_id();
    h.pick_mut().ok_or(Error::ForeignBuffer { what, owner, this })
}

impl Gemm for Backend {
    type Weights = AnyWeights;
    type Activations = AnyActivations;
    type Output = AnyOutput;

    fn info(&self) -> &DeviceInfo {
        dispatch!(Backend, self, b => b.info())
    }

    fn prepare(&self, weights: &W4A8Weights) -> Result<AnyWeights> {
        dispatch!(Backend, self, b => b.prepare(weights).map(Into::into))
    }

    fn read_weights(&self, weights: &AnyWeights) -> Result<W4A8Weights> {
        dispatch!(Backend, self, b => b.read_weights(pick("weights", weights, b.info().id)?))
    }

    fn quantize_activations_with(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<AnyActivations> {
        dispatch!(Backend, self, b => b.quantize_activations_with(x, m, k, t).map(Into::into))
    }

    fn upload_activations(&self, x: &QuantizedActivations) -> Result<AnyActivations> {
        dispatch!(Backend, self, b => b.upload_activations(x).map(Into::into))
    }

    fn read_activations(&self, x: &AnyActivations) -> Result<QuantizedActivations> {
        dispatch!(Backend, self, b => b.read_activations(pick("activations", x, b.info().id)?))
    }

    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<AnyOutput> {
        dispatch!(Backend, self, b => b.alloc_output(m, n, fill).map(Into::into))
    }

    fn gemm_into(&self, x: &AnyActivations, w: &AnyWeights, y: &mut AnyOutput) -> Result<()> {
        dispatch!(Backend, self, b => {
            let id = b.info().id;
            b.gemm_into(pick("activations", x, id)?, pick("weights", w, id)?, pick_mut("output", y, id)?)
        })
    }

    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan> {
        dispatch!(Backend, self, b => b.kernel_plan(m, n, k, granularity))
    }

    fn read_output(&self, y: &AnyOutput) -> Result<Vec<f16>> {
        dispatch!(Backend, self, b => b.read_output(pick("output", y, b.info().id)?))
    }

    fn synchronize(&self) -> Result<()> {
        dispatch!(Backend, self, b => b.synchronize())
    }
}

// The thread-safety contract of `Backend`, checked at compile time for every backend compiled in
// (the CUDA backend's types through `AnyWeights` and friends when the `cuda` feature is on).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Backend>();
    assert_send_sync::<AnyWeights>();
    assert_send_sync::<AnyActivations>();
    assert_send_sync::<AnyOutput>();
};
