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
