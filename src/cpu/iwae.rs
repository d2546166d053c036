//! The importance-weighted bound (`shaders/iwae.wgsl`) in f64.

/// log w for each row r = s·B + b: −rec_r + ½ Σ_l (ε² + logσ²_{b,l} − z²).
pub fn log_weights(rec: &[f64], z: &[f64], eps: &[f64], logvar: &[f64], batch: usize) -> Vec<f64> {
    let latent = logvar.len() / batch;
    rec.iter()
        .enumerate()
        .map(|(r, &rec)| {
            let b = r % batch;
            let sum: f64 = (0..latent)
                .map(|l| {
                    let (zi, e) = (z[r * latent + l], eps[r * latent + l]);
                    e * e + logvar[b * latent + l] - zi * zi
                })
                .sum();
            0.5 * sum - rec
        })
        .collect()
}

/// log (1/K) Σ_k e^{x_k}, stably.
pub fn log_mean_exp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + (x.iter().map(|v| (v - m).exp()).sum::<f64>() / x.len() as f64).ln()
}

/// The bound per example from all K·B log-weights (rows k·B + b).
pub fn bound(log_w: &[f64], batch: usize) -> Vec<f64> {
    (0..batch)
        .map(|b| {
            let mine: Vec<f64> = log_w.iter().skip(b).step_by(batch).copied().collect();
            log_mean_exp(&mine)
        })
        .collect()
}

/// The K-sample training loss of each example and its latent-side gradients, as
/// `shaders/iwae.wgsl`'s `train_terms` forms them (see there); rows r = s·B + b.
#[derive(Debug, Clone, Default)]
pub struct TrainTerms {
    /// [K·B]: how much each sample row's reconstruction gradient counts.
    pub weights: Vec<f64>,
    /// [B] each.
    pub rec: Vec<f64>,
    pub kl: Vec<f64>,
    pub total: Vec<f64>,
    /// [B, L].
    pub dmu: Vec<f64>,
    pub dlogvar: Vec<f64>,
    /// [K·B, L]: the latent terms' part of ∂loss/∂z.
    pub dz: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
pub fn train_terms(
    objective: crate::kernels::iwae::Objective,
    beta: f64,
    batch: usize,
    rec: &[f64],
    z: &[f64],
    eps: &[f64],
    mu: &[f64],
    logvar: &[f64],
) -> TrainTerms {
    use crate::kernels::iwae::Objective;
    let latent = mu.len() / batch;
    let samples = rec.len() / batch;
    let mut t = TrainTerms {
        weights: vec![0.0; rec.len()],
        dz: vec![0.0; z.len()],
        dmu: vec![0.0; mu.len()],
        dlogvar: vec![0.0; mu.len()],
        ..Default::default()
    };
    let log_w: Vec<f64> = log_weights(rec, z, eps, logvar, batch)
        .iter()
        .zip(rec)
        // log_weights has β = 1: rescale its latent part.
        .map(|(lw, r)| beta * (lw + r) - r)
        .collect();
    for b in 0..batch {
        let rows: Vec<usize> = (0..samples).map(|s| s * batch + b).collect();
        let rec_mean = rows.iter().map(|&r| rec[r]).sum::<f64>() / samples as f64;
        let (total, kl) = match objective {
            Objective::Elbo => {
                let mut kl = 0.0;
                for l in 0..latent {
                    let i = b * latent + l;
                    kl += super::elbo::kl_term(mu[i], logvar[i]);
                    t.dmu[i] = beta * mu[i];
                    t.dlogvar[i] = beta * 0.5 * logvar[i].exp_m1();
                }
                rows.iter()
                    .for_each(|&r| t.weights[r] = 1.0 / samples as f64);
                (rec_mean + beta * kl, kl)
            }
            Objective::Iwae => {
                let mine: Vec<f64> = rows.iter().map(|&r| log_w[r]).collect();
                let bound = log_mean_exp(&mine);
                for &r in &rows {
                    let w = (log_w[r] - bound).exp() / samples as f64;
                    t.weights[r] = w;
                    for l in 0..latent {
                        t.dz[r * latent + l] = w * beta * z[r * latent + l];
                    }
                }
                for l in 0..latent {
                    t.dlogvar[b * latent + l] = -0.5 * beta;
                }
                (-bound, -bound - rec_mean)
            }
        };
        t.rec.push(rec_mean);
        t.kl.push(kl);
        t.total.push(total);
    }
    t
}
