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
