//! One VAE training step in f64 — forward, loss, backward — composed from the reference kernels
//! exactly as `train::graph` composes the GPU ones. Given the same parameters, batch and ε, the
//! two must agree to rounding.

use crate::cpu::{activation, elbo, iwae, matmul::matmul, reduce::column_sums, sample};
use crate::kernels::iwae::Objective;
use crate::kernels::matmul::Layout;
use crate::model::{DEC_LOGVAR, Dense, ParamLayout, VaeConfig};

/// The loss terms (sums over the batch) and the gradient of `Σ_b rec_b + β kl_b`.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub total: f64,
    pub rec: f64,
    pub kl: f64,
    /// Flat, in the parameter layout (padding 0).
    pub grads: Vec<f64>,
}

pub(crate) fn tensor<'a>(layout: &ParamLayout, flat: &'a [f64], name: &str) -> &'a [f64] {
    let t = layout.get(name);
    &flat[t.offset..t.offset + t.len()]
}

/// `act(x·W + b)` for a batch; returns (pre-activation, output).
pub(crate) fn dense_forward(
    d: &Dense,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut pre = matmul(
        Layout::NN,
        batch,
        d.fan_out,
        d.fan_in,
        x,
        tensor(layout, p, &d.weight()),
    );
    let b = tensor(layout, p, &d.bias());
    for (i, v) in pre.iter_mut().enumerate() {
        *v += b[i % d.fan_out];
    }
    let out = pre.iter().map(|&v| activation::forward(d.act, v)).collect();
    (pre, out)
}

/// Writes dW = xᵀ·dpre and db = Σ_rows dpre into `grads`; returns dx = dpre·Wᵀ.
pub(crate) fn dense_backward(
    d: &Dense,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    dpre: &[f64],
    batch: usize,
    grads: &mut [f64],
) -> Vec<f64> {
    let dw = matmul(Layout::TN, d.fan_in, d.fan_out, batch, x, dpre);
    let db = column_sums(batch, d.fan_out, dpre);
    for (name, g) in [(d.weight(), dw), (d.bias(), db)] {
        let t = layout.get(&name);
        grads[t.offset..t.offset + t.len()].copy_from_slice(&g);
    }
    matmul(
        Layout::NT,
        batch,
        d.fan_in,
        d.fan_out,
        dpre,
        tensor(layout, p, &d.weight()),
    )
}

/// dpre = dy ⊙ act'(pre).
pub(crate) fn through_activation(d: &Dense, dy: &[f64], pre: &[f64]) -> Vec<f64> {
    dy.iter()
        .zip(pre)
        .map(|(g, &x)| g * activation::derivative(d.act, x))
        .collect()
}

/// The posterior (μ, logσ²), [B, L] each, of a batch `x` [B, D].
pub fn encode(cfg: &VaeConfig, layout: &ParamLayout, p: &[f64], x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let layers = cfg.layers();
    let batch = x.len() / cfg.input;
    let mut h = x.to_vec();
    for d in &layers.encoder {
        h = dense_forward(d, layout, p, &h, batch).1;
    }
    let (mu, _) = dense_forward(&layers.mu, layout, p, &h, batch);
    let (logvar, _) = dense_forward(&layers.logvar, layout, p, &h, batch);
    (mu, logvar)
}

/// The decoder output (logits or means), [R, D], for latents `z` [R, L].
pub fn decode(cfg: &VaeConfig, layout: &ParamLayout, p: &[f64], z: &[f64]) -> Vec<f64> {
    let layers = cfg.layers();
    let rows = z.len() / cfg.latent;
    let mut h = z.to_vec();
    for d in &layers.decoder {
        h = dense_forward(d, layout, p, &h, rows).1;
    }
    dense_forward(&layers.out, layout, p, &h, rows).0
}

/// Loss and gradient for one batch `x` [B, D] with noise `eps` [B, L].
pub fn step(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    beta: f64,
) -> StepResult {
    step_k(cfg, layout, p, x, eps, Objective::Elbo, beta)
}

/// Loss and gradient of `objective` for one batch `x` [B, D] with K samples per example:
/// noise `eps` [K·B, L], sample row s·B + b for example b (K = 1: [`step`]).
pub fn step_k(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    objective: Objective,
    beta: f64,
) -> StepResult {
    let layers = cfg.layers();
    let batch = x.len() / cfg.input;
    let rows = eps.len() / cfg.latent;
    // Forward, keeping every layer's input and pre-activation.
    let mut enc_in = vec![x.to_vec()];
    let mut enc_pre = Vec::new();
    for d in &layers.encoder {
        let (pre, out) = dense_forward(d, layout, p, enc_in.last().unwrap(), batch);
        enc_pre.push(pre);
        enc_in.push(out);
    }
    let top = enc_in.last().unwrap().clone();
    let (mu, _) = dense_forward(&layers.mu, layout, p, &top, batch);
    let (logvar, _) = dense_forward(&layers.logvar, layout, p, &top, batch);
    let z = sample::reparam_forward(&mu, &logvar, eps);
    let mut dec_in = vec![z];
    let mut dec_pre = Vec::new();
    for d in &layers.decoder {
        let (pre, out) = dense_forward(d, layout, p, dec_in.last().unwrap(), rows);
        dec_pre.push(pre);
        dec_in.push(out);
    }
    let (dec, _) = dense_forward(&layers.out, layout, p, dec_in.last().unwrap(), rows);
    let dec_logvar: Vec<f64> = if cfg.likelihood.learns_variance() {
        tensor(layout, p, DEC_LOGVAR).to_vec()
    } else {
        Vec::new()
    };
    // The reconstruction terms of every sample row (x repeated per sample; the KL inputs are
    // placeholders: the latent terms come from `train_terms`).
    let x_rep: Vec<f64> = x.iter().copied().cycle().take(rows * cfg.input).collect();
    let none = vec![0.0; rows * cfg.latent];
    let dims = elbo::Dims {
        batch: rows,
        dim: cfg.input,
        latent: cfg.latent,
    };
    let inputs = elbo::Inputs {
        x: &x_rep,
        dec: &dec,
        dec_logvar: &dec_logvar,
        mu: &none,
        logvar: &none,
    };
    let mut loss = elbo::elbo(cfg.likelihood, beta, 1.0, dims, &inputs);
    let z = &dec_in[0];
    let terms = iwae::train_terms(objective, beta, batch, &loss.rec, z, eps, &mu, &logvar);
    let weigh = |g: &mut [f64]| {
        for (r, row) in g.chunks_mut(cfg.input).enumerate() {
            row.iter_mut().for_each(|v| *v *= terms.weights[r]);
        }
    };
    weigh(&mut loss.d_dec);
    weigh(&mut loss.d_dec_logvar);

    // Backward.
    let mut grads = vec![0.0; layout.len];
    if cfg.likelihood.learns_variance() {
        let t = layout.get(DEC_LOGVAR);
        let g = column_sums(rows, cfg.input, &loss.d_dec_logvar);
        grads[t.offset..t.offset + t.len()].copy_from_slice(&g);
    }
    let mut dy = dense_backward(
        &layers.out,
        layout,
        p,
        dec_in.last().unwrap(),
        &loss.d_dec,
        rows,
        &mut grads,
    );
    for (i, d) in layers.decoder.iter().enumerate().rev() {
        let dpre = through_activation(d, &dy, &dec_pre[i]);
        dy = dense_backward(d, layout, p, &dec_in[i], &dpre, rows, &mut grads);
    }
    dy.iter_mut().zip(&terms.dz).for_each(|(g, t)| *g += t);
    let (mut dmu, mut dlogvar) = (terms.dmu.clone(), terms.dlogvar.clone());
    sample::reparam_backward(&dy, eps, &logvar, &mut dmu, &mut dlogvar);
    let from_mu = dense_backward(&layers.mu, layout, p, &top, &dmu, batch, &mut grads);
    let from_lv = dense_backward(&layers.logvar, layout, p, &top, &dlogvar, batch, &mut grads);
    let mut dy: Vec<f64> = from_mu.iter().zip(&from_lv).map(|(a, b)| a + b).collect();
    for (i, d) in layers.encoder.iter().enumerate().rev() {
        let dpre = through_activation(d, &dy, &enc_pre[i]);
        dy = dense_backward(d, layout, p, &enc_in[i], &dpre, batch, &mut grads);
    }
    StepResult {
        total: terms.total.iter().sum(),
        rec: terms.rec.iter().sum(),
        kl: terms.kl.iter().sum(),
        grads,
    }
}
