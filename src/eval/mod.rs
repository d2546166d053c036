//! Evaluation of a trained model on a dataset: the importance-sampled log-likelihood
//! log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k | x), streamed over chunks of samples so any K fits,
//! with the per-example posterior statistics that show active latent units.

pub mod pictures;
pub mod plots;

use crate::gpu::{Dispatch, Gpu, Result, View};
use crate::kernels::batch::{BatchKernel, Gather};
use crate::kernels::elbo::{Elbo, ElboDispatches, ElboInputs, ElboOutputs, ElboShape, RUNNING_LEN};
use crate::kernels::iwae::{
    IwaeBuffers, IwaeDispatches, IwaeKernels, IwaeShape, finish, initial_state,
};
use crate::kernels::sample::Sampler;
use crate::model::{DEC_LOGVAR, ParamLayout, VaeConfig};
use crate::train::DeviceData;
use crate::train::forward::{Forward, Matmuls, Net, tensor};

/// What one evaluation pass needs: `batch` examples at a time, `chunk` samples per submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IwaeOptions {
    pub batch: u32,
    pub chunk: u32,
    pub seed: u64,
    /// Seed of a fixed binarization of the data (as in training), if it was binarized.
    pub binarize_seed: Option<u64>,
}

/// The device graph: gather B examples repeated S times, encode the first B rows, draw S
/// samples each, decode all S·B, score them, and fold their weights into the running bound.
pub struct IwaeGraph {
    opts: IwaeOptions,
    latent: usize,
    perm: View,
    gather: Gather,
    sampler: Sampler,
    forward: Vec<Dispatch>,
    elbo: ElboDispatches,
    iwae: IwaeDispatches,
    state: View,
    pub mu: View,
    pub logvar: View,
    /// A hierarchy's stochastic layers, bottom-up, for the per-layer statistics.
    layers: Vec<LayerViews>,
}

/// What one stochastic layer's statistics read: its noise, log-variance and draw ([rows, L],
/// or [B, L] for z_1's log-variance), the posterior means, and its prior p(z | layer above)
/// ([rows, L]; `None` at the top, where it is N(0, I)).
struct LayerViews {
    eps: View,
    logvar: View,
    z: View,
    q_mu: View,
    prior: Option<(View, View)>,
}

/// One stochastic layer's statistics over a batch.
pub struct LayerBatch {
    /// log q(z|·) − log p(z|·) of one sample per example (an unbiased estimate of the layer's
    /// KL), [B].
    pub kl: Vec<f64>,
    /// The posterior mean E_q[z | x], averaged over the chunk's samples of the layers below, [B, L].
    pub q_mean: Vec<f32>,
}

/// Per-example results of one batch.
pub struct BatchResult {
    /// log (1/K) Σ_k w_k for each example.
    pub log_px: Vec<f64>,
    /// The posterior means and log-variances, [B, L].
    pub mu: Vec<f32>,
    pub logvar: Vec<f32>,
    /// Every stochastic layer of a hierarchy, bottom-up (empty for one layer).
    pub layers: Vec<LayerBatch>,
}

impl IwaeGraph {
    pub fn new(
        gpu: &Gpu,
        cfg: &VaeConfig,
        params: &View,
        data: &DeviceData,
        opts: IwaeOptions,
    ) -> Result<Self> {
        let layout = ParamLayout::new(cfg);
        let (b, s) = (opts.batch as usize, opts.chunk as usize);
        let (d, l) = (cfg.input, cfg.latent);
        let rows = b * s;
        let scratch = |name: &str, len: usize| gpu.zeros(name, len as u64);
        // x_rep [S·B, D]: row s·B + r is example r, so its first B rows are the batch itself.
        let x_rep = scratch("x_rep", rows * d)?;
        let perm = scratch("perm_rep", rows)?;
        let gather = BatchKernel::with_format(gpu, opts.binarize_seed, data.format)?.bind(
            gpu,
            rows as u32,
            d as u32,
            &data.pixels,
            &perm,
            &x_rep,
        )?;
        let sampler = Sampler::new(gpu, opts.seed)?;
        let mut mm = Matmuls::new(gpu);
        let mut net = Net {
            gpu,
            mm: &mut mm,
            cfg,
            layout: &layout,
            params,
        };
        let fwd = Forward::build(&mut net, &x_rep, b, opts.chunk, &sampler)?;
        // The ELBO rows give each draw's −log p(x|z). Its KL terms and gradients are not used
        // here: z and ε stand in for the per-row μ and logσ² it expects.
        let learned = cfg.likelihood.learns_variance();
        let dec_logvar = learned.then(|| tensor(params, &layout, DEC_LOGVAR));
        let stats = scratch("eval.stats", 3 * rows)?;
        let (d_dec, d_dec_lv) = (
            scratch("eval.d_dec", rows * d)?,
            scratch("eval.d_dec_lv", rows * d)?,
        );
        let (dmu, dlv) = (
            scratch("eval.dmu", rows * l)?,
            scratch("eval.dlv", rows * l)?,
        );
        let (batch_sums, running) = (
            scratch("eval.batch", 4)?,
            scratch("eval.running", RUNNING_LEN)?,
        );
        let elbo = Elbo::new(gpu, cfg.likelihood)?.bind(
            gpu,
            ElboShape {
                batch: rows as u32,
                dim: d as u32,
                latent: l as u32,
            },
            1.0,
            1.0,
            &ElboInputs {
                x: &x_rep,
                dec: &fwd.out,
                dec_logvar: dec_logvar.as_ref(),
                mu: &fwd.z,
                logvar: &fwd.eps,
            },
            &ElboOutputs {
                stats: &stats,
                d_dec: &d_dec,
                d_dec_logvar: learned.then_some(&d_dec_lv),
                dmu: &dmu,
                dlogvar: &dlv,
                batch: &batch_sums,
                running: &running,
            },
        )?;
        let state = scratch("iwae.state", 2 * b)?;
        let log_w = scratch("iwae.log_w", rows)?;
        let iwae = IwaeKernels::new(gpu, !cfg.upper.is_empty())?.bind(
            gpu,
            IwaeShape {
                batch: b as u32,
                samples: s as u32,
                latent: l as u32,
            },
            &IwaeBuffers {
                rec: &stats.slice(0, rows as u64),
                z: fwd.upper_terms.as_ref().unwrap_or(&fwd.z),
                // A ladder's latent terms are all in `upper_terms` (see `LadderForward`).
                eps: fwd.ladder.as_ref().map_or(&fwd.eps, |lf| &lf.zeros),
                logvar: fwd.ladder.as_ref().map_or(&fwd.logvar, |lf| &lf.zeros),
                log_w: &log_w,
                state: &state,
            },
        )?;
        let mut layers = Vec::new();
        for j in 0..fwd.stages.len() + 1 {
            let prior = fwd
                .stages
                .get(j)
                .map(|st| (st.p.mu.clone(), st.p.logvar.clone()));
            let mut views = match j.checked_sub(1).map(|i| &fwd.stages[i]) {
                None => LayerViews {
                    eps: fwd.eps.clone(),
                    logvar: fwd.logvar.clone(),
                    z: fwd.z.clone(),
                    q_mu: fwd.mu.clone(),
                    prior,
                },
                Some(st) => LayerViews {
                    eps: st.eps.clone(),
                    logvar: st.q.logvar.clone(),
                    z: st.z.clone(),
                    q_mu: st.q.mu.clone(),
                    prior,
                },
            };
            // A ladder samples each layer from its combined posterior.
            if let Some(lf) = &fwd.ladder {
                views.logvar = lf.q_logvar[j].clone();
                views.q_mu = lf.q_mu[j].clone();
            }
            layers.push(views);
        }
        if fwd.stages.is_empty() {
            layers.clear();
        }
        Ok(Self {
            opts,
            latent: l,
            perm,
            gather,
            sampler,
            forward: fwd.dispatches,
            elbo,
            iwae,
            state,
            mu: fwd.mu,
            logvar: fwd.logvar,
            layers,
        })
    }

    /// Each layer's statistics from the last chunk: the KL estimate of its first sample per
    /// example (rows 0..B), the posterior means over all its samples.
    fn layer_stats(&self, gpu: &Gpu, n: usize) -> Result<Vec<LayerBatch>> {
        let (b, s) = (self.opts.batch as usize, self.opts.chunk as usize);
        let mut out = Vec::new();
        for v in &self.layers {
            let l = (v.z.len as usize) / (b * s);
            let first =
                |view: &View| -> Result<Vec<f32>> { gpu.read(&view.slice(0, (b * l) as u64)) };
            let (eps, logvar, z) = (first(&v.eps)?, first(&v.logvar)?, first(&v.z)?);
            let prior = match &v.prior {
                Some((mu, lv)) => Some((first(mu)?, first(lv)?)),
                None => None,
            };
            let kl = (0..n)
                .map(|r| {
                    (r * l..(r + 1) * l)
                        .map(|i| {
                            let (e, lv, z) = (eps[i] as f64, logvar[i] as f64, z[i] as f64);
                            let log_p = match &prior {
                                Some((pm, plv)) => {
                                    let (pm, plv) = (pm[i] as f64, plv[i] as f64);
                                    -0.5 * ((z - pm).powi(2) * (-plv).exp() + plv)
                                }
                                None => -0.5 * z * z,
                            };
                            -0.5 * (e * e + lv) - log_p
                        })
                        .sum()
                })
                .collect();
            let q_mu: Vec<f32> = gpu.read(&v.q_mu)?;
            let copies = q_mu.len() / (b * l);
            let q_mean = (0..n * l)
                .map(|i| (0..copies).map(|c| q_mu[c * b * l + i]).sum::<f32>() / copies as f32)
                .collect();
            out.push(LayerBatch { kl, q_mean });
        }
        Ok(out)
    }

    /// The bound with `k` samples for `items` (at most the graph's batch; a short last batch is
    /// padded with repeats of its last item, whose results are dropped). `stream` separates the
    /// noise of different batches.
    pub fn run(&self, gpu: &Gpu, items: &[u32], k: u64, stream: u32) -> Result<BatchResult> {
        let (b, s) = (self.opts.batch as usize, self.opts.chunk as u64);
        assert!(!items.is_empty() && items.len() <= b && k >= 1);
        let mut padded = items.to_vec();
        padded.resize(b, *items.last().expect("non-empty"));
        let rep: Vec<u32> = (0..s).flat_map(|_| padded.iter().copied()).collect();
        gpu.write(&self.perm, &rep);
        gpu.write(&self.state, &initial_state(b));
        // One fixed binarization of the evaluated data, as for the test ELBO in training.
        self.gather.set(gpu, 0, u32::MAX);
        let chunks = k.div_ceil(s);
        for c in 0..chunks {
            let used = (k - c * s).min(s) as u32;
            self.iwae.set_samples(gpu, used);
            self.sampler.set_state(
                gpu,
                self.opts.seed,
                stream.wrapping_mul(0x10000).wrapping_add(c as u32),
            );
            let mut ops: Vec<&Dispatch> = vec![&self.gather.dispatch];
            ops.extend(&self.forward);
            ops.push(&self.elbo.rows);
            ops.extend(self.iwae.dispatches());
            gpu.submit(&ops);
        }
        let state: Vec<f32> = gpu.read(&self.state)?;
        let n = items.len();
        let mut log_px = finish(&state, k);
        log_px.truncate(n);
        let mut mu: Vec<f32> = gpu.read(&self.mu)?;
        let mut logvar: Vec<f32> = gpu.read(&self.logvar)?;
        mu.truncate(n * self.latent);
        logvar.truncate(n * self.latent);
        let layers = self.layer_stats(gpu, n)?;
        Ok(BatchResult {
            log_px,
            mu,
            logvar,
            layers,
        })
    }
}

/// Posterior statistics over a dataset, from every example's (μ, logσ²).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentStats {
    /// Mean KL(q(z_d|x) ‖ N(0, 1)) per dimension, nats.
    pub kl_per_dim: Vec<f64>,
    /// Variance across the data of each dimension's posterior mean.
    pub mean_variance: Vec<f64>,
}

impl LatentStats {
    pub fn new(mu: &[f32], logvar: &[f32], latent: usize) -> Self {
        let n = (mu.len() / latent).max(1) as f64;
        let mut kl = vec![0.0; latent];
        let (mut sum, mut sumsq) = (vec![0.0; latent], vec![0.0; latent]);
        for (i, (&m, &v)) in mu.iter().zip(logvar).enumerate() {
            let (m, v) = (m as f64, v as f64);
            let dim = i % latent;
            kl[dim] += crate::cpu::elbo::kl_term(m, v);
            sum[dim] += m;
            sumsq[dim] += m * m;
        }
        Self {
            kl_per_dim: kl.iter().map(|k| k / n).collect(),
            mean_variance: (0..latent)
                .map(|d| (sumsq[d] / n - (sum[d] / n).powi(2)).max(0.0))
                .collect(),
        }
    }

    /// Dimensions whose posterior mean varies across the data: Cov_x(E_q[z_d]) > 0.01
    /// (Burda et al.'s criterion).
    pub fn active_units(&self) -> usize {
        self.mean_variance.iter().filter(|&&v| v > ACTIVE).count()
    }
}

/// One stochastic layer's statistics over a dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerStats {
    pub latent: usize,
    /// Mean KL estimate per example, nats.
    pub kl: f64,
    pub active_units: usize,
    /// Variance across the data of each unit's posterior mean.
    pub posterior_mean_variance: Vec<f64>,
}

impl LayerStats {
    /// From every example's KL estimate and posterior means [N, L].
    pub fn new(kl: &[f64], q_mean: &[f32], latent: usize) -> Self {
        let n = kl.len().max(1) as f64;
        let (mut sum, mut sumsq) = (vec![0.0; latent], vec![0.0; latent]);
        for (i, &m) in q_mean.iter().enumerate() {
            sum[i % latent] += m as f64;
            sumsq[i % latent] += (m as f64).powi(2);
        }
        let mean_variance: Vec<f64> = (0..latent)
            .map(|d| (sumsq[d] / n - (sum[d] / n).powi(2)).max(0.0))
            .collect();
        Self {
            latent,
            kl: kl.iter().sum::<f64>() / n,
            active_units: mean_variance.iter().filter(|&&v| v > ACTIVE).count(),
            posterior_mean_variance: mean_variance,
        }
    }
}

/// Burda et al.'s threshold on Cov_x(E_q[z_d]) for an active unit.
const ACTIVE: f64 = 0.01;
