// The latent terms of a Markov hierarchy of stochastic layers (Burda et al., 2016, §3), one
// upper stage at a time. Stage j infers z (L units) from z_below (Lb units) through
// q(z | z_below) = N(q_mu, e^{q_logvar}), z = q_mu + e^{q_logvar/2} ε, and generates z_below
// through p(z_below | z) = N(p_mu, e^{p_logvar}). Rows r = s·B + b, one invocation per row.
// Must match `cpu::hvae::{stage_terms, stage_grads, posterior_grads}`.
//
// stage_terms: the stage's part of the row's latent log-density ratio (Gaussian normalizers
//   cancel between each q and p of the same units):
//     t_r = ½ Σ_l (ε² + q_logvar) − ½ Σ_i ((z_below − p_mu)² e^{−p_logvar} + p_logvar)
//           [− ½ Σ_l z², the prior N(0, I), for the top stage]
//   written (first stage) or added (the others) to terms[r]. iwae.wgsl's `train_terms` and
//   `log_weights` add ½ Σ (ε_1² + logσ_1²) of q(z_1|x) and form log w = β·terms − rec.
// stage_grads: with g = w̃_r β (the row's normalized weight times β), the gradients of
//   −g·t_r with respect to p's outputs and z_below's explicit term:
//     dp_mu = −g d e^{−p_logvar},  dp_logvar = g ½ (1 − d² e^{−p_logvar}),  d = z_below − p_mu,
//     dz_below (+)= g d e^{−p_logvar};
//   for the top stage also dz = g z (the prior), before the generative path adds to it.
// posterior_grads: once dz = ∂loss/∂z is complete, the gradient for q's log-variance, through
//   the sample and from −log q: dq_logvar = dz ε ½ e^{q_logvar/2} − g/2. (q_mu's is dz itself.)

struct Params {
    rows: u32,   // R = K·B
    latent: u32, // L, this stage's units
    below: u32,  // Lb, the units of the layer below
    beta: f32,
    top: u32,    // 1 for the highest stage: adds the N(0, I) prior of z
    add: u32,    // stage_terms: add to terms (not the first stage); stage_grads: add to dz_below
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

const WG: u32 = 64u;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_workgroup(wid, nwg) * WG + lid;
}

// ---- stage_terms ----
@group(0) @binding(1) var<storage, read> t_eps: array<f32>;
@group(0) @binding(2) var<storage, read> t_q_logvar: array<f32>;
@group(0) @binding(3) var<storage, read> t_z_below: array<f32>;
@group(0) @binding(4) var<storage, read> t_p_mu: array<f32>;
@group(0) @binding(5) var<storage, read> t_p_logvar: array<f32>;
@group(0) @binding(6) var<storage, read> t_z: array<f32>;
@group(0) @binding(7) var<storage, read_write> terms: array<f32>;

@compute @workgroup_size(WG)
fn stage_terms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let l_n = params.latent;
    let lb_n = params.below;
    var q = 0.0;
    var prior = 0.0;
    for (var l = 0u; l < l_n; l++) {
        let i = r * l_n + l;
        let e = t_eps[i];
        q += e * e + t_q_logvar[i];
        let z = t_z[i];
        prior += z * z;
    }
    var p = 0.0;
    for (var i = r * lb_n; i < (r + 1u) * lb_n; i++) {
        let d = t_z_below[i] - t_p_mu[i];
        let v = t_p_logvar[i];
        p += d * d * exp(-v) + v;
    }
    var t = 0.5 * (q - p);
    if (params.top != 0u) {
        t -= 0.5 * prior;
    }
    if (params.add != 0u) {
        t += terms[r];
    }
    terms[r] = t;
}

// ---- stage_grads ----
@group(0) @binding(1) var<storage, read> g_weights: array<f32>;
@group(0) @binding(2) var<storage, read> g_z_below: array<f32>;
@group(0) @binding(3) var<storage, read> g_p_mu: array<f32>;
@group(0) @binding(4) var<storage, read> g_p_logvar: array<f32>;
@group(0) @binding(5) var<storage, read> g_z: array<f32>;
@group(0) @binding(6) var<storage, read_write> dz_below: array<f32>;
@group(0) @binding(7) var<storage, read_write> g_dz: array<f32>;
@group(0) @binding(8) var<storage, read_write> dp_mu: array<f32>;
@group(0) @binding(9) var<storage, read_write> dp_logvar: array<f32>;

@compute @workgroup_size(WG)
fn stage_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let g = g_weights[r] * params.beta;
    let lb_n = params.below;
    for (var i = r * lb_n; i < (r + 1u) * lb_n; i++) {
        let prec = exp(-g_p_logvar[i]);
        let d = g_z_below[i] - g_p_mu[i];
        let gdp = g * d * prec;
        dp_mu[i] = -gdp;
        dp_logvar[i] = 0.5 * g * (1.0 - d * d * prec);
        var below = gdp;
        if (params.add != 0u) {
            below += dz_below[i];
        }
        dz_below[i] = below;
    }
    if (params.top != 0u) {
        let l_n = params.latent;
        for (var i = r * l_n; i < (r + 1u) * l_n; i++) {
            g_dz[i] = g * g_z[i];
        }
    }
}

// ---- posterior_grads ----
@group(0) @binding(1) var<storage, read> q_weights: array<f32>;
@group(0) @binding(2) var<storage, read> q_eps: array<f32>;
@group(0) @binding(3) var<storage, read> q_logvar: array<f32>;
@group(0) @binding(4) var<storage, read> q_dz: array<f32>;
@group(0) @binding(5) var<storage, read_write> dq_logvar: array<f32>;

@compute @workgroup_size(WG)
fn posterior_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= params.rows) {
        return;
    }
    let half_g = 0.5 * q_weights[r] * params.beta;
    let l_n = params.latent;
    for (var i = r * l_n; i < (r + 1u) * l_n; i++) {
        dq_logvar[i] = q_dz[i] * q_eps[i] * 0.5 * exp(0.5 * q_logvar[i]) - half_g;
    }
}
