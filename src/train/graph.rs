//! The training step as an explicit graph of recorded dispatches: batch gather, forward, fused
//! loss, backward, optimizer. Every buffer, pipeline and bind group is built once here; a step is
//! a few `queue.write_buffer`s of per-step scalars and one submit, with no readback.

use super::DeviceData;
use crate::gpu::{Dispatch, Gpu, GpuError, ParamWrite, Result, StepBatch, View};
use crate::kernels::Activation;
use crate::kernels::adam::{AdamBuffers, AdamConfig, AdamKernel, AdamStep};
use crate::kernels::batch::{BatchKernel, Gather};
use crate::kernels::conv::{ConvConfig, ConvOp};
use crate::kernels::elbo::{
    Elbo, ElboDispatches, ElboInputs, ElboOutputs, ElboShape, RUNNING_LEN, Running,
};
use crate::kernels::hierarchy::{
    HierarchyKernels, StageGradDispatches, StageGrads, StageShape, StageValues,
};
use crate::kernels::iwae::{
    KSampleBuffers, KSampleDispatches, KSampleKernels, KSampleShape, Objective,
};
use crate::kernels::ladder::{LadderGrads, LadderInputs, LadderKernels};
use crate::kernels::matmul::{Blocked, ColumnBlocks, Layout, MatmulConfig};
use crate::kernels::reduce::{ReduceKernels, SumOf};
use crate::kernels::sample::{SampleShape, Sampler};
use crate::model::{ConvLayer, DEC_LOGVAR, Dense, Layers, ParamLayout, VaeConfig};

use super::forward::{
    Forward, HeadPair, LadderForward, LayerBuffers, Matmuls, Net, StageForward, tensor,
};

/// What a graph is built for: the batch size, the optimizer, the seed of its random streams,
/// whether the gather binarizes (with its own seed), and the objective with its sample count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphOptions {
    pub batch: u32,
    pub adam: AdamConfig,
    pub seed: u64,
    pub binarize_seed: Option<u64>,
    pub objective: Objective,
    /// Posterior samples per example (K); with `Objective::Elbo` and K = 1 the plain step.
    pub samples: u32,
}

/// The per-step scalars a submit depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInputs {
    /// Index into the permutation of the batch's first row.
    pub first: u32,
    /// Global step number (0-based): selects ε and Adam's bias correction.
    pub step: u64,
    pub lr: f64,
    pub beta: f32,
    /// Binarization draw (ignored without binarization).
    pub draw: u32,
}

/// Checks, before allocating anything, that the model's flat parameter buffer and the widest
/// per-batch activation fit one binding, and says what would fit when not.
fn check_fits(gpu: &Gpu, cfg: &VaeConfig, layout: &ParamLayout, batch: u32) -> Result<()> {
    let have = gpu.max_binding_bytes();
    let limit = "max_storage_buffer_binding_size";
    let params = layout.len as u64 * 4;
    if params > have {
        return Err(GpuError::DoesNotFit {
            adapter: gpu.info.name.clone(),
            what: format!(
                "the model's {} parameters (one flat buffer, as Adam updates them in one pass)",
                layout.count()
            ),
            need: params,
            limit,
            have,
            advice: format!(
                "use a model of at most {} parameters (narrower --hidden), or another adapter",
                have / 4
            ),
        });
    }
    let layers = cfg.layers();
    let widest = (layers.all().iter().map(|d| d.fan_out))
        .chain(layers.enc_conv.iter().map(ConvLayer::out_len))
        .chain([cfg.input])
        .max()
        .unwrap_or(1);
    let activations = batch as u64 * widest as u64 * 4;
    if activations > have {
        return Err(GpuError::DoesNotFit {
            adapter: gpu.info.name.clone(),
            what: format!("a batch of {batch} rows of {widest} activations"),
            need: activations,
            limit,
            have,
            advice: format!("use --batch {} or less", have / (widest as u64 * 4)),
        });
    }
    Ok(())
}

/// The state a step reads and updates, which several graphs may share: the parameters, Adam's
/// moments and the running loss sums. A graph for the epoch's last, smaller batch shares all of
/// it with the main graph; an evaluation graph shares the parameters only (its moments are never
/// touched) and keeps its own loss sums.
#[derive(Clone)]
pub struct SharedState {
    pub params: View,
    pub m1: View,
    pub m2: View,
    pub running: View,
}

impl SharedState {
    pub fn new(gpu: &Gpu, layout: &ParamLayout) -> Result<Self> {
        let flat = |name: &str| gpu.zeros(name, layout.len as u64);
        Ok(Self {
            params: flat("params")?,
            m1: flat("adam.m1")?,
            m2: flat("adam.m2")?,
            running: gpu.zeros("elbo.running", RUNNING_LEN as u64)?,
        })
    }

    /// The same parameters and moments with a fresh running accumulator.
    pub fn with_own_running(&self, gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            running: gpu.zeros("elbo.running", RUNNING_LEN as u64)?,
            ..self.clone()
        })
    }
}

/// Everything one training step touches on the device.
pub struct TrainGraph {
    pub cfg: VaeConfig,
    pub layout: ParamLayout,
    pub batch: u32,
    pub params: View,
    pub grads: View,
    pub m1: View,
    pub m2: View,
    /// The gathered batch [B, D] (K copies with K samples) and the step's noise ε [K·B, L].
    pub x: View,
    pub eps: View,
    /// ELBO sums of the last step: (Σ total, Σ rec, Σ kl, B).
    pub batch_stats: View,
    /// Running sums of `batch_stats` since the last reset: read back when logging.
    pub running: View,
    perm: View,
    gather: Gather,
    sampler: Sampler,
    elbo: ElboDispatches,
    /// With K samples or the IWAE objective: the sample weighing (β lives in its uniform).
    k_samples: Option<KSampleDispatches>,
    /// The upper stages' backward dispatches, top-down (β lives in their uniforms).
    stage_grads: Vec<StageGradDispatches>,
    /// The noise of each stochastic layer above z_1, [K·B, L_l] (`eps` holds z_1's).
    pub upper_eps: Vec<View>,
    adam: AdamStep,
    /// Dispatches before Adam's (the gradient norm when clipping).
    pre_optimizer: Vec<Dispatch>,
    /// Forward, loss and backward, in recording order (without gather and optimizer).
    loss_and_grads: Vec<Dispatch>,
    /// `loss_and_grads[..loss_end]` is the forward pass and the loss.
    loss_end: usize,
    seed: u64,
}

/// The backward's scratch for the stochastic layers above z_1.
struct UpperBackward<'w> {
    stages: Vec<StageForward>,
    kernels: HierarchyKernels,
    /// The rows' normalized weights (`train_terms`).
    weights: &'w View,
    /// ∂loss/∂z of each stage's draw, [rows, L].
    dz: Vec<View>,
    grads: Vec<StageScratch>,
}

/// One stage's gradient scratch: for p's heads and q's log-variance head, and the hidden
/// layers' pre-activations of both paths.
struct StageScratch {
    dp_mu: View,
    dp_logvar: View,
    dq_logvar: View,
    q_dpre: Vec<View>,
    p_dpre: Vec<View>,
}

impl<'w> UpperBackward<'w> {
    fn new(
        gpu: &Gpu,
        layers: &Layers,
        stages: Vec<StageForward>,
        weights: &'w View,
        rows: usize,
    ) -> Result<Self> {
        let scratch = |name: &str, len: usize| gpu.zeros(name, len as u64);
        let mut dz = Vec::new();
        let mut grads = Vec::new();
        for st in &layers.upper {
            let (l, lb) = (st.q_mu.fan_out, st.p_mu.fan_out);
            dz.push(scratch(&format!("{}.dz", st.q_mu.name), rows * l)?);
            grads.push(StageScratch {
                dp_mu: scratch("dp_mu", rows * lb)?,
                dp_logvar: scratch("dp_logvar", rows * lb)?,
                dq_logvar: scratch("dq_logvar", rows * l)?,
                q_dpre: dpre_scratch(gpu, &st.q_hidden, rows)?,
                p_dpre: dpre_scratch(gpu, &st.p_hidden, rows)?,
            });
        }
        Ok(Self {
            stages,
            kernels: HierarchyKernels::new(gpu)?,
            weights,
            dz,
            grads,
        })
    }
}

/// Gradients with respect to each hidden layer's pre-activation, [rows, width] each.
fn dpre_scratch(gpu: &Gpu, layers: &[Dense], rows: usize) -> Result<Vec<View>> {
    layers
        .iter()
        .map(|d| gpu.zeros(&format!("{}.dpre", d.name), (rows * d.fan_out) as u64))
        .collect()
}

/// Where the backward of a stack sends the gradient with respect to its input: written or added
/// to `target`, times the derivative of the activation that produced the input (at its
/// pre-activation) when `through` is given.
#[derive(Clone, Copy)]
struct InputGrad<'v> {
    target: &'v View,
    add: bool,
    through: Option<(Activation, &'v View)>,
    /// The input is a sample z = μ + exp(logσ²/2)·ε: `target` is dμ, added to.
    reparam: Option<Reparam<'v>>,
}

/// Where a sample's gradient goes on from dz (see [`MatmulConfig::reparam`]).
#[derive(Clone, Copy)]
struct Reparam<'v> {
    dlogvar: &'v View,
    eps: &'v View,
    logvar: &'v View,
}

impl<'v> InputGrad<'v> {
    fn new(target: &'v View, add: bool) -> Self {
        Self {
            target,
            add,
            through: None,
            reparam: None,
        }
    }

    /// Into the pre-activation of the layer that produced the input.
    fn through(layer: &'v LayerBuffers, act: Activation, dpre: &'v View) -> Self {
        Self {
            target: dpre,
            add: false,
            through: Some((act, &layer.pre)),
            reparam: None,
        }
    }

    /// Through the sample z = μ + exp(logσ²/2)·ε (one per row) into `dmu` and `r.dlogvar`,
    /// which hold the KL term's gradient already: dz itself is never stored.
    fn into_sample(dmu: &'v View, r: Reparam<'v>) -> Self {
        Self {
            target: dmu,
            add: true,
            through: None,
            reparam: Some(r),
        }
    }
}

/// Records backward matmuls into `ops`, gradients into the flat `grads`.
struct Backward<'a, 'g> {
    mm: &'a mut Matmuls<'g>,
    layout: &'a ParamLayout,
    params: &'a View,
    grads: &'a View,
    ops: &'a mut Vec<Dispatch>,
}

impl Backward<'_, '_> {
    /// dW = inᵀ·dpre and db = Σ_rows dpre, in one TN pass.
    fn weight_grads(
        &mut self,
        layer: &Dense,
        input: &View,
        rows: usize,
        dpre: &View,
    ) -> Result<()> {
        let cfg = MatmulConfig {
            column_sums: true,
            ..MatmulConfig::new(Layout::TN)
        };
        let (w, bias) = (
            tensor(self.grads, self.layout, &layer.weight()),
            tensor(self.grads, self.layout, &layer.bias()),
        );
        let d = self.mm.bind(
            cfg,
            (layer.fan_in, layer.fan_out, rows),
            input,
            dpre,
            &w,
            None,
            Some(&bias),
        )?;
        self.ops.push(d);
        Ok(())
    }

    /// d(in) = dpre·Wᵀ as `g` says (added with `add` too); through a sample, on into dμ and
    /// dlogσ² in the same pass.
    fn input_grad_to(
        &mut self,
        layer: &Dense,
        dpre: &View,
        rows: usize,
        g: &InputGrad,
        add: bool,
    ) -> Result<()> {
        let Some(r) = g.reparam else {
            return self.input_grad(layer, dpre, rows, g.target, g.through, g.add || add);
        };
        let cfg = MatmulConfig {
            accumulate: true,
            reparam: true,
            ..MatmulConfig::new(Layout::NT)
        };
        let w = tensor(self.params, self.layout, &layer.weight());
        let d = self.mm.bind_reparam(
            cfg,
            (rows, layer.fan_in, layer.fan_out),
            [dpre, &w],
            [g.target, r.dlogvar],
            [r.eps, r.logvar],
        )?;
        self.ops.push(d);
        Ok(())
    }

    /// Both heads' dW and db from their gradients `d` (the first head's [rows, L], the
    /// second's `stride` elements on): one TN pass over the blocks.
    fn pair_weight_grads(
        &mut self,
        pair: &HeadPair,
        input: &View,
        rows: usize,
        d: &View,
        stride: u64,
    ) -> Result<()> {
        let cfg = MatmulConfig {
            column_sums: true,
            blocked: Blocked::new(false, true, true),
            ..MatmulConfig::new(Layout::TN)
        };
        let blocks = ColumnBlocks {
            width: pair.fan_out as u32,
            b: stride as u32,
            c: pair.weight_stride as u32,
            vector: pair.bias_stride as u32,
            ..Default::default()
        };
        let d = self.mm.bind_blocked(
            cfg,
            (pair.fan_in, 2 * pair.fan_out, rows),
            [input, d, &pair.weights(self.grads)],
            (None, Some(&pair.biases(self.grads))),
            Some(&blocks),
        )?;
        self.ops.push(d);
        Ok(())
    }

    /// d(in) = Σ_heads d_head·W_headᵀ as one NT pass over the blocks (see
    /// [`Backward::pair_weight_grads`]), then as [`Backward::input_grad`].
    #[allow(clippy::too_many_arguments)]
    fn pair_input_grad(
        &mut self,
        pair: &HeadPair,
        d: &View,
        stride: u64,
        rows: usize,
        target: &View,
        act: Option<(Activation, &View)>,
        accumulate: bool,
    ) -> Result<()> {
        let cfg = MatmulConfig {
            grad_act: act.map(|(a, _)| a),
            accumulate,
            blocked: Blocked::new(true, true, false),
            ..MatmulConfig::new(Layout::NT)
        };
        let blocks = ColumnBlocks {
            width: pair.fan_out as u32,
            a: stride as u32,
            b: pair.weight_stride as u32,
            ..Default::default()
        };
        let d = self.mm.bind_blocked(
            cfg,
            (rows, pair.fan_in, 2 * pair.fan_out),
            [d, &pair.weights(self.params), target],
            (None, act.map(|(_, pre)| pre)),
            Some(&blocks),
        )?;
        self.ops.push(d);
        Ok(())
    }

    /// d(in) = dpre·Wᵀ into `target`, times the derivative of the activation whose
    /// pre-activation is `pre` (when given), written or added.
    fn input_grad(
        &mut self,
        layer: &Dense,
        dpre: &View,
        rows: usize,
        target: &View,
        act: Option<(Activation, &View)>,
        accumulate: bool,
    ) -> Result<()> {
        let cfg = MatmulConfig {
            grad_act: act.map(|(a, _)| a),
            accumulate,
            ..MatmulConfig::new(Layout::NT)
        };
        let w = tensor(self.params, self.layout, &layer.weight());
        let d = self.mm.bind(
            cfg,
            (rows, layer.fan_in, layer.fan_out),
            dpre,
            &w,
            target,
            None,
            act.map(|(_, pre)| pre),
        )?;
        self.ops.push(d);
        Ok(())
    }

    /// The backward of an MLP `hidden` (forward buffers `bufs`, gradient scratch `dpre`) whose
    /// last output feeds the `heads`, from each head's output gradient. With `input_grad`, the
    /// gradient with respect to `input` is written there (or added, with its flag).
    fn stack(
        &mut self,
        hidden: &[Dense],
        bufs: &[LayerBuffers],
        dpre: &[View],
        heads: &[(&Dense, &View)],
        (input, rows): (&View, usize),
        input_grad: Option<InputGrad>,
    ) -> Result<()> {
        let top = bufs.last().map_or(input, |b| &b.out);
        // Two heads whose gradients lie side by side run as one blocked product each way.
        let pair = match heads {
            [(h0, d0), (h1, d1)] => HeadPair::new(self.layout, h0, h1)
                .zip(side_by_side(d0, d1))
                .map(|(p, (span, stride))| (p, span, stride)),
            _ => None,
        };
        match &pair {
            Some((p, span, stride)) => self.pair_weight_grads(p, top, rows, span, *stride)?,
            None => {
                for &(head, d) in heads {
                    self.weight_grads(head, top, rows, d)?;
                }
            }
        }
        // Into the top hidden layer's pre-activation, or straight into the input.
        let into = match (hidden.last(), bufs.last(), dpre.last()) {
            (Some(layer), Some(buf), Some(target)) => Some(InputGrad {
                through: Some((layer.act, &buf.pre)),
                ..InputGrad::new(target, false)
            }),
            _ => input_grad,
        };
        if let Some(g) = into {
            match &pair {
                Some((p, span, stride)) if g.reparam.is_none() => {
                    self.pair_input_grad(p, span, *stride, rows, g.target, g.through, g.add)?
                }
                _ => {
                    for (k, &(head, d)) in heads.iter().enumerate() {
                        self.input_grad_to(head, d, rows, &g, k > 0)?;
                    }
                }
            }
        }
        for i in (0..hidden.len()).rev() {
            let layer_input = if i == 0 { input } else { &bufs[i - 1].out };
            self.weight_grads(&hidden[i], layer_input, rows, &dpre[i])?;
            if i > 0 {
                let act = Some((hidden[i - 1].act, &bufs[i - 1].pre));
                self.input_grad(&hidden[i], &dpre[i], rows, &dpre[i - 1], act, false)?;
            } else if let Some(g) = input_grad {
                self.input_grad_to(&hidden[0], &dpre[0], rows, &g, false)?;
            }
        }
        Ok(())
    }

    /// The backward of convolution layers on `input` (forward buffers `bufs`, one per layer
    /// with an activation, so none for a decoder's last) from `d_last`, the gradient with
    /// respect to the last layer's pre-activation; `dpre[i]` receives layer i's (i below the
    /// last).
    #[allow(clippy::too_many_arguments)]
    fn conv_stack(
        &mut self,
        layers: &[ConvLayer],
        bufs: &[LayerBuffers],
        dpre: &[View],
        d_last: &View,
        (input, rows): (&View, usize),
        input_grad: Option<InputGrad>,
    ) -> Result<()> {
        for (i, layer) in layers.iter().enumerate().rev() {
            let shape = layer.shape(rows);
            let layer_input = if i == 0 { input } else { &bufs[i - 1].out };
            let d = if i + 1 == layers.len() {
                d_last
            } else {
                &dpre[i]
            };
            let weight_cfg = ConvConfig {
                bias: true,
                channels_last: layer.channels_last,
                ..ConvConfig::new(layer.transposed, ConvOp::BackwardWeight)
            };
            let (dw, db) = (
                tensor(self.grads, self.layout, &layer.weight()),
                tensor(self.grads, self.layout, &layer.bias()),
            );
            let ops = self
                .mm
                .conv(weight_cfg, &shape, [layer_input, d], &dw, (Some(&db), None))?;
            self.ops.extend(ops);
            let below = if i > 0 {
                Some(InputGrad::through(
                    &bufs[i - 1],
                    layers[i - 1].act,
                    &dpre[i - 1],
                ))
            } else {
                input_grad
            };
            if let Some(g) = below {
                let data_cfg = ConvConfig {
                    grad_act: g.through.map(|(a, _)| a),
                    accumulate: g.add,
                    channels_last: layer.channels_last,
                    ..ConvConfig::new(layer.transposed, ConvOp::BackwardData)
                };
                let w = tensor(self.params, self.layout, &layer.weight());
                let aux = g.through.map(|(_, pre)| pre);
                let ops = self
                    .mm
                    .conv(data_cfg, &shape, [d, &w], g.target, (None, aux))?;
                self.ops.extend(ops);
            }
        }
        Ok(())
    }
}

/// Gradients with respect to each convolution's pre-activation, [rows, C·H·W] each.
/// The view spanning `first` and `second` when `second` follows `first` in the same buffer
/// with the same length, and the distance between their starts.
fn side_by_side(first: &View, second: &View) -> Option<(View, u64)> {
    let stride = second.offset.checked_sub(first.offset)?;
    (first.buffer == second.buffer && first.len == second.len && stride >= first.len).then(|| {
        (
            View {
                buffer: first.buffer.clone(),
                offset: first.offset,
                len: stride + second.len,
            },
            stride,
        )
    })
}

fn conv_dpre_scratch(gpu: &Gpu, layers: &[ConvLayer], rows: usize) -> Result<Vec<View>> {
    layers
        .iter()
        .map(|c| gpu.zeros(&format!("{}.dpre", c.name), (rows * c.out_len()) as u64))
        .collect()
}

/// z_1's side of a ladder's backward: its bottom-up Gaussian, draw, noise and complete
/// gradient, and where the bottom-up Gaussian's gradients go (the encoder heads').
struct FirstLayer<'v> {
    mu_hat: &'v View,
    lv_hat: &'v View,
    z: &'v View,
    eps: &'v View,
    dz: &'v View,
    d_hat: (&'v View, &'v View),
}

/// Records a ladder's backward after the decoder's (which wrote z_1's gradient): up the layers,
/// each z_l's gradient complete once the layers below have run (the prior's explicit terms,
/// the posterior's log-variance, the combination, the generative MLP into the layer above),
/// then down the bottom-up path into the encoder heads' gradients. Returns the stage kernels'
/// dispatches (β lives in their uniforms). As `cpu::ladder::step`.
fn ladder_backward(
    back: &mut Backward,
    gpu: &Gpu,
    layers: &Layers,
    upper: &UpperBackward,
    lf: &LadderForward,
    first: &FirstLayer,
    rows: usize,
) -> Result<Vec<StageGradDispatches>> {
    let n = layers.upper.len() + 1;
    let stages = &upper.stages;
    let z_of = |i: usize| if i == 0 { first.z } else { &stages[i - 1].z };
    let dz_of = |i: usize| if i == 0 { first.dz } else { &upper.dz[i - 1] };
    let hat_of = |i: usize| match i {
        0 => (first.mu_hat, first.lv_hat),
        _ => (&stages[i - 1].q.mu, &stages[i - 1].q.logvar),
    };
    let width = |i: usize| (z_of(i).len / rows as u64) as u32;
    let dlv_q1 = gpu.zeros("ladder.dlv_q1", z_of(0).len)?;
    let dlv_q_of = |i: usize| {
        if i == 0 {
            &dlv_q1
        } else {
            &upper.grads[i - 1].dq_logvar
        }
    };
    // The bottom-up Gaussians' gradients: the encoder heads' for z_1, the top's own posterior
    // gradients for z_L, scratch between.
    let mut d_hat: Vec<(View, View)> = vec![(first.d_hat.0.clone(), first.d_hat.1.clone())];
    for i in 1..n {
        d_hat.push(if i + 1 == n {
            (dz_of(i).clone(), dlv_q_of(i).clone())
        } else {
            let len = z_of(i).len;
            (
                gpu.zeros("ladder.d_mu_hat", len)?,
                gpu.zeros("ladder.d_lv_hat", len)?,
            )
        });
    }
    // z_1's posterior term is a stage with nothing below (as in the forward's terms).
    let nothing = gpu.zeros("ladder.nothing", 1)?;
    let first_shape = StageShape {
        rows: rows as u32,
        latent: width(0),
        below: 0,
        top: false,
    };
    let first_values = StageValues {
        eps: first.eps,
        q_logvar: &lf.q_logvar[0],
        z: first.z,
        z_below: &nothing,
        p_mu: &nothing,
        p_logvar: &nothing,
    };
    let first_grads = StageGrads {
        weights: upper.weights,
        dz_below: &nothing,
        dz: first.dz,
        dp_mu: &nothing,
        dp_logvar: &nothing,
        dq_logvar: &dlv_q1,
    };
    let mut kernels =
        vec![
            upper
                .kernels
                .grads(gpu, first_shape, 1.0, &first_values, &first_grads, true)?,
        ];
    for (j, (stage, bufs)) in stages.iter().zip(&upper.grads).enumerate() {
        let shape = StageShape {
            rows: rows as u32,
            latent: width(j + 1),
            below: width(j),
            top: j + 2 == n,
        };
        let values = StageValues {
            q_logvar: &lf.q_logvar[j + 1],
            ..stage.values(z_of(j))
        };
        let grads = StageGrads {
            weights: upper.weights,
            dz_below: dz_of(j),
            dz: dz_of(j + 1),
            dp_mu: &bufs.dp_mu,
            dp_logvar: &bufs.dp_logvar,
            dq_logvar: &bufs.dq_logvar,
        };
        kernels.push(
            upper
                .kernels
                .grads(gpu, shape, 1.0, &values, &grads, true)?,
        );
    }
    let combine = LadderKernels::new(gpu)?;
    for i in 0..n {
        if i + 1 < n {
            back.ops.push(kernels[i + 1].prior.clone());
        }
        back.ops.push(kernels[i].posterior.clone());
        if i + 1 == n {
            break;
        }
        let (st, bufs, f) = (&layers.upper[i], &upper.grads[i], &stages[i]);
        let (mu_hat, lv_hat) = hat_of(i);
        let inputs = LadderInputs {
            mu_hat,
            lv_hat,
            mu_p: &f.p.mu,
            lv_p: &f.p.logvar,
        };
        let grads = LadderGrads {
            d_mu_q: dz_of(i),
            d_lv_q: dlv_q_of(i),
            d_mu_hat: &d_hat[i].0,
            d_lv_hat: &d_hat[i].1,
            d_mu_p: &bufs.dp_mu,
            d_lv_p: &bufs.dp_logvar,
        };
        back.ops
            .extend(combine.grads(gpu, mu_hat.len, &inputs, &grads)?);
        back.stack(
            &st.p_hidden,
            &f.p.hidden,
            &bufs.p_dpre,
            &[(&st.p_mu, &bufs.dp_mu), (&st.p_logvar, &bufs.dp_logvar)],
            (z_of(i + 1), rows),
            Some(InputGrad::new(dz_of(i + 1), i + 2 == n)),
        )?;
    }
    for j in (0..n - 1).rev() {
        let (st, bufs, f) = (&layers.upper[j], &upper.grads[j], &stages[j]);
        back.stack(
            &st.q_hidden,
            &f.q.hidden,
            &bufs.q_dpre,
            &[(&st.q_mu, &d_hat[j + 1].0), (&st.q_logvar, &d_hat[j + 1].1)],
            (hat_of(j).0, rows),
            Some(InputGrad::new(&d_hat[j].0, true)),
        )?;
    }
    Ok(kernels)
}

impl TrainGraph {
    /// Builds the step for `batch` rows drawn from `data`, on `shared` state (see
    /// [`SharedState`]) or on state of its own.
    pub fn new(
        gpu: &Gpu,
        cfg: &VaeConfig,
        opts: &GraphOptions,
        data: &DeviceData,
        shared: Option<&SharedState>,
    ) -> Result<Self> {
        let GraphOptions {
            batch,
            adam: adam_cfg,
            seed,
            binarize_seed,
            objective,
            samples,
        } = *opts;
        let samples = samples.max(1);
        // K samples or the IWAE bound: the decoder and loss run over K·B sample rows and
        // `train_terms` weighs them (see shaders/iwae.wgsl).
        // A hierarchy always takes this path: none of its layers has an analytic KL.
        let hier = !cfg.upper.is_empty();
        let k_path = samples > 1 || objective == Objective::Iwae || hier;
        let (pixels, items) = (&data.pixels, data.items);
        let align = gpu.limits.min_storage_buffer_offset_alignment as usize;
        if align > crate::model::ALIGN * 4 {
            return Err(GpuError::AdapterTooSmall {
                adapter: gpu.info.name.clone(),
                what: "the flat parameter layout (256-byte tensor offsets)".into(),
                limit: "min_storage_buffer_offset_alignment (at most)",
                need: 256,
                have: align as u64,
            });
        }
        let layout = ParamLayout::new(cfg);
        check_fits(gpu, cfg, &layout, batch.saturating_mul(samples))?;
        let layers = cfg.layers();
        let (b, d, l) = (batch as usize, cfg.input, cfg.latent);
        let rows = b * samples as usize;
        let flat = |name: &str| gpu.zeros(name, layout.len as u64);
        let SharedState {
            params,
            m1,
            m2,
            running,
        } = match shared {
            Some(s) => s.clone(),
            None => SharedState::new(gpu, &layout)?,
        };
        let grads = flat("grads")?;
        let view = |v: &View, name: &str| tensor(v, &layout, name);
        let scratch = |name: &str, len: usize| gpu.zeros(name, len as u64);
        // The ladder's inference runs on every sample row; otherwise on the batch once.
        let enc_rows = if cfg.ladder { rows } else { b };
        let enc_dpre = dpre_scratch(gpu, &layers.encoder, enc_rows)?;
        let dec_dpre = dpre_scratch(gpu, &layers.decoder, rows)?;
        // The batch, repeated once per sample: the encoder reads the first copy, the loss all.
        let x_rep = scratch("x", rows * d)?;
        let x = x_rep.slice(0, (enc_rows * d) as u64);
        // dμ and dlogσ² side by side, so the heads' backward runs as one product each way.
        let head_len = (enc_rows * l) as u64;
        let head_stride = head_len.next_multiple_of(crate::model::ALIGN as u64);
        let d_heads = gpu.zeros("dmu+dlogvar", head_stride + head_len)?;
        let (dmu, dlogvar) = (
            d_heads.slice(0, head_len),
            d_heads.slice(head_stride, head_len),
        );
        let dz = scratch("dz", rows * l)?;
        let (d_dec, d_dec_logvar) = (
            scratch("d_dec", rows * d)?,
            scratch("d_dec_logvar", rows * d)?,
        );
        let (stats, batch_stats) = (scratch("elbo.stats", 3 * rows)?, scratch("elbo.batch", 4)?);

        let perm = gpu.upload("perm", &(0..items as u32).collect::<Vec<_>>())?;
        let gather = BatchKernel::with_format(gpu, binarize_seed, data.format)?
            .bind_repeated(gpu, batch, samples, d as u32, pixels, &perm, &x_rep)?;
        let sampler = Sampler::new(gpu, seed)?;
        let reduce = ReduceKernels::new(gpu)?;
        let mut mm = Matmuls::new(gpu);
        let mut net = Net {
            gpu,
            mm: &mut mm,
            cfg,
            layout: &layout,
            params: &params,
        };
        let fwd = Forward::build(&mut net, &x_rep, b, samples, &sampler)?;
        let Forward {
            enc_conv,
            enc,
            mu,
            logvar,
            z,
            eps,
            dec,
            dec_head,
            dec_conv,
            out: logits,
            stages,
            upper_terms,
            ladder,
            dispatches: mut ops,
        } = fwd;
        let shape = SampleShape {
            rows: batch,
            cols: l as u32,
            samples,
        };

        // Loss and its gradient with respect to the decoder output, μ and logσ².
        let learned = cfg.likelihood.learns_variance();
        let dec_logvar = learned.then(|| view(&params, DEC_LOGVAR));
        let elbo_kernel = Elbo::new(gpu, cfg.likelihood)?;
        let d_dec_logvar_out = learned.then_some(&d_dec_logvar);
        // One sample per example: the fused ELBO. K samples or IWAE: the reconstruction terms of
        // all K·B sample rows (the KL slots get z and ε as stand-ins whose outputs are discarded:
        // `train_terms` forms the latent terms), then the per-example totals.
        let (ignored_dmu, ignored_dlogvar);
        let (elbo_rows, elbo_mu, elbo_logvar, elbo_dmu, elbo_dlogvar) = if k_path {
            ignored_dmu = scratch("ignored", rows * l)?;
            ignored_dlogvar = scratch("ignored", rows * l)?;
            (rows, &z, &eps, &ignored_dmu, &ignored_dlogvar)
        } else {
            (b, &mu, &logvar, &dmu, &dlogvar)
        };
        let elbo = elbo_kernel.bind(
            gpu,
            ElboShape {
                batch: elbo_rows as u32,
                dim: d as u32,
                latent: l as u32,
            },
            1.0,
            1.0,
            &ElboInputs {
                x: &x_rep,
                dec: &logits,
                dec_logvar: dec_logvar.as_ref(),
                mu: elbo_mu,
                logvar: elbo_logvar,
            },
            &ElboOutputs {
                stats: &stats,
                d_dec: &d_dec,
                d_dec_logvar: d_dec_logvar_out,
                dmu: elbo_dmu,
                dlogvar: elbo_dlogvar,
                batch: &batch_stats,
                running: &running,
            },
        )?;
        let mut k_samples = None;
        let weights = scratch("k_samples.weights", rows)?;
        if k_path {
            let k_stats = scratch("k_samples.stats", 3 * b)?;
            // The ladder's latent terms are all in `upper_terms`: zeros stand in for z_1's ε and
            // posterior, and the posterior gradients `train_terms` writes go unused.
            let (q1_eps, q1_mu, q1_logvar, q1_dmu, q1_dlogvar) = match &ladder {
                Some(lf) => {
                    let ignored = scratch("ignored", b * l)?;
                    (&lf.zeros, &lf.zeros, &lf.zeros, ignored.clone(), ignored)
                }
                None => (&eps, &mu, &logvar, dmu.clone(), dlogvar.clone()),
            };
            let k = KSampleKernels::new(gpu, objective, learned, hier)?.bind(
                gpu,
                KSampleShape {
                    batch,
                    samples,
                    latent: l as u32,
                    dim: d as u32,
                },
                1.0,
                &KSampleBuffers {
                    rec: &stats,
                    z: upper_terms.as_ref().unwrap_or(&z),
                    eps: q1_eps,
                    mu: q1_mu,
                    logvar: q1_logvar,
                    weights: &weights,
                    stats: &k_stats,
                    dmu: &q1_dmu,
                    dlogvar: &q1_dlogvar,
                    dz: &dz,
                    d_dec: &d_dec,
                    d_dec_logvar: d_dec_logvar_out,
                },
            )?;
            let total = elbo_kernel.batch_total(gpu, batch, &k_stats, &batch_stats, &running)?;
            ops.extend([elbo.rows.clone(), k.terms.clone(), total, k.scale.clone()]);
            k_samples = Some(k);
        } else {
            ops.extend(elbo.dispatches().into_iter().cloned());
        }
        let loss_end = ops.len() - usize::from(k_path);
        if learned {
            ops.push(reduce.column_sums(
                gpu,
                rows as u32,
                d as u32,
                &d_dec_logvar,
                &view(&grads, DEC_LOGVAR),
                false,
            )?);
        }

        let upper_backward = if hier {
            Some(UpperBackward::new(gpu, &layers, stages, &weights, rows)?)
        } else {
            None
        };
        // Backward, layer by layer from the top: dW = inᵀ·dpre with db = Σ dpre in the same
        // pass, and d(in) = dpre·Wᵀ, fused with the previous layer's activation derivative.
        let mut back = Backward {
            mm: &mut mm,
            layout: &layout,
            params: &params,
            grads: &grads,
            ops: &mut ops,
        };
        // Output layer and decoder, into dz_1: added to the latent terms' part with one
        // stochastic layer and K samples, written first in a hierarchy (the stages add theirs).
        let dz_written = k_path && !hier;
        // One sample per example and one stochastic layer: the product forming dz goes on
        // through the sample into dμ and dlogσ² (`sample.backward`'s work, fused).
        let fused_sample = !k_path && ladder.is_none();
        let into_z = if fused_sample {
            InputGrad::into_sample(
                &dmu,
                Reparam {
                    dlogvar: &dlogvar,
                    eps: &eps,
                    logvar: &logvar,
                },
            )
        } else {
            InputGrad::new(&dz, dz_written)
        };
        // With convolutions, the transposed ones first, down to the output layer's
        // pre-activation.
        let d_out = match &dec_head {
            Some(head) => {
                let d_head = scratch("dec.out.dpre", rows * layers.out.fan_out)?;
                back.conv_stack(
                    &layers.dec_conv,
                    &dec_conv,
                    &conv_dpre_scratch(gpu, &layers.dec_conv, rows)?,
                    &d_dec,
                    (&head.out, rows),
                    Some(InputGrad::through(head, layers.out.act, &d_head)),
                )?;
                d_head
            }
            None => d_dec.clone(),
        };
        back.stack(
            &layers.decoder,
            &dec,
            &dec_dpre,
            &[(&layers.out, &d_out)],
            (&z, rows),
            Some(into_z),
        )?;
        // The stages above z_1: a ladder up the layers then down its bottom-up path
        // (cpu::ladder::step's order), ending in the encoder heads' gradients; a plain
        // hierarchy top-down (cpu::hvae::step's order).
        let mut stage_grads = Vec::new();
        if let (Some(upper), Some(lf)) = (&upper_backward, &ladder) {
            let first = FirstLayer {
                mu_hat: &mu,
                lv_hat: &logvar,
                z: &z,
                eps: &eps,
                dz: &dz,
                d_hat: (&dmu, &dlogvar),
            };
            stage_grads = ladder_backward(&mut back, gpu, &layers, upper, lf, &first, rows)?;
        } else if let Some(upper) = &upper_backward {
            for (j, st) in layers.upper.iter().enumerate().rev() {
                let f = &upper.stages[j];
                let (below, dz_below) = if j == 0 {
                    (&z, &dz)
                } else {
                    (&upper.stages[j - 1].z, &upper.dz[j - 1])
                };
                let bufs = &upper.grads[j];
                let shape = StageShape {
                    rows: rows as u32,
                    latent: st.q_mu.fan_out as u32,
                    below: st.p_mu.fan_out as u32,
                    top: j + 1 == layers.upper.len(),
                };
                let g = upper.kernels.grads(
                    gpu,
                    shape,
                    1.0,
                    &f.values(below),
                    &StageGrads {
                        weights: upper.weights,
                        dz_below,
                        dz: &upper.dz[j],
                        dp_mu: &bufs.dp_mu,
                        dp_logvar: &bufs.dp_logvar,
                        dq_logvar: &bufs.dq_logvar,
                    },
                    j == 0,
                )?;
                back.ops.push(g.prior.clone());
                back.stack(
                    &st.p_hidden,
                    &f.p.hidden,
                    &bufs.p_dpre,
                    &[(&st.p_mu, &bufs.dp_mu), (&st.p_logvar, &bufs.dp_logvar)],
                    (&f.z, rows),
                    Some(InputGrad::new(&upper.dz[j], true)),
                )?;
                back.ops.push(g.posterior.clone());
                back.stack(
                    &st.q_hidden,
                    &f.q.hidden,
                    &bufs.q_dpre,
                    &[(&st.q_mu, &upper.dz[j]), (&st.q_logvar, &bufs.dq_logvar)],
                    (below, rows),
                    Some(InputGrad::new(dz_below, true)),
                )?;
                stage_grads.push(g);
            }
        }
        let upper_eps = upper_backward
            .map(|u| u.stages.into_iter().map(|s| s.eps).collect())
            .unwrap_or_default();
        // Through the sample into μ and logσ² (which hold the latent terms' gradient already).
        if ladder.is_none() && !fused_sample {
            back.ops
                .push(sampler.backward(gpu, shape, &dz, &eps, &logvar, &dmu, &dlogvar)?);
        }
        // Heads, then the encoder: its dense layers, then its convolutions.
        let enc_conv_dpre = conv_dpre_scratch(gpu, &layers.enc_conv, enc_rows)?;
        let flat = enc_conv.last().map_or(&x, |c| &c.out);
        let into_conv = (enc_conv
            .last()
            .zip(layers.enc_conv.last())
            .zip(enc_conv_dpre.last()))
        .map(|((buf, layer), dpre)| InputGrad::through(buf, layer.act, dpre));
        back.stack(
            &layers.encoder,
            &enc,
            &enc_dpre,
            &[(&layers.mu, &dmu), (&layers.logvar, &dlogvar)],
            (flat, enc_rows),
            into_conv,
        )?;
        if let Some(d_last) = enc_conv_dpre.last() {
            back.conv_stack(
                &layers.enc_conv,
                &enc_conv,
                &enc_conv_dpre,
                d_last,
                (&x, enc_rows),
                None,
            )?;
        }

        // Clipping needs the global gradient norm first: a two-pass sum of squares.
        let mut optimizer = Vec::new();
        let grad_sumsq = if adam_cfg.max_norm > 0.0 {
            let out = scratch("grad_sumsq", 1)?;
            let sum = reduce.sum(gpu, SumOf::Squares, layout.len as u32, &grads, &out, None)?;
            optimizer.extend([sum.partial, sum.finish]);
            Some(out)
        } else {
            None
        };
        let adam = AdamKernel::tuned(gpu, adam_cfg, layout.len as u64)?.bind(
            gpu,
            layout.len as u64,
            &AdamBuffers {
                param: &params,
                grad: &grads,
                m1: &m1,
                m2: &m2,
            },
            grad_sumsq.as_ref(),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            layout,
            batch,
            params,
            grads,
            m1,
            m2,
            x: x_rep,
            eps,
            batch_stats,
            running,
            perm,
            gather,
            sampler,
            elbo,
            k_samples,
            stage_grads,
            upper_eps,
            adam,
            pre_optimizer: optimizer,
            loss_and_grads: ops,
            loss_end,
            seed,
        })
    }

    /// Gather, forward and loss (evaluation): adds the batch's ELBO sums to `running`.
    pub fn loss_dispatches(&self) -> Vec<&Dispatch> {
        std::iter::once(&self.gather.dispatch)
            .chain(&self.loss_and_grads[..self.loss_end])
            .collect()
    }

    /// Gather, forward, loss and backward: everything but the optimizer.
    pub fn gradient_dispatches(&self) -> Vec<&Dispatch> {
        std::iter::once(&self.gather.dispatch)
            .chain(&self.loss_and_grads)
            .collect()
    }

    /// One whole optimizer step.
    pub fn step_dispatches(&self) -> Vec<&Dispatch> {
        let mut v = self.gradient_dispatches();
        v.extend(self.optimizer_dispatches());
        v
    }

    /// The optimizer update from the gradients in `grads` (with the norm, when clipping).
    pub fn optimizer_dispatches(&self) -> Vec<&Dispatch> {
        self.pre_optimizer
            .iter()
            .chain(std::iter::once(&self.adam.dispatch))
            .collect()
    }

    /// Writes the per-step scalars: which rows of the permutation and which binarization, the
    /// RNG step, Adam's step number (1-based) and learning rate, and β.
    pub fn prepare(&self, gpu: &Gpu, s: &StepInputs) {
        for w in self.step_writes(s) {
            gpu.apply(&w);
        }
    }

    /// What [`TrainGraph::prepare`] writes, to stage for one of several steps in a submit
    /// ([`TrainGraph::submit_steps`]).
    pub fn step_writes(&self, s: &StepInputs) -> Vec<ParamWrite> {
        let mut w = vec![
            self.gather.write(s.first, s.draw),
            self.sampler.state_write(self.seed, s.step as u32),
            self.adam.write(s.step + 1, s.lr),
            self.elbo.beta_write(s.beta),
        ];
        w.extend(self.k_samples.iter().map(|k| k.beta_write(s.beta)));
        w.extend(self.stage_grads.iter().map(|g| g.beta_write(s.beta)));
        w
    }

    /// Whole optimizer steps, several in one submit (see [`StepBatch`]): the same updates as
    /// one [`TrainGraph::prepare`] and submit per step.
    pub fn submit_steps(&self, gpu: &Gpu, batch: &mut StepBatch, steps: &[StepInputs]) {
        let dispatches = self.step_dispatches();
        let steps: Vec<_> = steps
            .iter()
            .map(|s| (self.step_writes(s), dispatches.clone()))
            .collect();
        batch.submit(gpu, &steps);
    }

    /// This graph's state, to share with another graph.
    pub fn state(&self) -> SharedState {
        SharedState {
            params: self.params.clone(),
            m1: self.m1.clone(),
            m2: self.m2.clone(),
            running: self.running.clone(),
        }
    }

    /// The running loss sums since the last call, which then restarts them.
    pub fn take_running(&self, gpu: &Gpu) -> Result<Running> {
        let v: Vec<f32> = gpu.read(&self.running)?;
        gpu.write(&self.running, &[0.0f32; RUNNING_LEN]);
        Ok(Running::from_raw(&v))
    }

    /// Replaces the epoch's permutation of the dataset (a few hundred KB, not the data).
    pub fn set_permutation(&self, gpu: &Gpu, perm: &[u32]) {
        gpu.write(&self.perm, perm);
    }
}
