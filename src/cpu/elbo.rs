//! The negative ELBO of a VAE and its gradient, in f64: what `shaders/elbo.wgsl` computes.
//!
//! Per sample b (row of x [B, D], decoder output [B, D], μ and logσ² [B, L]):
//! - rec_b = −log p(x_b | z_b), the reconstruction negative log-likelihood:
//!   - Bernoulli with logits l: Σ max(l, 0) − l·x + log(1 + exp(−|l|));
//!   - Gaussian with fixed σ, means m: ½ Σ ((x − m)²/σ² + log 2πσ²);
//!   - Gaussian with learned log-variance v: ½ Σ ((x − m)²·exp(−v) + v + log 2π);
//! - kl_b = KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + exp(lv) − 1 − lv);
//! - total_b = rec_b + β·kl_b.
//!
//! The gradients are those of `scale · Σ_b total_b` (scale 1 for a batch sum, 1/B for a mean).

pub use crate::kernels::elbo::Likelihood;

/// Sizes: B samples, D data dimensions, L latent dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub dim: usize,
    pub latent: usize,
}

/// The inputs, as in the kernel. `dec_logvar` is read only for
/// [`Likelihood::GaussianLearned`]: [B, D], or [D] shared by all samples when `shared`.
pub struct Inputs<'a> {
    pub x: &'a [f64],
    pub dec: &'a [f64],
    pub dec_logvar: &'a [f64],
    pub mu: &'a [f64],
    pub logvar: &'a [f64],
}

/// Per-sample losses and the gradients of `scale · Σ total`.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub rec: Vec<f64>,
    pub kl: Vec<f64>,
    pub total: Vec<f64>,
    /// [B, D]: w.r.t. the logits or the means.
    pub d_dec: Vec<f64>,
    /// [B, D] per element (summed over b by the caller when the log-variance is shared);
    /// empty unless the likelihood learns it.
    pub d_dec_logvar: Vec<f64>,
    pub dmu: Vec<f64>,
    pub dlogvar: Vec<f64>,
}

pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// −log Bernoulli(x | sigmoid(l)) for x in [0, 1], stable for every logit.
pub fn bernoulli_nll(l: f64, x: f64) -> f64 {
    l.max(0.0) - l * x + (-l.abs()).exp().ln_1p()
}

/// e^v − 1 − v without cancellation near 0.
pub fn exp_excess(v: f64) -> f64 {
    if v.abs() < 0.1 {
        // Σ_{k≥2} v^k / k!, to v^12: truncation < 0.1^11/13! relative.
        let mut p = 0.0;
        for k in (2..=12).rev() {
            p = (p + 1.0 / factorial(k)) * v;
        }
        p * v
    } else {
        v.exp_m1() - v
    }
}

fn factorial(k: u32) -> f64 {
    (1..=k).map(f64::from).product()
}

/// ½ (μ² + e^{lv} − 1 − lv): one latent dimension's KL term.
pub fn kl_term(mu: f64, lv: f64) -> f64 {
    0.5 * (mu * mu + exp_excess(lv))
}

pub fn elbo(likelihood: Likelihood, beta: f64, scale: f64, n: Dims, inp: &Inputs) -> Output {
    let Dims { batch, dim, latent } = n;
    let learned = matches!(likelihood, Likelihood::GaussianLearned { .. });
    let mut out = Output {
        d_dec: vec![0.0; batch * dim],
        d_dec_logvar: if learned {
            vec![0.0; batch * dim]
        } else {
            Vec::new()
        },
        dmu: vec![0.0; batch * latent],
        dlogvar: vec![0.0; batch * latent],
        ..Default::default()
    };
    for b in 0..batch {
        let mut rec = 0.0;
        for j in 0..dim {
            let i = b * dim + j;
            let (x, o) = (inp.x[i], inp.dec[i]);
            match likelihood {
                Likelihood::Bernoulli => {
                    rec += bernoulli_nll(o, x);
                    out.d_dec[i] = (super::activation::sigmoid(o) - x) * scale;
                }
                Likelihood::Gaussian { sigma } => {
                    let var = sigma as f64 * sigma as f64;
                    rec += 0.5 * ((x - o).powi(2) / var + LN_2PI + var.ln());
                    out.d_dec[i] = (o - x) / var * scale;
                }
                Likelihood::GaussianLearned { shared } => {
                    let v = inp.dec_logvar[if shared { j } else { i }];
                    rec += 0.5 * ((x - o).powi(2) * (-v).exp() + v + LN_2PI);
                    out.d_dec[i] = (o - x) * (-v).exp() * scale;
                    out.d_dec_logvar[i] = 0.5 * (1.0 - (x - o).powi(2) * (-v).exp()) * scale;
                }
            }
        }
        let mut kl = 0.0;
        for l in 0..latent {
            let i = b * latent + l;
            let (mu, lv) = (inp.mu[i], inp.logvar[i]);
            kl += kl_term(mu, lv);
            out.dmu[i] = beta * mu * scale;
            out.dlogvar[i] = beta * 0.5 * lv.exp_m1() * scale;
        }
        out.rec.push(rec);
        out.kl.push(kl);
        out.total.push(rec + beta * kl);
    }
    out
}
