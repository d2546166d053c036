//! Wrapper for `shaders/elbo.wgsl`: the fused negative ELBO, per sample and for the batch, with
//! every gradient, in two dispatches.
//!
//! Buffer layouts (f32, row-major), B samples, D data dimensions, L latent dimensions:
//! - inputs: x [B, D] targets; dec [B, D] decoder output (logits or means); dec_logvar [B, D] or
//!   [D] (learned Gaussian only); μ, logσ² [B, L];
//! - `stats` [3, B]: rec at 0..B, kl at B..2B, total = rec + β·kl at 2B..3B;
//! - gradients of scale·Σ_b total_b: d_dec [B, D]; d_dec_logvar [B, D] per element (learned
//!   Gaussian only; sum over b for a shared [D] log-variance); dμ, dlogσ² [B, L], written (the
//!   reparameterization backward then adds its terms);
//! - `batch` [4]: (Σ total, Σ rec, Σ kl, B); `running` [6]: += the same each time, for logging
//!   without a readback per step (zero it with `queue.write_buffer` per logging interval), then
//!   [4] the number of runs before the first with a non-finite total and [5] = 1 once one was
//!   seen (see [`Running`]).

use bytemuck::{Pod, Zeroable};

use super::{check_len, check_lens, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, ParamWrite, Result, Slot, View};

/// The reconstruction likelihood p(x | z) the decoder output parameterizes.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Likelihood {
    /// Bernoulli with the decoder output as logits (binarized or [0, 1] targets).
    #[default]
    Bernoulli,
    /// Gaussian with the decoder output as means and a fixed σ.
    Gaussian { sigma: f32 },
    /// Gaussian with means and a learned log-variance, per element [B, D] or, when `shared`,
    /// one per data dimension [D].
    GaussianLearned { shared: bool },
}

impl Likelihood {
    /// The shader's KIND override.
    pub fn kind(self) -> u32 {
        match self {
            Self::Bernoulli => 0,
            Self::Gaussian { .. } => 1,
            Self::GaussianLearned { .. } => 2,
        }
    }

    pub fn learns_variance(self) -> bool {
        matches!(self, Self::GaussianLearned { .. })
    }

    /// Elements of the decoder log-variance input for a batch of `batch` × `dim`.
    pub fn dec_logvar_len(self, batch: u64, dim: u64) -> u64 {
        match self {
            Self::GaussianLearned { shared: true } => dim,
            Self::GaussianLearned { shared: false } => batch * dim,
            _ => 0,
        }
    }
}

/// Storage buffers the `rows` entry binds.
pub const STORAGE_BUFFERS: u32 = 10;
const ROWS_SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
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
const TOTAL_SLOTS: &[Slot] = &[Slot::Uniform, Slot::Read, Slot::ReadWrite, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    dim: u32,
    latent: u32,
    _pad: u32,
    beta: f32,
    scale: f32,
    inv_var: f32,
    rec_const: f32,
}

/// Byte offset of `beta` in the params uniform.
const BETA_OFFSET: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElboShape {
    pub batch: u32,
    pub dim: u32,
    pub latent: u32,
}

impl ElboShape {
    pub fn stats_len(&self) -> u64 {
        3 * self.batch as u64
    }
}

pub struct ElboInputs<'a> {
    pub x: &'a View,
    pub dec: &'a View,
    /// Required exactly when the likelihood learns the variance.
    pub dec_logvar: Option<&'a View>,
    pub mu: &'a View,
    pub logvar: &'a View,
}

pub struct ElboOutputs<'a> {
    /// [3, B] (see the module docs).
    pub stats: &'a View,
    pub d_dec: &'a View,
    /// Required exactly when the likelihood learns the variance.
    pub d_dec_logvar: Option<&'a View>,
    pub dmu: &'a View,
    pub dlogvar: &'a View,
    /// [4]: (Σ total, Σ rec, Σ kl, B).
    pub batch: &'a View,
    /// [RUNNING_LEN]: += `batch` each run, plus the non-finite tracker (see [`Running`]).
    pub running: &'a View,
}

/// Length of the running accumulator.
pub const RUNNING_LEN: usize = 6;

/// The running accumulator read back: sums since the last reset and where a loss first went
/// non-finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Running {
    pub total: f64,
    pub rec: f64,
    pub kl: f64,
    pub count: f64,
    /// Runs (steps) since the reset before the first non-finite batch total, if there was one.
    pub first_nonfinite: Option<u64>,
}

impl Running {
    pub fn from_raw(v: &[f32]) -> Self {
        Self {
            total: v[0] as f64,
            rec: v[1] as f64,
            kl: v[2] as f64,
            count: v[3] as f64,
            first_nonfinite: (v[5] != 0.0).then_some(v[4] as u64),
        }
    }
}

/// The two dispatches of one bound ELBO, to be recorded in this order, and their parameters.
pub struct ElboDispatches {
    /// One workgroup per sample: stats and all gradients (`rows_vec4` when D % 4 == 0).
    pub rows: Dispatch,
    /// One workgroup: `batch` = the column sums of `stats`, `running` += `batch`.
    pub batch_total: Dispatch,
    params: wgpu::Buffer,
}

impl ElboDispatches {
    pub fn dispatches(&self) -> [&Dispatch; 2] {
        [&self.rows, &self.batch_total]
    }

    /// Changes β (KL warm-up) from the host; takes effect at the next submit.
    pub fn set_beta(&self, gpu: &Gpu, beta: f32) {
        gpu.apply(&self.beta_write(beta));
    }

    /// [`ElboDispatches::set_beta`]'s write, to apply or stage.
    pub fn beta_write(&self, beta: f32) -> ParamWrite {
        ParamWrite::new(&self.params, BETA_OFFSET, &beta)
    }
}

pub struct Elbo {
    likelihood: Likelihood,
    workgroup: u32,
    rows: Kernel,
    /// `rows` over vec4s of columns, used when D % 4 == 0 and the views allow it.
    rows_vec4: Kernel,
    batch_total: Kernel,
    /// Bound to the d_dec_logvar slot when the likelihood does not write it (one buffer cannot
    /// be bound both read-only and read-write in one dispatch, as the shared placeholder would).
    unused_out: View,
}

impl Elbo {
    /// The default workgroup size: 8 on software adapters (lavapipe runs a workgroup of 8 as one
    /// SIMD row, and wider trees were ~3x slower there), 64 elsewhere.
    pub fn default_workgroup(gpu: &Gpu) -> u32 {
        if gpu.is_software() { 8 } else { 64 }
    }

    pub fn new(gpu: &Gpu, likelihood: Likelihood) -> Result<Self> {
        Self::with_workgroup(gpu, likelihood, Self::default_workgroup(gpu))
    }

    /// `workgroup`: invocations per workgroup, a power of two within the adapter's limits.
    pub fn with_workgroup(gpu: &Gpu, likelihood: Likelihood, workgroup: u32) -> Result<Self> {
        super::check_row_kernel(gpu, "elbo", workgroup, STORAGE_BUFFERS)?;
        if let Likelihood::Gaussian { sigma } = likelihood
            && !(sigma.is_finite() && sigma > 0.0)
        {
            return Err(GpuError::Shape {
                kernel: "elbo".into(),
                reason: format!("Gaussian sigma must be positive and finite, got {sigma}"),
            });
        }
        let src = compose("elbo.wgsl");
        let constants = [
            ("KIND", likelihood.kind() as f64),
            ("WG", workgroup as f64),
            (
                "SHARED_LOGVAR",
                matches!(likelihood, Likelihood::GaussianLearned { shared: true }) as u8 as f64,
            ),
        ];
        Ok(Self {
            likelihood,
            workgroup,
            rows: gpu.kernel("elbo.rows", &src, "rows", ROWS_SLOTS, &constants)?,
            rows_vec4: gpu.kernel("elbo.rows_vec4", &src, "rows_vec4", ROWS_SLOTS, &constants)?,
            batch_total: gpu.kernel(
                "elbo.batch_total",
                &src,
                "batch_total",
                TOTAL_SLOTS,
                &constants,
            )?,
            unused_out: gpu.zeros("elbo.unused", 4)?,
        })
    }

    pub fn likelihood(&self) -> Likelihood {
        self.likelihood
    }

    /// Invocations per workgroup: each sums ⌈D/WG⌉ terms serially before a log2(WG)-level tree.
    pub fn workgroup(&self) -> u32 {
        self.workgroup
    }

    /// `batch_total` alone over per-example `stats` [3, batch] that another kernel wrote (the
    /// K-sample loss): `batch_sums` = their column sums, `running` += them.
    pub fn batch_total(
        &self,
        gpu: &Gpu,
        batch: u32,
        stats: &View,
        batch_sums: &View,
        running: &View,
    ) -> Result<Dispatch> {
        let label = &self.batch_total.label;
        check_len(label, "stats", stats, 3 * batch as u64)?;
        check_len(label, "batch", batch_sums, 4)?;
        check_len(label, "running", running, RUNNING_LEN as u64)?;
        let params = gpu.uniform(
            "elbo.total.params",
            &Params {
                batch,
                dim: 0,
                latent: 0,
                _pad: 0,
                beta: 1.0,
                scale: 1.0,
                inv_var: 0.0,
                rec_const: 0.0,
            },
        );
        gpu.dispatch(
            &self.batch_total,
            &[
                Binding::Uniform(&params),
                Binding::Storage(stats),
                Binding::Storage(batch_sums),
                Binding::Storage(running),
            ],
            [1, 1, 1],
        )
    }

    /// Binds the buffers of one batch shape. `scale` multiplies every gradient (1 for the sum
    /// over the batch, 1/B for the mean); β weights the KL (see [`ElboDispatches::set_beta`]).
    pub fn bind(
        &self,
        gpu: &Gpu,
        shape: ElboShape,
        beta: f32,
        scale: f32,
        inputs: &ElboInputs<'_>,
        outputs: &ElboOutputs<'_>,
    ) -> Result<ElboDispatches> {
        let label = &self.rows.label;
        let shape_err = |reason: String| GpuError::Shape {
            kernel: label.clone(),
            reason,
        };
        if shape.batch == 0 || shape.dim == 0 || shape.latent == 0 {
            return Err(shape_err(format!("empty shape {shape:?}")));
        }
        let (b, d, l) = (shape.batch as u64, shape.dim as u64, shape.latent as u64);
        if b * d.max(l) > u32::MAX as u64 {
            return Err(shape_err(format!("{shape:?} exceeds 32-bit indexing")));
        }
        let learned = self.likelihood.learns_variance();
        if inputs.dec_logvar.is_some() != learned || outputs.d_dec_logvar.is_some() != learned {
            return Err(shape_err(format!(
                "decoder log-variance buffers must be given exactly for a learned variance \
                 ({:?})",
                self.likelihood
            )));
        }
        let mut checks = vec![
            ("x", inputs.x, b * d),
            ("dec", inputs.dec, b * d),
            ("mu", inputs.mu, b * l),
            ("logvar", inputs.logvar, b * l),
            ("stats", outputs.stats, shape.stats_len()),
            ("d_dec", outputs.d_dec, b * d),
            ("dmu", outputs.dmu, b * l),
            ("dlogvar", outputs.dlogvar, b * l),
            ("batch", outputs.batch, 4),
            ("running", outputs.running, RUNNING_LEN as u64),
        ];
        if let (Some(v), Some(dv)) = (inputs.dec_logvar, outputs.d_dec_logvar) {
            checks.push(("dec_logvar", v, self.likelihood.dec_logvar_len(b, d)));
            checks.push(("d_dec_logvar", dv, b * d));
        }
        check_lens(label, &checks)?;

        let (inv_var, half_log_norm) = match self.likelihood {
            Likelihood::Bernoulli => (0.0, 0.0),
            Likelihood::Gaussian { sigma } => {
                let var = sigma as f64 * sigma as f64;
                (1.0 / var, 0.5 * (crate::cpu::elbo::LN_2PI + var.ln()))
            }
            Likelihood::GaussianLearned { .. } => (0.0, 0.5 * crate::cpu::elbo::LN_2PI),
        };
        let params = gpu.uniform(
            "elbo.params",
            &Params {
                batch: shape.batch,
                dim: shape.dim,
                latent: shape.latent,
                _pad: 0,
                beta,
                scale,
                inv_var: inv_var as f32,
                rec_const: (d as f64 * half_log_norm) as f32,
            },
        );
        // vec4 path: the [B, D] arrays are read as vec4s, so D % 4 == 0 and each view starts on
        // a 16-byte boundary; they are bound at exactly their used length (a whole number of
        // vec4s).
        let mut big = vec![
            (inputs.x, b * d),
            (inputs.dec, b * d),
            (outputs.d_dec, b * d),
        ];
        if let (Some(v), Some(dv)) = (inputs.dec_logvar, outputs.d_dec_logvar) {
            big.push((v, self.likelihood.dec_logvar_len(b, d)));
            big.push((dv, b * d));
        }
        let vec4 = d % 4 == 0 && big.iter().all(|(v, _)| v.offset % 4 == 0);
        let fit = |v: &View, need: u64| if vec4 { v.slice(0, need) } else { v.clone() };
        let x = fit(inputs.x, b * d);
        let dec = fit(inputs.dec, b * d);
        let d_dec = fit(outputs.d_dec, b * d);
        let dec_logvar = inputs
            .dec_logvar
            .map(|v| fit(v, self.likelihood.dec_logvar_len(b, d)));
        let d_dec_logvar = fit(
            outputs.d_dec_logvar.unwrap_or(&self.unused_out),
            if learned { b * d } else { 4 },
        );
        let rows = gpu.dispatch(
            if vec4 { &self.rows_vec4 } else { &self.rows },
            &[
                Binding::Uniform(&params),
                Binding::Storage(&x),
                Binding::Storage(&dec),
                dec_logvar
                    .as_ref()
                    .map_or(Binding::Unused, Binding::Storage),
                Binding::Storage(inputs.mu),
                Binding::Storage(inputs.logvar),
                Binding::Storage(outputs.stats),
                Binding::Storage(&d_dec),
                Binding::Storage(&d_dec_logvar),
                Binding::Storage(outputs.dmu),
                Binding::Storage(outputs.dlogvar),
            ],
            gpu.grid_1d(shape.batch),
        )?;
        let batch_total = gpu.dispatch(
            &self.batch_total,
            &[
                Binding::Uniform(&params),
                Binding::Storage(outputs.stats),
                Binding::Storage(outputs.batch),
                Binding::Storage(outputs.running),
            ],
            [1, 1, 1],
        )?;
        Ok(ElboDispatches {
            rows,
            batch_total,
            params,
        })
    }
}
