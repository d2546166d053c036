//! Adam / AdamW as in `torch.optim`, in f64.

use crate::kernels::adam::AdamConfig;

/// The optimizer state of the reference: first and second moments and the step count.
#[derive(Debug, Clone)]
pub struct AdamState {
    pub m1: Vec<f64>,
    pub m2: Vec<f64>,
    pub t: u64,
}

impl AdamState {
    pub fn new(len: usize) -> Self {
        Self {
            m1: vec![0.0; len],
            m2: vec![0.0; len],
            t: 0,
        }
    }
}

/// `max_norm / (‖g‖ + 1e-6)` clamped to 1, as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_scale(cfg: &AdamConfig, grad: &[f64]) -> f64 {
    if cfg.max_norm <= 0.0 {
        return 1.0;
    }
    let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    (cfg.max_norm / (norm + 1e-6)).min(1.0)
}

/// One optimizer step over the flat parameter vector.
pub fn step(cfg: &AdamConfig, state: &mut AdamState, param: &mut [f64], grad: &[f64]) {
    state.t += 1;
    let scale = clip_scale(cfg, grad);
    let bc1 = 1.0 - cfg.beta1.powi(state.t as i32);
    let bc2 = 1.0 - cfg.beta2.powi(state.t as i32);
    for i in 0..param.len() {
        let mut g = grad[i] * scale;
        if cfg.decoupled {
            param[i] *= 1.0 - cfg.lr * cfg.weight_decay;
        } else {
            g += cfg.weight_decay * param[i];
        }
        state.m1[i] = cfg.beta1 * state.m1[i] + (1.0 - cfg.beta1) * g;
        state.m2[i] = cfg.beta2 * state.m2[i] + (1.0 - cfg.beta2) * g * g;
        let m_hat = state.m1[i] / bc1;
        let v_hat = state.m2[i] / bc2;
        param[i] -= cfg.lr * m_hat / (v_hat.sqrt() + cfg.eps);
    }
}
