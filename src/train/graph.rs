//! The training step as an explicit graph of recorded dispatches: batch gather, forward, fused
//! loss, backward, optimizer. Every buffer, pipeline and bind group is built once here; a step is
//! a few `queue.write_buffer`s of per-step scalars and one submit, with no readback.

use super::DeviceData;
use crate::gpu::{Dispatch, Gpu, GpuError, Result, View};
use crate::kernels::Activation;
use crate::kernels::adam::{AdamBuffers, AdamConfig, AdamKernel, AdamStep};
use crate::kernels::batch::{BatchKernel, Gather};
use crate::kernels::elbo::{
    Elbo, ElboDispatches, ElboInputs, ElboOutputs, ElboShape, RUNNING_LEN, Running,
};
use crate::kernels::iwae::{
    KSampleBuffers, KSampleDispatches, KSampleKernels, KSampleShape, Objective,
};
use crate::kernels::matmul::{Layout, MatmulConfig};
use crate::kernels::reduce::{ReduceKernels, SumOf};
use crate::kernels::sample::{SampleShape, Sampler};
use crate::model::{DEC_LOGVAR, Dense, ParamLayout, VaeConfig};

use super::forward::{Forward, Matmuls, Net, tensor};

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
    let widest = cfg
        .hidden
        .iter()
        .copied()
        .chain([cfg.input, cfg.latent])
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
    adam: AdamStep,
    /// Dispatches before Adam's (the gradient norm when clipping).
    pre_optimizer: Vec<Dispatch>,
    /// Forward, loss and backward, in recording order (without gather and optimizer).
    loss_and_grads: Vec<Dispatch>,
    /// `loss_and_grads[..loss_end]` is the forward pass and the loss.
    loss_end: usize,
    seed: u64,
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
        let k_path = samples > 1 || objective == Objective::Iwae;
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
        // Gradients with respect to each hidden layer's pre-activation.
        let dpre_of = |layers: &[Dense], rows: usize| -> Result<Vec<View>> {
            layers
                .iter()
                .map(|d| scratch(&format!("{}.dpre", d.name), rows * d.fan_out))
                .collect()
        };
        let enc_dpre = dpre_of(&layers.encoder, b)?;
        let dec_dpre = dpre_of(&layers.decoder, rows)?;
        // The batch, repeated once per sample: the encoder reads the first copy, the loss all.
        let x_rep = scratch("x", rows * d)?;
        let x = x_rep.slice(0, (b * d) as u64);
        let (dmu, dlogvar, dz) = (
            scratch("dmu", b * l)?,
            scratch("dlogvar", b * l)?,
            scratch("dz", rows * l)?,
        );
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
        let fwd = Forward::build(&mut net, &x, b, samples, &sampler)?;
        let Forward {
            enc,
            mu,
            logvar,
            z,
            eps,
            dec,
            out: logits,
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
        if k_path {
            let k_stats = scratch("k_samples.stats", 3 * b)?;
            let weights = scratch("k_samples.weights", rows)?;
            let k = KSampleKernels::new(gpu, objective, learned)?.bind(
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
                    z: &z,
                    eps: &eps,
                    mu: &mu,
                    logvar: &logvar,
                    weights: &weights,
                    stats: &k_stats,
                    dmu: &dmu,
                    dlogvar: &dlogvar,
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

        // Backward, layer by layer from the top: dW = inᵀ·dpre with db = Σ dpre in the same
        // pass, and d(in) = dpre·Wᵀ, fused with the previous layer's activation derivative.
        let weight_grad = MatmulConfig {
            column_sums: true,
            ..MatmulConfig::new(Layout::TN)
        };
        let input_grad = |act: Option<Activation>, accumulate: bool| MatmulConfig {
            grad_act: act,
            accumulate,
            ..MatmulConfig::new(Layout::NT)
        };
        let param_grads = |mm: &mut Matmuls,
                           layer: &Dense,
                           (input, rows): (&View, usize),
                           dpre: &View,
                           ops: &mut Vec<Dispatch>|
         -> Result<()> {
            ops.push(mm.bind(
                weight_grad,
                (layer.fan_in, layer.fan_out, rows),
                input,
                dpre,
                &view(&grads, &layer.weight()),
                None,
                Some(&view(&grads, &layer.bias())),
            )?);
            Ok(())
        };
        // Output layer and decoder.
        let mut dpre = d_dec.clone();
        let mut upper = &layers.out;
        for i in (0..=layers.decoder.len()).rev() {
            let input = if i == 0 { &z } else { &dec[i - 1].out };
            param_grads(&mut mm, upper, (input, rows), &dpre, &mut ops)?;
            let w = view(&params, &upper.weight());
            let (target, cfg, aux) = if i == 0 {
                // With K samples dz already holds the latent terms' part.
                (&dz, input_grad(None, k_path), None)
            } else {
                (
                    &dec_dpre[i - 1],
                    input_grad(Some(layers.decoder[i - 1].act), false),
                    Some(&dec[i - 1].pre),
                )
            };
            ops.push(mm.bind(
                cfg,
                (rows, upper.fan_in, upper.fan_out),
                &dpre,
                &w,
                target,
                None,
                aux,
            )?);
            dpre = target.clone();
            if i > 0 {
                upper = &layers.decoder[i - 1];
            }
        }
        // Through the sample into μ and logσ² (which hold the latent terms' gradient already).
        ops.push(sampler.backward(gpu, shape, &dz, &eps, &logvar, &dmu, &dlogvar)?);
        // Heads, then the encoder.
        let top_input = if enc.is_empty() {
            &x
        } else {
            &enc[enc.len() - 1].out
        };
        for (head, grad_in) in [(&layers.mu, &dmu), (&layers.logvar, &dlogvar)] {
            param_grads(&mut mm, head, (top_input, b), grad_in, &mut ops)?;
        }
        if let Some(last) = enc.last() {
            let act = layers.encoder.last().unwrap().act;
            for (k, (head, grad_in)) in [(&layers.mu, &dmu), (&layers.logvar, &dlogvar)]
                .into_iter()
                .enumerate()
            {
                let w = view(&params, &head.weight());
                ops.push(mm.bind(
                    input_grad(Some(act), k == 1),
                    (b, head.fan_in, l),
                    grad_in,
                    &w,
                    enc_dpre.last().expect("an encoder layer"),
                    None,
                    Some(&last.pre),
                )?);
            }
        }
        for i in (0..layers.encoder.len()).rev() {
            let layer = &layers.encoder[i];
            let input = if i == 0 { &x } else { &enc[i - 1].out };
            param_grads(&mut mm, layer, (input, b), &enc_dpre[i], &mut ops)?;
            if i > 0 {
                let w = view(&params, &layer.weight());
                let cfg = input_grad(Some(layers.encoder[i - 1].act), false);
                ops.push(mm.bind(
                    cfg,
                    (b, layer.fan_in, layer.fan_out),
                    &enc_dpre[i],
                    &w,
                    &enc_dpre[i - 1],
                    None,
                    Some(&enc[i - 1].pre),
                )?);
            }
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
        self.gather.set(gpu, s.first, s.draw);
        self.sampler.set_state(gpu, self.seed, s.step as u32);
        self.adam.prepare(gpu, s.step + 1, s.lr);
        self.elbo.set_beta(gpu, s.beta);
        if let Some(k) = &self.k_samples {
            k.set_beta(gpu, s.beta);
        }
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
