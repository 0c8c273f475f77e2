//! The operations, one module each, and the [`Gemm`] implementation that dispatches to them.

mod activations;
mod f16_gemm;
mod gemm;
mod gemm_decode;
mod gemm_tiled;
mod output;
mod weights;

use half::f16;
use w4a8_core::gemm::check_plan_args;
use w4a8_core::{
    ActivationTransform, DeviceInfo, Gemm, Granularity, KernelPlan, QuantizedActivations, Result, W4A8Weights,
};

use crate::WgpuBackend;
use crate::layout;
use crate::options::GemmKernel;
use crate::shaders;
use crate::tensors::{WgpuActivations, WgpuOutput, WgpuWeights};

impl Gemm for WgpuBackend {
    type Weights = WgpuWeights;
    type Activations = WgpuActivations;
    type Output = WgpuOutput;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn prepare(&self, weights: &W4A8Weights) -> Result<WgpuWeights> {
        self.prepare_weights(weights)
    }

    fn read_weights(&self, w: &WgpuWeights) -> Result<W4A8Weights> {
        self.read_back_weights(w)
    }

    fn quantize_activations_with(
        &self,
        x: &[f16],
        m: usize,
        k: usize,
        t: &ActivationTransform<'_>,
    ) -> Result<WgpuActivations> {
        self.quantize_on_device(x, m, k, t)
    }

    fn upload_activations(&self, x: &QuantizedActivations) -> Result<WgpuActivations> {
        self.upload_quantized(x)
    }

    fn read_activations(&self, x: &WgpuActivations) -> Result<QuantizedActivations> {
        self.read_back_activations(x)
    }

    fn alloc_output(&self, m: usize, n: usize, fill: f16) -> Result<WgpuOutput> {
        self.new_output(m, n, fill)
    }

    fn gemm_into(&self, x: &WgpuActivations, w: &WgpuWeights, y: &mut WgpuOutput) -> Result<()> {
        self.gemm_with(x, w, y, GemmKernel::Auto)
    }

    fn kernel_plan(&self, m: usize, n: usize, k: usize, granularity: Granularity) -> Result<KernelPlan> {
        check_plan_args(m, n, k, granularity)?;
        let chunks = layout::chunk_ranges(n, self.weight_chunk_columns(k)?);
        let plan = if m <= shaders::DECODE_M_MAX {
            self.decode_plan(m, &chunks)?
        } else {
            self.tiled_plan(m, n, k, &chunks)?
        };
        Ok(plan.with("weight chunks", chunks.len()))
    }

    fn read_output(&self, y: &WgpuOutput) -> Result<Vec<f16>> {
        self.read_back_output(y)
    }

    fn synchronize(&self) -> Result<()> {
        self.check_lost()?;
        self.wait()
    }
}
