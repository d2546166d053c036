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
    Chain, Heads, StepResult, chain_backward, chain_forward, dense_backward, dense_forward,
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
    let rows = eps.len() / latents.iter().sum::<usize>();
    let k = rows / batch;
    let mut eps_at = Vec::new();
    let mut start = 0;
    for &l in &latents {
        eps_at.push(&eps[start..start + rows * l]);
        start += rows * l;
    }

    // Inference of z_1 on the B inputs, K samples.
    let enc = chain_forward(&layers.encoder, layout, p, x, batch);
    let top = enc.ins.last().unwrap().clone();
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
    let dec = chain_forward(&layers.decoder, layout, p, &z1, rows);
    let (out, _) = dense_forward(&layers.out, layout, p, dec.ins.last().unwrap(), rows);
    let mut loss = sample_row_reconstruction(cfg, layout, p, x, &out, rows);

    // The latent terms of each row: −log q of every layer, log p of every z below the top
    // given the one above, log p(z_L).
    let row_sum =
        |l: usize, r: usize, f: &dyn Fn(usize) -> f64| -> f64 { (r * l..(r + 1) * l).map(f).sum() };
    let l1 = latents[0];
    let mut lat = vec![0.0; rows];
    for (r, lt) in lat.iter_mut().enumerate() {
        let b = r % batch;
        let e1 = eps_at[0];
        *lt += 0.5 * row_sum(l1, r, &|i| e1[i] * e1[i] + logvar1[b * l1 + i % l1]);
        for (j, st) in stages.iter().enumerate() {
            let (l, lb) = (latents[j + 1], latents[j]);
            let below = if j == 0 { &z1 } else { &stages[j - 1].z };
            *lt += 0.5 * row_sum(l, r, &|i| st.eps[i] * st.eps[i] + st.q_logvar[i]);
            *lt -= 0.5
                * row_sum(lb, r, &|i| {
                    let d = below[i] - st.p_mu[i];
                    d * d * (-st.p_logvar[i]).exp() + st.p_logvar[i]
                });
        }
        let (top_z, lt_n) = (
            stages.last().map_or(&z1, |s| &s.z),
            *latents.last().unwrap(),
        );
        *lt -= 0.5 * row_sum(lt_n, r, &|i| top_z[i] * top_z[i]);
    }
    let log_w: Vec<f64> = (0..rows).map(|r| beta * lat[r] - loss.rec[r]).collect();
    let mut weights = vec![0.0; rows];
    let (mut total, mut rec) = (0.0, 0.0);
    for b in 0..batch {
        let mine: Vec<usize> = (0..k).map(|s| s * batch + b).collect();
        rec += mine.iter().map(|&r| loss.rec[r]).sum::<f64>() / k as f64;
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

    // Backward. Row weights g_r scale every term of row r.
    let mut grads = vec![0.0; layout.len];
    weigh_reconstruction(cfg, layout, &mut loss, &weights, &mut grads);
    let d_top = dense_backward(
        &layers.out,
        layout,
        p,
        dec.ins.last().unwrap(),
        &loss.d_dec,
        rows,
        &mut grads,
    );
    // dz[l]: ∂loss/∂z_l, complete once every stage above l has run.
    let mut dz: Vec<Vec<f64>> = latents.iter().map(|&l| vec![0.0; rows * l]).collect();
    dz[0] = chain_backward(&layers.decoder, layout, p, &dec, d_top, rows, &mut grads);
    let top_l = latents.len() - 1;
    let top_z = stages.last().map_or(&z1, |s| &s.z).clone();
    for (i, g) in dz[top_l].iter_mut().enumerate() {
        *g += weights[i / latents[top_l]] * beta * top_z[i];
    }
    for (j, st) in layers.upper.iter().enumerate().rev() {
        let v = &stages[j];
        let (l, lb) = (latents[j + 1], latents[j]);
        let below = if j == 0 {
            z1.clone()
        } else {
            stages[j - 1].z.clone()
        };
        // Generative path p(z_below | z_l): its (μ, logσ²) gradients, and the explicit term in
        // z_below.
        let mut dmu_p = vec![0.0; rows * lb];
        let mut dlv_p = vec![0.0; rows * lb];
        for i in 0..rows * lb {
            let g = weights[i / lb] * beta;
            let prec = (-v.p_logvar[i]).exp();
            let d = below[i] - v.p_mu[i];
            dmu_p[i] = -g * d * prec;
            dlv_p[i] = g * 0.5 * (1.0 - d * d * prec);
            dz[j][i] += g * d * prec;
        }
        let heads = Heads {
            mu: &st.p_mu,
            logvar: &st.p_logvar,
        };
        let d_pt = heads.backward(
            layout,
            p,
            v.p.ins.last().unwrap(),
            (&dmu_p, &dlv_p),
            rows,
            &mut grads,
        );
        let from_p = chain_backward(&st.p_hidden, layout, p, &v.p, d_pt, rows, &mut grads);
        dz[j + 1].iter_mut().zip(&from_p).for_each(|(a, b)| *a += b);
        // Reparameterization and inference path q(z_l | z_below).
        let dmu_q = dz[j + 1].clone();
        let dlv_q: Vec<f64> = (0..rows * l)
            .map(|i| {
                dz[j + 1][i] * v.eps[i] * 0.5 * (0.5 * v.q_logvar[i]).exp()
                    - weights[i / l] * beta * 0.5
            })
            .collect();
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        let d_qt = heads.backward(
            layout,
            p,
            v.q.ins.last().unwrap(),
            (&dmu_q, &dlv_q),
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
    chain_backward(&layers.encoder, layout, p, &enc, d_top, batch, &mut grads);
    StepResult {
        total,
        rec,
        kl: total - rec,
        grads,
    }
}
