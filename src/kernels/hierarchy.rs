//! Wrapper for `shaders/hierarchy.wgsl`: the latent log-density terms of one upper stage of a
//! hierarchical VAE and their gradients, one invocation per sample row. The f64 twins are
//! [`crate::cpu::hvae::stage_terms`], [`crate::cpu::hvae::stage_grads`] and
//! [`crate::cpu::hvae::posterior_grads`].

use bytemuck::{Pod, Zeroable};

use super::{check_len, check_lens, compose};
use crate::gpu::{Binding, Dispatch, Gpu, Kernel, ParamWrite, Result, Slot, View};

const WG: u32 = 64;
/// params, eps, q_logvar, z_below, p_mu, p_logvar, z, terms.
const TERMS_SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
];
/// params, weights, z_below, p_mu, p_logvar, z, dz_below, dz, dp_mu, dp_logvar.
const GRADS_SLOTS: &[Slot] = &[
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
];
/// params, weights, eps, q_logvar, dz, dq_logvar.
const POSTERIOR_SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
];

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    latent: u32,
    below: u32,
    beta: f32,
    top: u32,
    add: u32,
    _pad: [u32; 2],
}

/// R sample rows; the stage's L units and the Lb units of the layer below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageShape {
    pub rows: u32,
    pub latent: u32,
    pub below: u32,
    /// The highest stage: z's prior is N(0, I).
    pub top: bool,
}

/// One stage's forward values.
pub struct StageValues<'a> {
    /// [R, L]: the noise and log-variance of q(z | z_below), and z.
    pub eps: &'a View,
    pub q_logvar: &'a View,
    pub z: &'a View,
    /// [R, Lb]: z_below and p(z_below | z).
    pub z_below: &'a View,
    pub p_mu: &'a View,
    pub p_logvar: &'a View,
}

/// One stage's gradient buffers.
pub struct StageGrads<'a> {
    /// [R]: the rows' normalized weights (iwae.wgsl's `train_terms`).
    pub weights: &'a View,
    /// [R, Lb]: ∂loss/∂z_below, written by the first stage to touch it or added to.
    pub dz_below: &'a View,
    /// [R, L]: ∂loss/∂z, complete when `posterior` runs (the top stage starts it).
    pub dz: &'a View,
    /// [R, Lb]: for p's heads.
    pub dp_mu: &'a View,
    pub dp_logvar: &'a View,
    /// [R, L]: for q's log-variance head (q's mean head takes `dz`).
    pub dq_logvar: &'a View,
}

pub struct HierarchyKernels {
    terms: Kernel,
    grads: Kernel,
    posterior: Kernel,
}

/// A stage's backward: `prior` before its generative path's backward, `posterior` after it.
pub struct StageGradDispatches {
    pub prior: Dispatch,
    pub posterior: Dispatch,
    params: wgpu::Buffer,
    value: Params,
}

impl StageGradDispatches {
    /// Changes β (KL warm-up); takes effect at the next submit.
    pub fn set_beta(&self, gpu: &Gpu, beta: f32) {
        gpu.apply(&self.beta_write(beta));
    }

    /// [`StageGradDispatches::set_beta`]'s write, to apply or stage.
    pub fn beta_write(&self, beta: f32) -> ParamWrite {
        ParamWrite::new(&self.params, 0, &Params { beta, ..self.value })
    }
}

fn params(shape: StageShape, beta: f32, add: bool) -> Params {
    Params {
        rows: shape.rows,
        latent: shape.latent,
        below: shape.below,
        beta,
        top: shape.top as u32,
        add: add as u32,
        _pad: [0; 2],
    }
}

impl HierarchyKernels {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let src = compose("hierarchy.wgsl");
        let kernel =
            |entry: &str, slots| gpu.kernel(&format!("hierarchy.{entry}"), &src, entry, slots, &[]);
        Ok(Self {
            terms: kernel("stage_terms", TERMS_SLOTS)?,
            grads: kernel("stage_grads", GRADS_SLOTS)?,
            posterior: kernel("posterior_grads", POSTERIOR_SLOTS)?,
        })
    }

    fn check_values(&self, label: &str, shape: StageShape, v: &StageValues<'_>) -> Result<()> {
        let (r, l, lb) = (shape.rows as u64, shape.latent as u64, shape.below as u64);
        check_lens(
            label,
            &[
                ("eps", v.eps, r * l),
                ("q_logvar", v.q_logvar, r * l),
                ("z", v.z, r * l),
                ("z_below", v.z_below, r * lb),
                ("p_mu", v.p_mu, r * lb),
                ("p_logvar", v.p_logvar, r * lb),
            ],
        )?;
        Ok(())
    }

    /// The stage's latent terms into `terms` [R]: written when `add` is false (the first stage
    /// recorded), added otherwise.
    pub fn terms(
        &self,
        gpu: &Gpu,
        shape: StageShape,
        values: &StageValues<'_>,
        terms: &View,
        add: bool,
    ) -> Result<Dispatch> {
        let label = &self.terms.label;
        self.check_values(label, shape, values)?;
        check_len(label, "terms", terms, shape.rows as u64)?;
        let params = gpu.uniform(label, &params(shape, 1.0, add));
        gpu.dispatch(
            &self.terms,
            &[
                Binding::Uniform(&params),
                Binding::Storage(values.eps),
                Binding::Storage(values.q_logvar),
                Binding::Storage(values.z_below),
                Binding::Storage(values.p_mu),
                Binding::Storage(values.p_logvar),
                Binding::Storage(values.z),
                Binding::Storage(terms),
            ],
            gpu.grid_1d(shape.rows.div_ceil(WG)),
        )
    }

    /// The stage's backward dispatches. `add_below`: add to `dz_below` (which something earlier
    /// in the backward wrote) instead of writing it.
    pub fn grads(
        &self,
        gpu: &Gpu,
        shape: StageShape,
        beta: f32,
        values: &StageValues<'_>,
        grads: &StageGrads<'_>,
        add_below: bool,
    ) -> Result<StageGradDispatches> {
        let label = &self.grads.label;
        self.check_values(label, shape, values)?;
        let (r, l, lb) = (shape.rows as u64, shape.latent as u64, shape.below as u64);
        check_lens(
            label,
            &[
                ("weights", grads.weights, r),
                ("dz_below", grads.dz_below, r * lb),
                ("dz", grads.dz, r * l),
                ("dp_mu", grads.dp_mu, r * lb),
                ("dp_logvar", grads.dp_logvar, r * lb),
                ("dq_logvar", grads.dq_logvar, r * l),
            ],
        )?;
        let value = params(shape, beta, add_below);
        let uniform = gpu.uniform(label, &value);
        let grid = gpu.grid_1d(shape.rows.div_ceil(WG));
        let prior = gpu.dispatch(
            &self.grads,
            &[
                Binding::Uniform(&uniform),
                Binding::Storage(grads.weights),
                Binding::Storage(values.z_below),
                Binding::Storage(values.p_mu),
                Binding::Storage(values.p_logvar),
                Binding::Storage(values.z),
                Binding::Storage(grads.dz_below),
                Binding::Storage(grads.dz),
                Binding::Storage(grads.dp_mu),
                Binding::Storage(grads.dp_logvar),
            ],
            grid,
        )?;
        let posterior = gpu.dispatch(
            &self.posterior,
            &[
                Binding::Uniform(&uniform),
                Binding::Storage(grads.weights),
                Binding::Storage(values.eps),
                Binding::Storage(values.q_logvar),
                Binding::Storage(grads.dz),
                Binding::Storage(grads.dq_logvar),
            ],
            grid,
        )?;
        Ok(StageGradDispatches {
            prior,
            posterior,
            params: uniform,
            value,
        })
    }
}
