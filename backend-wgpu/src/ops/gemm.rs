//! The W4A8 GEMM entry points: kernel choice, submission and timing.

use w4a8_core::Result;
use w4a8_core::gemm::check_gemm_args;

use crate::WgpuBackend;
#[cfg(target_arch = "wasm32")]
use crate::device::unavailable;
use crate::options::GemmKernel;
use crate::pipelines::Dispatch;
use crate::shaders;
use crate::tensors::{DeviceBuffer, WgpuActivations, WgpuOutput, WgpuWeights};

impl WgpuBackend {
    /// Builds the dispatches of `y = x · wᵀ (+ bias)`.
    pub(crate) fn gemm_dispatches(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &WgpuOutput,
        kernel: GemmKernel,
    ) -> Result<(Vec<Dispatch>, Vec<DeviceBuffer>)> {
        check_gemm_args(self.info.id, x, w, y)?;
        let decode = match kernel {
            GemmKernel::Auto => x.m <= shaders::DECODE_M_MAX,
            GemmKernel::Decode => true,
            GemmKernel::Tiled => false,
        };
        if decode { self.decode_dispatches(x, w, y) } else { self.tiled_dispatches(x, w, y) }
    }

    /// [`Gemm::gemm_into`] with an explicit kernel choice (benches and tests pin one).
    pub fn gemm_with(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &mut WgpuOutput,
        kernel: GemmKernel,
    ) -> Result<()> {
        self.unscoped(|| {
            let (dispatches, _keep) = self.gemm_dispatches(x, w, y, kernel)?;
            self.submit(&dispatches, None);
            Ok(())
        })
    }

    /// Runs the W4A8 GEMM `runs` times and returns each run's duration in seconds, measured as
    /// [`WgpuBackend::timer_kind`] says.
    pub fn time_gemm(
        &self,
        x: &WgpuActivations,
        w: &WgpuWeights,
        y: &mut WgpuOutput,
        kernel: GemmKernel,
        runs: usize,
    ) -> Result<Vec<f64>> {
        let (dispatches, _keep) = self.scoped(|| self.gemm_dispatches(x, w, y, kernel))?;
        self.time_dispatches(&dispatches, runs)
    }

    pub(crate) fn time_dispatches(&self, dispatches: &[Dispatch], runs: usize) -> Result<Vec<f64>> {
        let mut times = Vec::with_capacity(runs);
        if self.timestamps {
            let query_set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("w4a8 timer"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.create_buffer(
                "w4a8 timestamps",
                16,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            )?;
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            for _ in 0..runs {
                self.scoped(|| {
                    self.submit(dispatches, Some(&query_set));
                    let mut encoder = self.device.create_command_encoder(&Default::default());
                    encoder.resolve_query_set(&query_set, 0..2, &resolve, 0);
                    self.queue.submit([encoder.finish()]);
                    Ok(())
                })?;
                let bytes = self.read_bytes(&resolve, 16)?;
                let t: &[u64] = bytemuck::cast_slice(&bytes);
                times.push(t[1].wrapping_sub(t[0]) as f64 * period);
            }
        } else {
            #[cfg(target_arch = "wasm32")]
            return Err(unavailable("host timing needs a clock and a blocking wait; not on wasm32"));
            #[cfg(not(target_arch = "wasm32"))]
            for _ in 0..runs {
                self.wait()?;
                let start = std::time::Instant::now();
                self.scoped(|| {
                    self.submit(dispatches, None);
                    Ok(())
                })?;
                self.wait()?;
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    }
}
