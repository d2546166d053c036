//! KL divergence between two diagonal Gaussians and its gradients, in f64: what
//! `shaders/gauss_kl.wgsl` computes.
//!
//! Per element i of [B, L] arrays μ_q, logσ²_q, μ_p, logσ²_p, with diff = μ_q − μ_p and
//! d = logσ²_q − logσ²_p:
//!   KL_i = ½ [(lv_p − lv_q) + (e^{lv_q} + diff²)·e^{−lv_p} − 1] = ½ [(e^d − 1 − d) + diff²·e^{−lv_p}],
//! written in the second form, which does not cancel when q ≈ p; kl[b] = Σ_l KL_{b,l}.
//! The gradients are those of `scale · Σ_b β·kl[b]`:
//! - ∂/∂μ_q = β·scale·diff·e^{−lv_p}, ∂/∂μ_p = −∂/∂μ_q;
//! - ∂/∂lv_q = β·scale·½(e^d − 1);
//! - ∂/∂lv_p = β·scale·½(1 − (e^{lv_q} + diff²)·e^{−lv_p}) = −β·scale·½((e^d − 1) + diff²·e^{−lv_p}).
//!
//! With μ_p = 0 and lv_p = 0 each term and gradient is bit for bit what [`super::elbo`] computes
//! for the N(0, I) prior.

use super::elbo::exp_excess;

/// Sizes: B rows, L latent dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub latent: usize,
}

/// The four [B, L] inputs (log-variances, not variances).
pub struct Inputs<'a> {
    pub mu_q: &'a [f64],
    pub logvar_q: &'a [f64],
    pub mu_p: &'a [f64],
    pub logvar_p: &'a [f64],
}

/// Per-row KL and the gradients of `scale · Σ_b β·kl[b]`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// [B]
    pub kl: Vec<f64>,
    /// [B, L] each.
    pub dmu_q: Vec<f64>,
    pub dlogvar_q: Vec<f64>,
    pub dmu_p: Vec<f64>,
    pub dlogvar_p: Vec<f64>,
}

/// diff·e^{−lv_p/2}: its square is diff²·e^{−lv_p}, without overflow where that does not.
fn scaled_diff(mu_q: f64, mu_p: f64, lv_p: f64) -> f64 {
    (mu_q - mu_p) * (-0.5 * lv_p).exp()
}

/// One element's KL(N(μ_q, e^{lv_q}) ‖ N(μ_p, e^{lv_p})).
pub fn kl_term(mu_q: f64, lv_q: f64, mu_p: f64, lv_p: f64) -> f64 {
    let r = scaled_diff(mu_q, mu_p, lv_p);
    0.5 * (r * r + exp_excess(lv_q - lv_p))
}

pub fn gauss_kl(beta: f64, scale: f64, n: Dims, inp: &Inputs) -> Output {
    let Dims { batch, latent } = n;
    let len = batch * latent;
    for (name, v) in [
        ("mu_q", inp.mu_q),
        ("logvar_q", inp.logvar_q),
        ("mu_p", inp.mu_p),
        ("logvar_p", inp.logvar_p),
    ] {
        assert!(v.len() >= len, "{name}: {} elements, need {len}", v.len());
    }
    let mut out = Output {
        kl: Vec::with_capacity(batch),
        dmu_q: vec![0.0; len],
        dlogvar_q: vec![0.0; len],
        dmu_p: vec![0.0; len],
        dlogvar_p: vec![0.0; len],
    };
    for b in 0..batch {
        let mut kl = 0.0;
        for l in 0..latent {
            let i = b * latent + l;
            let (mq, lq, mp, lp) = (inp.mu_q[i], inp.logvar_q[i], inp.mu_p[i], inp.logvar_p[i]);
            kl += kl_term(mq, lq, mp, lp);
            let em1 = (lq - lp).exp_m1();
            let r = scaled_diff(mq, mp, lp);
            // Associated as elbo's β·μ·scale and β·½·expm1(lv)·scale, so N(0, I) matches it.
            out.dmu_q[i] = beta * ((mq - mp) * (-lp).exp()) * scale;
            out.dmu_p[i] = -out.dmu_q[i];
            out.dlogvar_q[i] = beta * 0.5 * em1 * scale;
            out.dlogvar_p[i] = -(beta * 0.5 * (em1 + r * r) * scale);
        }
        out.kl.push(kl);
    }
    out
}
