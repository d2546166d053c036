//! Wrapper for `shaders/adam.wgsl`: one fused Adam/AdamW dispatch over a flat parameter buffer.

use bytemuck::{Pod, Zeroable};

use super::{check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, ParamWrite, Result, Slot, View};

const WG: u32 = 256;
const SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::ReadWrite,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::Read,
];
/// `step_textured` also reads param, grad, m1 and m2 through these.
const TEXTURE_SLOTS: [Slot; 4] = [Slot::ReadTexture4; 4];

/// Where the optimizer reads its four inputs from; it always writes the storage buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdamReads {
    /// Straight from the storage buffers.
    Buffers,
    /// From `rgba32float` textures the buffers are copied into before the dispatch: several times
    /// faster where per-lane storage loads are slow (software adapters).
    Textures,
}

impl AdamReads {
    pub const ALL: [AdamReads; 2] = [Self::Buffers, Self::Textures];

    /// The default: textures on software adapters.
    pub fn auto(gpu: &Gpu) -> Self {
        if gpu.is_software() {
            Self::Textures
        } else {
            Self::Buffers
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Buffers => "buffers",
            Self::Textures => "textures",
        }
    }
}

/// Optimizer hyperparameters, PyTorch's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    pub decoupled: bool,
    /// Clip the global gradient norm to this value (0: no clipping).
    pub max_norm: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            max_norm: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    max_norm: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    len4: u32,
    tex_shift: u32,
}

/// The flat buffers one optimizer step reads and writes, each `len` elements.
pub struct AdamBuffers<'a> {
    pub param: &'a View,
    pub grad: &'a View,
    /// First and second moments.
    pub m1: &'a View,
    pub m2: &'a View,
}

pub struct AdamKernel {
    kernel: Kernel,
    cfg: AdamConfig,
    reads: AdamReads,
}

/// A bound optimizer step: the dispatch plus the uniform buffer its per-step values live in.
pub struct AdamStep {
    pub dispatch: Dispatch,
    params: wgpu::Buffer,
    len4: u32,
    tex_shift: u32,
    cfg: AdamConfig,
}

impl AdamKernel {
    /// The variant [`AdamReads::auto`] picks.
    pub fn new(gpu: &Gpu, cfg: AdamConfig) -> Result<Self> {
        Self::with_reads(gpu, cfg, AdamReads::auto(gpu))
    }

    /// The variant timed fastest for `len` parameters on this adapter ([`Gpu::tuned`]).
    pub fn tuned(gpu: &Gpu, cfg: AdamConfig, len: u64) -> Result<Self> {
        let auto = AdamReads::auto(gpu);
        let mut candidates = vec![auto];
        candidates.extend(AdamReads::ALL.into_iter().filter(|&r| r != auto));
        let names: Vec<&str> = candidates.iter().map(|r| r.name()).collect();
        let by_name = |name: &str| {
            candidates
                .iter()
                .copied()
                .find(|r| r.name() == name)
                .unwrap_or(auto)
        };
        let chosen = gpu.tuned(&format!("adam {len}"), &names, |name, give_up| {
            let kernel = Self::with_reads(gpu, cfg, by_name(name))?;
            let [param, grad, m1, m2] =
                ["param", "grad", "m1", "m2"].map(|n| gpu.zeros(&format!("tune.adam.{n}"), len));
            let bufs = AdamBuffers {
                param: &param?,
                grad: &grad?,
                m1: &m1?,
                m2: &m2?,
            };
            let sumsq = gpu.zeros("tune.adam.sumsq", 4)?;
            let step = kernel.bind(gpu, len, &bufs, Some(&sumsq))?;
            gpu.time_dispatches(&[&step.dispatch], give_up)
        })?;
        Self::with_reads(gpu, cfg, by_name(&chosen))
    }

    pub fn with_reads(gpu: &Gpu, cfg: AdamConfig, reads: AdamReads) -> Result<Self> {
        let name = if cfg.decoupled { "adamw" } else { "adam" };
        let (label, entry, slots) = match reads {
            AdamReads::Buffers => (name.to_string(), "step", SLOTS.to_vec()),
            AdamReads::Textures => (
                format!("{name}.textured"),
                "step_textured",
                [SLOTS, &TEXTURE_SLOTS].concat(),
            ),
        };
        let kernel = gpu.kernel(
            &label,
            &compose("adam.wgsl"),
            entry,
            &slots,
            &[("DECOUPLED", cfg.decoupled as u8 as f64)],
        )?;
        Ok(Self { kernel, cfg, reads })
    }

    /// Binds the flat buffers (`len` elements each, `len` a multiple of 4). `grad_sumsq` holds the
    /// squared global gradient norm in element 0 and is required when `max_norm > 0`.
    pub fn bind(
        &self,
        gpu: &Gpu,
        len: u64,
        bufs: &AdamBuffers<'_>,
        grad_sumsq: Option<&View>,
    ) -> Result<AdamStep> {
        let label = &self.kernel.label;
        if !len.is_multiple_of(4) {
            return Err(GpuError::Shape {
                kernel: label.clone(),
                reason: format!("flat parameter length {len} is not a multiple of 4"),
            });
        }
        for (name, v) in [
            ("param", bufs.param),
            ("grad", bufs.grad),
            ("m1", bufs.m1),
            ("m2", bufs.m2),
        ] {
            check_len(label, name, v, len)?;
        }
        if self.cfg.max_norm > 0.0 && grad_sumsq.is_none() {
            return Err(GpuError::Shape {
                kernel: label.clone(),
                reason: "clipping needs the gradient's sum of squares".into(),
            });
        }
        let len4 = (len / 4) as u32;
        let copies = match self.reads {
            AdamReads::Buffers => Vec::new(),
            AdamReads::Textures => [bufs.param, bufs.grad, bufs.m1, bufs.m2]
                .iter()
                .map(|v| gpu.texel_copy_as(label, v, true))
                .collect::<Result<Vec<_>>>()?,
        };
        let tex_shift = copies.first().map_or(0, |c| c.shift());
        let params = gpu.uniform(label, &step_params(&self.cfg, 1, len4, tex_shift));
        let sumsq = grad_sumsq.map_or(Binding::Unused, Binding::Storage);
        let views: Vec<wgpu::TextureView> = copies
            .iter()
            .map(|c| c.texture.create_view(&Default::default()))
            .collect();
        let mut bindings = vec![
            Binding::Uniform(&params),
            Binding::Storage(bufs.param),
            Binding::Storage(bufs.grad),
            Binding::Storage(bufs.m1),
            Binding::Storage(bufs.m2),
            sumsq,
        ];
        bindings.extend(views.iter().map(Binding::Texture));
        let mut dispatch = gpu.dispatch(&self.kernel, &bindings, gpu.grid_1d(len4.div_ceil(WG)))?;
        dispatch.copies = copies;
        Ok(AdamStep {
            dispatch,
            params,
            len4,
            tex_shift,
            cfg: self.cfg,
        })
    }
}

impl AdamStep {
    /// Sets the step number `t` (1-based) and learning rate for the next submitted step.
    pub fn prepare(&self, gpu: &Gpu, t: u64, lr: f64) {
        gpu.apply(&self.write(t, lr));
    }

    /// [`AdamStep::prepare`]'s write, to apply or stage.
    pub fn write(&self, t: u64, lr: f64) -> ParamWrite {
        let cfg = AdamConfig { lr, ..self.cfg };
        ParamWrite::new(
            &self.params,
            0,
            &step_params(&cfg, t, self.len4, self.tex_shift),
        )
    }
}

fn step_params(cfg: &AdamConfig, t: u64, len4: u32, tex_shift: u32) -> Params {
    let t = t.max(1) as i32;
    Params {
        lr: cfg.lr as f32,
        beta1: cfg.beta1 as f32,
        beta2: cfg.beta2 as f32,
        eps: cfg.eps as f32,
        weight_decay: cfg.weight_decay as f32,
        bias_correction1: (1.0 - cfg.beta1.powi(t)) as f32,
        bias_correction2: (1.0 - cfg.beta2.powi(t)) as f32,
        max_norm: cfg.max_norm as f32,
        one_minus_beta1: (1.0 - cfg.beta1) as f32,
        one_minus_beta2: (1.0 - cfg.beta2) as f32,
        len4,
        tex_shift,
    }
}
