//! The ladder VAE's precision-weighted posterior in f64: the twins of `shaders/ladder.wgsl`,
//! written from the precisions themselves (σ_q⁻² = σ̂⁻² + σ_p⁻²) rather than the shader's
//! sigmoid/softplus form, so that the test compares two derivations.

/// (μ_q, logσ²_q) elementwise from the bottom-up (μ̂, logσ̂²) and the prior (μ_p, logσ²_p).
pub fn combine(mu_hat: &[f64], lv_hat: &[f64], mu_p: &[f64], lv_p: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut mu_q = Vec::with_capacity(mu_hat.len());
    let mut lv_q = Vec::with_capacity(mu_hat.len());
    for i in 0..mu_hat.len() {
        // Scaled by the larger precision so neither overflows.
        let m = (-lv_hat[i]).max(-lv_p[i]);
        let (a, b) = ((-lv_hat[i] - m).exp(), (-lv_p[i] - m).exp());
        mu_q.push((a * mu_hat[i] + b * mu_p[i]) / (a + b));
        lv_q.push(-(m + (a + b).ln()));
    }
    (mu_q, lv_q)
}

/// Gradients of [`combine`] from (∂μ_q, ∂logσ²_q): (∂μ̂, ∂logσ̂², ∂μ_p, ∂logσ²_p).
pub struct CombineGrads {
    pub mu_hat: Vec<f64>,
    pub lv_hat: Vec<f64>,
    pub mu_p: Vec<f64>,
    pub lv_p: Vec<f64>,
}

pub fn combine_grads(
    mu_hat: &[f64],
    lv_hat: &[f64],
    mu_p: &[f64],
    lv_p: &[f64],
    d_mu_q: &[f64],
    d_lv_q: &[f64],
) -> CombineGrads {
    let n = mu_hat.len();
    let mut g = CombineGrads {
        mu_hat: vec![0.0; n],
        lv_hat: vec![0.0; n],
        mu_p: vec![0.0; n],
        lv_p: vec![0.0; n],
    };
    for i in 0..n {
        let m = (-lv_hat[i]).max(-lv_p[i]);
        let (a, b) = ((-lv_hat[i] - m).exp(), (-lv_p[i] - m).exp());
        let (w, w_p) = (a / (a + b), b / (a + b));
        // ∂μ_q/∂logσ̂² = (μ̂ − μ_p)·∂w/∂logσ̂², ∂w/∂logσ̂² = −a·b/(a + b)².
        let cross = w * w_p * (mu_hat[i] - mu_p[i]) * d_mu_q[i];
        g.mu_hat[i] = w * d_mu_q[i];
        g.lv_hat[i] = w * d_lv_q[i] - cross;
        g.mu_p[i] = w_p * d_mu_q[i];
        g.lv_p[i] = w_p * d_lv_q[i] + cross;
    }
    g
}

/// The posterior mean of z_1 [B, L_1] for inputs `x` [B, D] along the top-down mean path: the
/// bottom-up Gaussians, then z_L = μ̂_L and z_l = μ_q,l of the combination with the prior from
/// the mean above (the device's `Net::ladder_mean`, which pictures encode with).
pub fn posterior_mean(
    cfg: &crate::model::VaeConfig,
    layout: &crate::model::ParamLayout,
    p: &[f64],
    x: &[f64],
) -> Vec<f64> {
    use super::vae::{Heads, Trunk, chain_forward};
    let layers = cfg.layers();
    let rows = x.len() / cfg.input;
    let trunk = Trunk::forward(&layers, layout, p, x, rows);
    let heads1 = Heads {
        mu: &layers.mu,
        logvar: &layers.logvar,
    };
    let mut hat = vec![heads1.forward(layout, p, trunk.top(), rows)];
    for st in &layers.upper {
        let c = chain_forward(&st.q_hidden, layout, p, &hat.last().unwrap().0, rows);
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        hat.push(heads.forward(layout, p, c.ins.last().unwrap(), rows));
    }
    let mut mean = hat.pop().unwrap().0;
    for (st, (mu_hat, lv_hat)) in layers.upper.iter().zip(&hat).rev() {
        let c = chain_forward(&st.p_hidden, layout, p, &mean, rows);
        let heads = Heads {
            mu: &st.p_mu,
            logvar: &st.p_logvar,
        };
        let (mu_p, lv_p) = heads.forward(layout, p, c.ins.last().unwrap(), rows);
        mean = combine(mu_hat, lv_hat, &mu_p, &lv_p).0;
    }
    mean
}

/// Loss and gradient of `objective` for a ladder VAE (`VaeConfig::ladder`) on one batch `x`
/// [B, D], with the noise of every stochastic layer in `eps` as for [`super::hvae::step`]:
/// [K·B, L_1], then [K·B, L_2], … (row s·B + b).
///
/// Inference runs bottom-up, deterministically, on every sample row (the batch repeated K
/// times, as the device does): (μ̂_1, logσ̂²_1) from the encoder, (μ̂_l, logσ̂²_l) from stage
/// l − 1's inference MLP applied to μ̂_{l−1}. Then top-down: q(z_L) = N(μ̂_L, σ̂²_L); for
/// l < L, p(z_l | z_{l+1}) from stage l's generative MLP and q(z_l | ·) = [`combine`] of the
/// two. The log-weights are the hierarchy's (`cpu::hvae`): −rec + β·[log p(z_L) + Σ log
/// p(z_l|z_{l+1}) − Σ log q(z_l|·)], every term by Monte Carlo. Backpropagation runs up the
/// layers (each z_l's gradient is complete once the layers below have run), then down the
/// bottom-up path.
pub fn step(
    cfg: &crate::model::VaeConfig,
    layout: &crate::model::ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    objective: crate::kernels::iwae::Objective,
    beta: f64,
) -> super::vae::StepResult {
    use super::hvae::{
        StageRef, posterior_grads, split_noise, stage_grads, stage_terms, weigh_samples,
    };
    use super::vae::{
        Generator, Heads, Trunk, chain_backward, chain_forward, sample_row_reconstruction,
        weigh_reconstruction,
    };
    let layers = cfg.layers();
    let latents = cfg.latents();
    let n_layers = latents.len();
    let batch = x.len() / cfg.input;
    let (rows, eps_at) = split_noise(eps, &latents);
    let x_rows: Vec<f64> = x.iter().copied().cycle().take(rows * cfg.input).collect();

    // Bottom-up: (μ̂_l, logσ̂²_l) for every layer, on every sample row.
    let trunk = Trunk::forward(&layers, layout, p, &x_rows, rows);
    let heads1 = Heads {
        mu: &layers.mu,
        logvar: &layers.logvar,
    };
    let mut hat = vec![heads1.forward(layout, p, trunk.top(), rows)];
    let mut up_chains = Vec::new();
    for st in &layers.upper {
        let c = chain_forward(&st.q_hidden, layout, p, &hat.last().unwrap().0, rows);
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        hat.push(heads.forward(layout, p, c.ins.last().unwrap(), rows));
        up_chains.push(c);
    }
    // Top-down: q and z of every layer, and the prior of every layer but the top.
    let mut q: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); n_layers];
    let mut z: Vec<Vec<f64>> = vec![Vec::new(); n_layers];
    let mut prior: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); n_layers - 1];
    let mut down_chains = Vec::new();
    for i in (0..n_layers).rev() {
        q[i] = if i + 1 == n_layers {
            hat[i].clone()
        } else {
            let st = &layers.upper[i];
            let c = chain_forward(&st.p_hidden, layout, p, &z[i + 1], rows);
            let heads = Heads {
                mu: &st.p_mu,
                logvar: &st.p_logvar,
            };
            prior[i] = heads.forward(layout, p, c.ins.last().unwrap(), rows);
            down_chains.push((i, c));
            combine(&hat[i].0, &hat[i].1, &prior[i].0, &prior[i].1)
        };
        z[i] = super::sample::reparam_forward(&q[i].0, &q[i].1, eps_at[i]);
    }
    down_chains.sort_by_key(|(i, _)| *i);
    let dec = Generator::forward(&layers, layout, p, &z[0], rows);
    let mut loss = sample_row_reconstruction(cfg, layout, p, x, dec.out(), rows);

    // Latent terms per row: stage i of the hierarchy's kernels with z_below = z_i, z = z_{i+1}
    // (q's terms of z_{i+1}, p(z_i | z_{i+1}), the top prior), and z_1's q-term alone.
    let stage = |i: usize| StageRef {
        rows,
        eps: eps_at[i + 1],
        q_logvar: &q[i + 1].1,
        z: &z[i + 1],
        z_below: &z[i],
        p_mu: &prior[i].0,
        p_logvar: &prior[i].1,
    };
    let none: [f64; 0] = [];
    let first = StageRef {
        rows,
        eps: eps_at[0],
        q_logvar: &q[0].1,
        z: &z[0],
        z_below: &none,
        p_mu: &none,
        p_logvar: &none,
    };
    let mut lat = stage_terms(&first, n_layers == 1);
    for i in 0..n_layers - 1 {
        let t = stage_terms(&stage(i), i + 2 == n_layers);
        lat.iter_mut().zip(t).for_each(|(a, b)| *a += b);
    }
    let log_w: Vec<f64> = (0..rows).map(|r| beta * lat[r] - loss.rec[r]).collect();
    let (total, rec, weights) = weigh_samples(objective, batch, &log_w, &loss.rec);

    // Backward up the layers.
    let mut grads = vec![0.0; layout.len];
    weigh_reconstruction(cfg, layout, &mut loss, &weights, &mut grads);
    let g: Vec<f64> = weights.iter().map(|w| w * beta).collect();
    let mut dz: Vec<Vec<f64>> = latents.iter().map(|&l| vec![0.0; rows * l]).collect();
    dz[0] = dec.backward(
        &layers,
        layout,
        p,
        std::mem::take(&mut loss.d_dec),
        rows,
        &mut grads,
    );
    let mut d_hat: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
    let add = |a: &mut Vec<f64>, b: &[f64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    for i in 0..n_layers {
        let top = i + 1 == n_layers;
        let pg = (!top).then(|| stage_grads(&stage(i), &g, i + 2 == n_layers));
        if let Some(pg) = &pg {
            add(&mut dz[i], &pg.dz_below);
            if let Some(d) = &pg.dz {
                add(&mut dz[i + 1], d);
            }
        } else if n_layers == 1 {
            // One layer: z_1's prior is N(0, I).
            let dtop: Vec<f64> = (0..dz[0].len())
                .map(|j| g[j / latents[0]] * z[0][j])
                .collect();
            add(&mut dz[0], &dtop);
        }
        let d_lv_q = posterior_grads(eps_at[i], &q[i].1, &dz[i], &g);
        let Some(pg) = pg else {
            d_hat.push((dz[i].clone(), d_lv_q));
            break;
        };
        let cg = combine_grads(
            &hat[i].0,
            &hat[i].1,
            &prior[i].0,
            &prior[i].1,
            &dz[i],
            &d_lv_q,
        );
        let (mut dp_mu, mut dp_lv) = (pg.dp_mu, pg.dp_logvar);
        add(&mut dp_mu, &cg.mu_p);
        add(&mut dp_lv, &cg.lv_p);
        let st = &layers.upper[i];
        let c = &down_chains[i].1;
        let heads = Heads {
            mu: &st.p_mu,
            logvar: &st.p_logvar,
        };
        let d_top = heads.backward(
            layout,
            p,
            c.ins.last().unwrap(),
            (&dp_mu, &dp_lv),
            rows,
            &mut grads,
        );
        let from_p = chain_backward(&st.p_hidden, layout, p, c, d_top, rows, &mut grads);
        add(&mut dz[i + 1], &from_p);
        d_hat.push((cg.mu_hat, cg.lv_hat));
    }
    // Then down the bottom-up path.
    for j in (0..layers.upper.len()).rev() {
        let st = &layers.upper[j];
        let c = &up_chains[j];
        let heads = Heads {
            mu: &st.q_mu,
            logvar: &st.q_logvar,
        };
        let (dm, dl) = d_hat[j + 1].clone();
        let d_top = heads.backward(
            layout,
            p,
            c.ins.last().unwrap(),
            (&dm, &dl),
            rows,
            &mut grads,
        );
        let from_q = chain_backward(&st.q_hidden, layout, p, c, d_top, rows, &mut grads);
        add(&mut d_hat[j].0, &from_q);
    }
    let (dm, dl) = &d_hat[0];
    let d_top = heads1.backward(layout, p, trunk.top(), (dm, dl), rows, &mut grads);
    trunk.backward(&layers, layout, p, d_top, rows, &mut grads);
    super::vae::StepResult {
        total,
        rec,
        kl: total - rec,
        grads,
    }
}
