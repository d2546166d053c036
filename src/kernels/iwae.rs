//! Wrapper for `shaders/iwae.wgsl`: importance log-weights of a chunk of samples and the
//! streaming log-sum-exp that turns any number of chunks into log (1/K) Σ_k w_k per example.

use bytemuck::{Pod, Zeroable};

use super::{check_len, check_lens, compose};
use crate::gpu::{Binding, Dispatch, Gpu, Kernel, ParamWrite, Result, Slot, View};

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
    /// [S·B, L]; for a hierarchy the upper layers' summed latent terms [S·B] instead
    /// (`shaders/hierarchy.wgsl`).
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
    hierarchy: bool,
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
    /// `hierarchy`: the model has stochastic layers above z_1 (see [`IwaeBuffers::z`]).
    pub fn new(gpu: &Gpu, hierarchy: bool) -> Result<Self> {
        let src = compose("iwae.wgsl");
        let constants = [("HIERARCHY", hierarchy as u8 as f64)];
        Ok(Self {
            log_weights: gpu.kernel("iwae.log_weights", &src, "log_weights", SLOTS, &constants)?,
            accumulate: gpu.kernel("iwae.accumulate", &src, "accumulate", SLOTS, &constants)?,
            hierarchy,
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
        let z_len = if self.hierarchy {
            rows
        } else {
            rows * latent as u64
        };
        check_len(label, "z", bufs.z, z_len)?;
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

// ---- Training with K samples per example ------------------------------------------------------

/// What training maximizes with K posterior samples per example (see `shaders/iwae.wgsl`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// The ELBO, its reconstruction term averaged over the K samples, the KL analytic.
    #[default]
    Elbo,
    /// The importance-weighted bound log (1/K) Σ_k p(x, z_k)/q(z_k|x) (Burda et al., 2016).
    Iwae,
}

impl Objective {
    fn id(self) -> f64 {
        match self {
            Self::Elbo => 0.0,
            Self::Iwae => 1.0,
        }
    }
}

/// params, rec, z, eps, logvar, weights, stats, mu, dmu, dlogvar, dz.
const TERMS_SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
];
/// params, d_dec, weights, d_dec_logvar.
const SCALE_SLOTS: &[Slot] = &[Slot::Uniform, Slot::ReadWrite, Slot::Read, Slot::ReadWrite];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TrainParams {
    batch: u32,
    samples: u32,
    latent: u32,
    dim: u32,
    beta: f32,
    _pad: [u32; 3],
}

/// B examples of D values, K samples each, L latent dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KSampleShape {
    pub batch: u32,
    pub samples: u32,
    pub latent: u32,
    pub dim: u32,
}

/// What the K-sample loss reads and writes; rows r = s·B + b.
pub struct KSampleBuffers<'a> {
    /// [K·B] reconstruction NLLs (elbo.wgsl's `rows` stats over the sample rows).
    pub rec: &'a View,
    /// [K·B, L]; for a hierarchy the upper layers' summed latent terms [K·B] instead
    /// (`shaders/hierarchy.wgsl`).
    pub z: &'a View,
    /// [K·B, L].
    pub eps: &'a View,
    /// [B, L].
    pub mu: &'a View,
    pub logvar: &'a View,
    /// [K·B] scratch: the rows' weights.
    pub weights: &'a View,
    /// [3, B]: per-example rec, kl, total, for elbo.wgsl's `batch_total`.
    pub stats: &'a View,
    /// [B, L]: the latent terms' gradients (the sample backward adds the decoder's).
    pub dmu: &'a View,
    pub dlogvar: &'a View,
    /// [K·B, L]: the latent terms' part of ∂loss/∂z (the backward matmul adds the decoder's);
    /// not written for a hierarchy (the stage above adds z_1's latent terms).
    pub dz: &'a View,
    /// [K·B, D]: ∂rec/∂(decoder output), scaled in place by each row's weight.
    pub d_dec: &'a View,
    /// [K·B, D] with a learned decoder variance.
    pub d_dec_logvar: Option<&'a View>,
}

pub struct KSampleKernels {
    terms: Kernel,
    scale: Kernel,
    hierarchy: bool,
}

/// `terms` runs after the ELBO rows, `scale` after it and before the backward.
pub struct KSampleDispatches {
    pub terms: Dispatch,
    pub scale: Dispatch,
    params: wgpu::Buffer,
    value: TrainParams,
}

impl KSampleDispatches {
    pub fn set_beta(&self, gpu: &Gpu, beta: f32) {
        gpu.apply(&self.beta_write(beta));
    }

    /// [`KSampleDispatches::set_beta`]'s write, to apply or stage.
    pub fn beta_write(&self, beta: f32) -> ParamWrite {
        ParamWrite::new(&self.params, 0, &TrainParams { beta, ..self.value })
    }
}

impl KSampleKernels {
    /// `hierarchy`: the model has stochastic layers above z_1 (see [`KSampleBuffers::z`]).
    pub fn new(
        gpu: &Gpu,
        objective: Objective,
        learned_variance: bool,
        hierarchy: bool,
    ) -> Result<Self> {
        let src = compose("iwae.wgsl");
        let name = format!("{objective:?}").to_lowercase();
        Ok(Self {
            terms: gpu.kernel(
                &format!("k_samples.{name}"),
                &src,
                "train_terms",
                TERMS_SLOTS,
                &[
                    ("OBJECTIVE", objective.id()),
                    ("HIERARCHY", hierarchy as u8 as f64),
                ],
            )?,
            scale: gpu.kernel(
                "k_samples.scale_rows",
                &src,
                "scale_rows",
                SCALE_SLOTS,
                &[("LEARNED_VARIANCE", learned_variance as u8 as f64)],
            )?,
            hierarchy,
        })
    }

    pub fn bind(
        &self,
        gpu: &Gpu,
        shape: KSampleShape,
        beta: f32,
        bufs: &KSampleBuffers<'_>,
    ) -> Result<KSampleDispatches> {
        let KSampleShape {
            batch,
            samples,
            latent,
            dim,
        } = shape;
        let (b, k, l, d) = (batch as u64, samples as u64, latent as u64, dim as u64);
        let label = &self.terms.label;
        check_lens(
            label,
            &[
                ("rec", bufs.rec, k * b),
                ("z", bufs.z, if self.hierarchy { k * b } else { k * b * l }),
                ("eps", bufs.eps, k * b * l),
                ("mu", bufs.mu, b * l),
                ("logvar", bufs.logvar, b * l),
                ("weights", bufs.weights, k * b),
                ("stats", bufs.stats, 3 * b),
                ("dmu", bufs.dmu, b * l),
                ("dlogvar", bufs.dlogvar, b * l),
                ("dz", bufs.dz, k * b * l),
                ("d_dec", bufs.d_dec, k * b * d),
            ],
        )?;
        if let Some(v) = bufs.d_dec_logvar {
            check_len(label, "d_dec_logvar", v, k * b * d)?;
        }
        let value = TrainParams {
            batch,
            samples,
            latent,
            dim,
            beta,
            _pad: [0; 3],
        };
        let params = gpu.uniform(label, &value);
        let terms = gpu.dispatch(
            &self.terms,
            &[
                Binding::Uniform(&params),
                Binding::Storage(bufs.rec),
                Binding::Storage(bufs.z),
                Binding::Storage(bufs.eps),
                Binding::Storage(bufs.logvar),
                Binding::Storage(bufs.weights),
                Binding::Storage(bufs.stats),
                Binding::Storage(bufs.mu),
                Binding::Storage(bufs.dmu),
                Binding::Storage(bufs.dlogvar),
                Binding::Storage(bufs.dz),
            ],
            gpu.grid_1d(batch.div_ceil(WG)),
        )?;
        let unused;
        let d_dec_logvar = match bufs.d_dec_logvar {
            Some(v) => v,
            None => {
                unused = gpu.zeros("k_samples.unused", 4)?;
                &unused
            }
        };
        let scale = gpu.dispatch(
            &self.scale,
            &[
                Binding::Uniform(&params),
                Binding::Storage(bufs.d_dec),
                Binding::Storage(bufs.weights),
                Binding::Storage(d_dec_logvar),
            ],
            gpu.grid_1d(samples * batch),
        )?;
        Ok(KSampleDispatches {
            terms,
            scale,
            params,
            value,
        })
    }
}
