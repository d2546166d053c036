//! Wrapper for `shaders/gauss_kl.wgsl`: KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) between two diagonal
//! Gaussians, per row, and its gradients with respect to all four inputs, in one dispatch (one
//! workgroup per row). The latent term of a hierarchical VAE, whose priors are themselves
//! network outputs; [`crate::cpu::gauss_kl`] is its f64 twin.
//!
//! Buffer layouts (f32, row-major), B rows, L latent dimensions:
//! - inputs: μ_q, logσ²_q, μ_p, logσ²_p [B, L] (log-variances);
//! - `kl` [B]: Σ_l KL_{b,l}, always written;
//! - gradients of scale·Σ_b β·kl[b]: dμ_q, dlogσ²_q, dμ_p, dlogσ²_p [B, L], written, or added to
//!   what they hold when the kernel was built with `accumulate` (in a hierarchy the same
//!   parameters also receive gradients from elsewhere).
//!
//! An output may share a buffer with another output (disjoint ranges) but not with an input:
//! one dispatch cannot bind a buffer both read-only and read-write.

use bytemuck::{Pod, Zeroable};

use super::{check_len, check_lens, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, Result, Slot, View};

/// Storage buffers the kernel binds.
pub const STORAGE_BUFFERS: u32 = 9;
const SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    latent: u32,
    beta: f32,
    scale: f32,
}

/// Byte offset of `beta` in the params uniform.
const BETA_OFFSET: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaussKlShape {
    pub batch: u32,
    pub latent: u32,
}

impl GaussKlShape {
    /// Elements of each [B, L] array.
    pub fn len(&self) -> u64 {
        self.batch as u64 * self.latent as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct GaussKlInputs<'a> {
    pub mu_q: &'a View,
    pub logvar_q: &'a View,
    pub mu_p: &'a View,
    pub logvar_p: &'a View,
}

pub struct GaussKlOutputs<'a> {
    /// [B]
    pub kl: &'a View,
    pub dmu_q: &'a View,
    pub dlogvar_q: &'a View,
    pub dmu_p: &'a View,
    pub dlogvar_p: &'a View,
}

/// One bound KL dispatch and its parameters.
pub struct GaussKlDispatch {
    pub rows: Dispatch,
    params: wgpu::Buffer,
}

impl GaussKlDispatch {
    pub fn dispatches(&self) -> [&Dispatch; 1] {
        [&self.rows]
    }

    /// Changes β (KL warm-up) from the host; takes effect at the next submit.
    pub fn set_beta(&self, gpu: &Gpu, beta: f32) {
        gpu.queue
            .write_buffer(&self.params, BETA_OFFSET, bytemuck::bytes_of(&beta));
    }
}

pub struct GaussKl {
    accumulate: bool,
    workgroup: u32,
    rows: Kernel,
}

impl GaussKl {
    /// The default workgroup size, as for the ELBO: 8 on software adapters (one SIMD row on
    /// lavapipe), 64 elsewhere.
    pub fn default_workgroup(gpu: &Gpu) -> u32 {
        super::elbo::Elbo::default_workgroup(gpu)
    }

    /// `accumulate`: add the gradients to what the arrays hold instead of overwriting them.
    pub fn new(gpu: &Gpu, accumulate: bool) -> Result<Self> {
        Self::with_workgroup(gpu, accumulate, Self::default_workgroup(gpu))
    }

    /// `workgroup`: invocations per workgroup, a power of two within the adapter's limits.
    pub fn with_workgroup(gpu: &Gpu, accumulate: bool, workgroup: u32) -> Result<Self> {
        super::check_row_kernel(gpu, "gauss_kl", workgroup, STORAGE_BUFFERS)?;
        let src = compose("gauss_kl.wgsl");
        let label = if accumulate {
            "gauss_kl.rows.acc"
        } else {
            "gauss_kl.rows"
        };
        let constants = [
            ("WG", workgroup as f64),
            ("ACCUMULATE", accumulate as u8 as f64),
        ];
        Ok(Self {
            accumulate,
            workgroup,
            rows: gpu.kernel(label, &src, "rows", SLOTS, &constants)?,
        })
    }

    pub fn accumulate(&self) -> bool {
        self.accumulate
    }

    /// Invocations per workgroup: each sums ⌈L/WG⌉ terms serially before a log2(WG)-level tree.
    pub fn workgroup(&self) -> u32 {
        self.workgroup
    }

    /// Binds the buffers of one shape. `scale` multiplies every gradient (1 for the sum over the
    /// batch, 1/B for the mean); β weights the KL (see [`GaussKlDispatch::set_beta`]).
    pub fn bind(
        &self,
        gpu: &Gpu,
        shape: GaussKlShape,
        beta: f32,
        scale: f32,
        inputs: &GaussKlInputs<'_>,
        outputs: &GaussKlOutputs<'_>,
    ) -> Result<GaussKlDispatch> {
        let label = &self.rows.label;
        let shape_err = |reason: String| GpuError::Shape {
            kernel: label.clone(),
            reason,
        };
        if shape.is_empty() {
            return Err(shape_err(format!("empty shape {shape:?}")));
        }
        let n = shape.len();
        if n > u32::MAX as u64 {
            return Err(shape_err(format!("{shape:?} exceeds 32-bit indexing")));
        }
        let ins = [
            ("mu_q", inputs.mu_q),
            ("logvar_q", inputs.logvar_q),
            ("mu_p", inputs.mu_p),
            ("logvar_p", inputs.logvar_p),
        ];
        let outs = [
            ("kl", outputs.kl, shape.batch as u64),
            ("dmu_q", outputs.dmu_q, n),
            ("dlogvar_q", outputs.dlogvar_q, n),
            ("dmu_p", outputs.dmu_p, n),
            ("dlogvar_p", outputs.dlogvar_p, n),
        ];
        for (name, v) in ins {
            check_len(label, name, v, n)?;
        }
        check_lens(label, &outs)?;
        for (k, &(name, v, need)) in outs.iter().enumerate() {
            if let Some((input, _)) = ins.iter().find(|(_, i)| i.buffer == v.buffer) {
                return Err(shape_err(format!(
                    "output `{name}` shares a buffer with input `{input}`"
                )));
            }
            for &(other, w, w_need) in &outs[k + 1..] {
                let disjoint = v.offset + need <= w.offset || w.offset + w_need <= v.offset;
                if v.buffer == w.buffer && !disjoint {
                    return Err(shape_err(format!("outputs `{name}` and `{other}` overlap")));
                }
            }
        }
        let params = gpu.uniform(
            "gauss_kl.params",
            &Params {
                batch: shape.batch,
                latent: shape.latent,
                beta,
                scale,
            },
        );
        let rows = gpu.dispatch(
            &self.rows,
            &[
                Binding::Uniform(&params),
                Binding::Storage(inputs.mu_q),
                Binding::Storage(inputs.logvar_q),
                Binding::Storage(inputs.mu_p),
                Binding::Storage(inputs.logvar_p),
                Binding::Storage(outputs.kl),
                Binding::Storage(outputs.dmu_q),
                Binding::Storage(outputs.dlogvar_q),
                Binding::Storage(outputs.dmu_p),
                Binding::Storage(outputs.dlogvar_p),
            ],
            gpu.grid_1d(shape.batch),
        )?;
        Ok(GaussKlDispatch { rows, params })
    }
}
