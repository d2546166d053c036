//! The reparameterized sample z = μ + exp(½·logσ²)·ε, ε ~ N(0, I), and its backward, in f64.
//!
//! ε comes from the Philox stream (see [`super::philox`]): each block of four words gives four
//! uniforms u0..u3 and two Box–Muller pairs, r·(cos θ, sin θ) with r = √(−2 ln u0),
//! θ = π(2u1 − 1) ∈ (−π, π), then the same for (u2, u3).
//!
//! Shapes: μ and logσ² are [B, D]; z and ε are [K·B, D] for K samples per input, sample row
//! k·B + b reading input row b. Flat element e of z reads flat element e mod (B·D) of μ/logσ².

use super::philox::{StreamPos, uniform};

/// (r cos θ, r sin θ) from two uniforms, as the shader forms them.
pub fn box_muller(u0: f32, u1: f32) -> (f64, f64) {
    let r = (-2.0 * (u0 as f64).ln()).sqrt();
    let theta = std::f64::consts::PI * (2.0 * u1 as f64 - 1.0);
    (r * theta.cos(), r * theta.sin())
}

/// The standard normals ε of elements 0..n.
pub fn normals(pos: &StreamPos, n: usize) -> Vec<f64> {
    (0..n.div_ceil(4) as u32)
        .flat_map(|b| {
            let u = pos.block(b).map(uniform);
            let (a, c) = box_muller(u[0], u[1]);
            let (d, e) = box_muller(u[2], u[3]);
            [a, c, d, e]
        })
        .take(n)
        .collect()
}

/// z[e] = μ[e mod BD] + exp(½ logσ²[e mod BD]) ε[e] over z's `eps.len()` elements.
pub fn reparam_forward(mu: &[f64], logvar: &[f64], eps: &[f64]) -> Vec<f64> {
    let per_sample = mu.len();
    eps.iter()
        .enumerate()
        .map(|(e, &n)| {
            let i = e % per_sample;
            mu[i] + (0.5 * logvar[i]).exp() * n
        })
        .collect()
}

/// Adds the sample's gradient into dμ and dlogσ² (which already hold the KL gradient):
/// ∂z/∂μ = 1, ∂z/∂logσ² = ½ exp(½ logσ²) ε, summed over the K sample rows of each input row.
pub fn reparam_backward(
    dz: &[f64],
    eps: &[f64],
    logvar: &[f64],
    dmu: &mut [f64],
    dlogvar: &mut [f64],
) {
    let per_sample = dmu.len();
    for (e, (&g, &n)) in dz.iter().zip(eps).enumerate() {
        let i = e % per_sample;
        dmu[i] += g;
        dlogvar[i] += g * n * 0.5 * (0.5 * logvar[i]).exp();
    }
}
