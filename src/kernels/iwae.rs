//! Wrapper for `shaders/iwae.wgsl`: importance log-weights of a chunk of samples and the
//! streaming log-sum-exp that turns any number of chunks into log (1/K) Σ_k w_k per example.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, Kernel, Result, Slot, View};

const WG: u32 = 64;
const SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    samples: u32,
    latent: u32,
    _pad: u32,
}

/// B examples, S samples per chunk, L latent dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IwaeShape {
    pub batch: u32,
    pub samples: u32,
    pub latent: u32,
}

/// The buffers of one chunk, in the sampler's row order r = s·B + b.
pub struct IwaeBuffers<'a> {
    /// [S·B] negative log-likelihoods (the first S·B entries of elbo.wgsl's stats).
    pub rec: &'a View,
    pub z: &'a View,
    pub eps: &'a View,
    /// [B, L] of the posterior.
    pub logvar: &'a View,
    /// [S·B] scratch: the chunk's log-weights.
    pub log_w: &'a View,
    /// [2·B]: the running (max, scaled sum), started with [`initial_state`].
    pub state: &'a View,
}

pub struct IwaeKernels {
    log_weights: Kernel,
    accumulate: Kernel,
}

/// Record `log_weights` then `accumulate`, after the chunk's decoder and ELBO rows.
pub struct IwaeDispatches {
    pub log_weights: Dispatch,
    pub accumulate: Dispatch,
    params: wgpu::Buffer,
    shape: IwaeShape,
}

impl IwaeDispatches {
    pub fn dispatches(&self) -> [&Dispatch; 2] {
        [&self.log_weights, &self.accumulate]
    }

    /// Counts only the first `used` samples of the bound chunk in the next runs (a last, partial
    /// chunk): the rest of the rows are computed but neither weighed nor accumulated.
    pub fn set_samples(&self, gpu: &Gpu, used: u32) {
        assert!(
            used >= 1 && used <= self.shape.samples,
            "samples out of range"
        );
        let p = Params {
            batch: self.shape.batch,
            samples: used,
            latent: self.shape.latent,
            _pad: 0,
        };
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
    }
}

/// The accumulator before any sample: m = −f32::MAX (as −∞), s = 0.
pub fn initial_state(batch: usize) -> Vec<f32> {
    let mut v = vec![-f32::MAX; batch];
    v.extend(std::iter::repeat_n(0.0, batch));
    v
}

/// log (1/K) Σ_k w_k per example from the accumulator after K samples in all.
pub fn finish(state: &[f32], samples: u64) -> Vec<f64> {
    let batch = state.len() / 2;
    (0..batch)
        .map(|b| state[b] as f64 + (state[batch + b] as f64).ln() - (samples as f64).ln())
        .collect()
}

impl IwaeKernels {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compose("iwae.wgsl");
        Ok(Self {
            log_weights: gpu.kernel("iwae.log_weights", &src, "log_weights", SLOTS, &[])?,
            accumulate: gpu.kernel("iwae.accumulate", &src, "accumulate", SLOTS, &[])?,
        })
    }

    pub fn bind(
        &self,
        gpu: &Gpu,
        shape: IwaeShape,
        bufs: &IwaeBuffers<'_>,
    ) -> Result<IwaeDispatches> {
        let IwaeShape {
            batch,
            samples,
            latent,
        } = shape;
        let rows = samples as u64 * batch as u64;
        let label = &self.log_weights.label;
        check_len(label, "rec", bufs.rec, rows)?;
        check_len(label, "z", bufs.z, rows * latent as u64)?;
        check_len(label, "eps", bufs.eps, rows * latent as u64)?;
        check_len(label, "logvar", bufs.logvar, batch as u64 * latent as u64)?;
        check_len(label, "log_w", bufs.log_w, rows)?;
        check_len(label, "state", bufs.state, 2 * batch as u64)?;
        let params = gpu.uniform(
            label,
            &Params {
                batch,
                samples,
                latent,
                _pad: 0,
            },
        );
        let bindings = [
            Binding::Uniform(&params),
            Binding::Storage(bufs.rec),
            Binding::Storage(bufs.z),
            Binding::Storage(bufs.eps),
            Binding::Storage(bufs.logvar),
            Binding::Storage(bufs.log_w),
            Binding::Storage(bufs.state),
        ];
        Ok(IwaeDispatches {
            log_weights: gpu.dispatch(
                &self.log_weights,
                &bindings,
                gpu.grid_1d((rows as u32).div_ceil(WG)),
            )?,
            accumulate: gpu.dispatch(
                &self.accumulate,
                &bindings,
                gpu.grid_1d(batch.div_ceil(WG)),
            )?,
            params,
            shape,
        })
    }
}
