//! A Markov hierarchy of stochastic layers (Burda et al., 2016, §3) in f64: inference
//! q(z_1|x) q(z_2|z_1) …, generation p(z_L) Π p(z_{l−1}|z_l) p(x|z_1), every conditional a
//! diagonal Gaussian from an MLP (`VaeConfig::upper`). The loss with K samples per example uses
//! the log-weights
//!
//! ```text
//! log w = −rec(x|z_1) + β·[ log p(z_L) + Σ_{l≥2} log p(z_{l−1}|z_l) − Σ_l log q(z_l|·) ]
//! ```
//!
//! (the Gaussian normalizers cancel in pairs; log q is formed from ε, log q = −½Σ(ε² + logσ²)).
//! IWAE: loss = −log (1/K) Σ_k w_k, the gradient weighted by the normalized weights; ELBO:
//! loss = −(1/K) Σ_k log w_k (every latent term by Monte Carlo). Backpropagation runs top-down:
//! each stage's generative path, then its reparameterization and inference path.

use super::iwae;
use super::vae::{
    Chain, Generator, Heads, StepResult, Trunk, chain_backward, chain_forward,
    sample_row_reconstruction, weigh_reconstruction,
};
use crate::kernels::iwae::Objective;
use crate::model::{ParamLayout, VaeConfig};

/// One upper stage's forward values (all [K·B, ·]).
struct StageValues {
    q: Chain,
    q_logvar: Vec<f64>,
    eps: Vec<f64>,
    z: Vec<f64>,
    p: Chain,
    p_mu: Vec<f64>,
    p_logvar: Vec<f64>,
}

impl StageValues {
    fn values<'a>(&'a self, z_below: &'a [f64], rows: usize) -> StageRef<'a> {
        StageRef {
            rows,
            eps: &self.eps,
            q_logvar: &self.q_logvar,
            z: &self.z,
            z_below,
            p_mu: &self.p_mu,
            p_logvar: &self.p_logvar,
        }
    }
}

/// One upper stage's values, row-major over R sample rows: the noise, log-variance and draw of
/// q(z | z_below) [R, L], and z_below with p(z_below | z) [R, Lb].
pub struct StageRef<'a> {
    pub rows: usize,
    pub eps: &'a [f64],
    pub q_logvar: &'a [f64],
    pub z: &'a [f64],
    pub z_below: &'a [f64],
    pub p_mu: &'a [f64],
    pub p_logvar: &'a [f64],
}

impl StageRef<'_> {
    /// (R, L, Lb).
    fn dims(&self) -> (usize, usize, usize) {
        let r = self.rows;
        (r, self.z.len() / r, self.z_below.len() / r)
    }
}

/// The stage's part of each row's log p/q (shaders/hierarchy.wgsl, `stage_terms`):
/// ½Σ(ε² + q_logvar) − ½Σ((z_below − p_mu)² e^{−p_logvar} + p_logvar), and −½Σz² for the top.
pub fn stage_terms(s: &StageRef, top: bool) -> Vec<f64> {
    let (rows, l, lb) = s.dims();
    (0..rows)
        .map(|r| {
            let q: f64 = (r * l..(r + 1) * l)
                .map(|i| s.eps[i] * s.eps[i] + s.q_logvar[i])
                .sum();
            let p: f64 = (r * lb..(r + 1) * lb)
                .map(|i| {
                    let d = s.z_below[i] - s.p_mu[i];
                    d * d * (-s.p_logvar[i]).exp() + s.p_logvar[i]
                })
                .sum();
            let prior: f64 = (r * l..(r + 1) * l).map(|i| s.z[i] * s.z[i]).sum();
            0.5 * (q - p) - if top { 0.5 * prior } else { 0.0 }
        })
        .collect()
}

/// Gradients of −Σ_r g_r·t_r (`stage_grads`): for p's heads, z_below's explicit term and, for
/// the top stage, z's prior term.
pub struct PriorGrads {
    pub dp_mu: Vec<f64>,
    pub dp_logvar: Vec<f64>,
    pub dz_below: Vec<f64>,
    pub dz: Option<Vec<f64>>,
}

/// `g` [R]: each row's normalized weight times β.
pub fn stage_grads(s: &StageRef, g: &[f64], top: bool) -> PriorGrads {
    let (_, l, lb) = s.dims();
    let n = s.z_below.len();
    let (mut dp_mu, mut dp_logvar, mut dz_below) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let gr = g[i / lb];
        let prec = (-s.p_logvar[i]).exp();
        let d = s.z_below[i] - s.p_mu[i];
        dp_mu[i] = -gr * d * prec;
        dp_logvar[i] = gr * 0.5 * (1.0 - d * d * prec);
        dz_below[i] = gr * d * prec;
    }
    let dz = top.then(|| (0..s.z.len()).map(|i| g[i / l] * s.z[i]).collect());
    PriorGrads {
        dp_mu,
        dp_logvar,
        dz_below,
        dz,
    }
}

/// ∂loss/∂q_logvar from the complete dz (`posterior_grads`): dz·ε·½e^{q_logvar/2} − g/2.
pub fn posterior_grads(eps: &[f64], q_logvar: &[f64], dz: &[f64], g: &[f64]) -> Vec<f64> {
    let l = dz.len() / g.len();
    (0..dz.len())
        .map(|i| dz[i] * eps[i] * 0.5 * (0.5 * q_logvar[i]).exp() - 0.5 * g[i / l])
        .collect()
}

/// The number of sample rows and each layer's noise [rows, L_l] from the layers' noise laid end
/// to end (`eps` as [`step`] takes it).
pub(crate) fn split_noise<'e>(eps: &'e [f64], latents: &[usize]) -> (usize, Vec<&'e [f64]>) {
    let rows = eps.len() / latents.iter().sum::<usize>();
    let mut start = 0;
    let parts = latents
        .iter()
        .map(|&l| {
            start += rows * l;
            &eps[start - rows * l..start]
        })
        .collect();
    (rows, parts)
}

/// The objective over each example's K sample rows (row s·B + b) from their log-weights and
/// reconstruction terms: (loss sum, mean reconstruction sum, each row's normalized weight).
/// IWAE: −log mean_k w_k with the softmax weights; ELBO: −mean_k log w_k with weights 1/K.
pub(crate) fn weigh_samples(
    objective: Objective,
    batch: usize,
    log_w: &[f64],
    rec_rows: &[f64],
) -> (f64, f64, Vec<f64>) {
    let rows = log_w.len();
    let k = rows / batch;
    let mut weights = vec![0.0; rows];
    let (mut total, mut rec) = (0.0, 0.0);
    for b in 0..batch {
        let mine: Vec<usize> = (0..k).map(|s| s * batch + b).collect();
        rec += mine.iter().map(|&r| rec_rows[r]).sum::<f64>() / k as f64;
        match objective {
            Objective::Iwae => {
                let lw: Vec<f64> = mine.iter().map(|&r| log_w[r]).collect();
                let bound = iwae::log_mean_exp(&lw);
                total -= bound;
                for &r in &mine {
                    weights[r] = (log_w[r] - bound).exp() / k as f64;
                }
            }
            Objective::Elbo => {
                total -= mine.iter().map(|&r| log_w[r]).sum::<f64>() / k as f64;
                mine.iter().for_each(|&r| weights[r] = 1.0 / k as f64);
            }
        }
    }
    (total, rec, weights)
}

/// Loss and gradient of `objective` for a hierarchical model on one batch `x` [B, D], with the
/// noise of every stochastic layer in `eps`: [K·B, L_1], then [K·B, L_2], … (row s·B + b).
pub fn step(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    objective: Objective,
    beta: f64,
) -> StepResult {
    let layers = cfg.layers();
    let latents = cfg.latents();
    let batch = x.len() / cfg.input;
    let (rows, eps_at) = split_noise(eps, &latents);

    // Inference of z_1 on the B inputs, K samples.
    let trunk = Trunk::forward(&layers, layout, p, x, batch);
    let top = trunk.top().to_vec();
    let heads1 = Heads {
        mu: &layers.mu,
        logvar: &layers.logvar,
    };
    let (mu1, logvar1) = heads1.forward(layout, p, &top, batch);
    let z1 = super::sample::reparam_forward(&mu1, &logvar1, eps_at[0]);
    // Upper stages on the K·B sample rows.
    let mut stages: Vec<StageValues> = Vec::new();
    for (j, st) in layers.upper.iter().enumerate() {
        let below = stages.last().map_or(&z1, |s| &s.z);
        let q = chain_forward(&st.q_hidden, layout, p, below, rows);
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        let (q_mu, q_logvar) = heads.forward(layout, p, q.ins.last().unwrap(), rows);
        let eps = eps_at[j + 1].to_vec();
        let z: Vec<f64> = (0..eps.len())
            .map(|i| q_mu[i] + (0.5 * q_logvar[i]).exp() * eps[i])
            .collect();
        let pc = chain_forward(&st.p_hidden, layout, p, &z, rows);
        let heads = Heads {
            mu: &st.p_mu,
            logvar: &st.p_logvar,
        };
        let (p_mu, p_logvar) = heads.forward(layout, p, pc.ins.last().unwrap(), rows);
        stages.push(StageValues {
            q,
            q_logvar,
            eps,
            z,
            p: pc,
            p_mu,
            p_logvar,
        });
    }
    // Decoder and reconstruction terms of every sample row.
    let dec = Generator::forward(&layers, layout, p, &z1, rows);
    let mut loss = sample_row_reconstruction(cfg, layout, p, x, dec.out(), rows);

    // The latent terms of each row: −log q(z_1|x), then every upper stage's (or z_1's N(0, I)
    // prior in a one-layer model).
    let l1 = latents[0];
    let mut lat: Vec<f64> = (0..rows)
        .map(|r| {
            let b = r % batch;
            (0..l1)
                .map(|i| {
                    let e = eps_at[0][r * l1 + i];
                    let mut t = e * e + logvar1[b * l1 + i];
                    if stages.is_empty() {
                        t -= z1[r * l1 + i] * z1[r * l1 + i];
                    }
                    0.5 * t
                })
                .sum()
        })
        .collect();
    let top_stage = stages.len().saturating_sub(1);
    for (j, st) in stages.iter().enumerate() {
        let below = if j == 0 { &z1 } else { &stages[j - 1].z };
        let terms = stage_terms(&st.values(below, rows), j == top_stage);
        lat.iter_mut().zip(terms).for_each(|(a, t)| *a += t);
    }
    let log_w: Vec<f64> = (0..rows).map(|r| beta * lat[r] - loss.rec[r]).collect();
    let (total, rec, weights) = weigh_samples(objective, batch, &log_w, &loss.rec);

    // Backward. Row weights g_r scale every term of row r.
    let mut grads = vec![0.0; layout.len];
    weigh_reconstruction(cfg, layout, &mut loss, &weights, &mut grads);
    let d_dec = std::mem::take(&mut loss.d_dec);
    // dz[l]: ∂loss/∂z_l, complete once every stage above l has run.
    let mut dz: Vec<Vec<f64>> = latents.iter().map(|&l| vec![0.0; rows * l]).collect();
    dz[0] = dec.backward(&layers, layout, p, d_dec, rows, &mut grads);
    let g: Vec<f64> = weights.iter().map(|w| w * beta).collect();
    if stages.is_empty() {
        for (i, d) in dz[0].iter_mut().enumerate() {
            *d += g[i / l1] * z1[i];
        }
    }
    for (j, st) in layers.upper.iter().enumerate().rev() {
        let v = &stages[j];
        let below = if j == 0 { &z1 } else { &stages[j - 1].z };
        let values = v.values(below, rows);
        // Generative path p(z_below | z): its heads' gradients and the explicit term in z_below.
        let prior = stage_grads(&values, &g, j == top_stage);
        dz[j]
            .iter_mut()
            .zip(&prior.dz_below)
            .for_each(|(a, b)| *a += b);
        if let Some(d) = &prior.dz {
            dz[j + 1].iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
        let heads = Heads {
            mu: &st.p_mu,
            logvar: &st.p_logvar,
        };
        let d_pt = heads.backward(
            layout,
            p,
            v.p.ins.last().unwrap(),
            (&prior.dp_mu, &prior.dp_logvar),
            rows,
            &mut grads,
        );
        let from_p = chain_backward(&st.p_hidden, layout, p, &v.p, d_pt, rows, &mut grads);
        dz[j + 1].iter_mut().zip(&from_p).for_each(|(a, b)| *a += b);
        // Reparameterization and inference path q(z | z_below); q's mean takes dz itself.
        let dq_logvar = posterior_grads(&v.eps, &v.q_logvar, &dz[j + 1], &g);
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        let d_qt = heads.backward(
            layout,
            p,
            v.q.ins.last().unwrap(),
            (&dz[j + 1], &dq_logvar),
            rows,
            &mut grads,
        );
        let from_q = chain_backward(&st.q_hidden, layout, p, &v.q, d_qt, rows, &mut grads);
        dz[j].iter_mut().zip(&from_q).for_each(|(a, b)| *a += b);
    }
    // z_1 = μ_1 + σ_1 ε_1, summed over the K samples of each input; −log q(z_1|x) adds −β/2·g.
    let mut dmu1 = vec![0.0; batch * l1];
    let mut dlv1 = vec![0.0; batch * l1];
    for (i, &g) in dz[0].iter().enumerate() {
        let bi = i % (batch * l1);
        dmu1[bi] += g;
        dlv1[bi] +=
            g * eps_at[0][i] * 0.5 * (0.5 * logvar1[bi]).exp() - weights[i / l1] * beta * 0.5;
    }
    let d_top = heads1.backward(layout, p, &top, (&dmu1, &dlv1), batch, &mut grads);
    trunk.backward(&layers, layout, p, d_top, batch, &mut grads);
    StepResult {
        total,
        rec,
        kl: total - rec,
        grads,
    }
}
