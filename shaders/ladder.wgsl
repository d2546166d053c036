// The ladder VAE's posterior (Sønderby et al., 2016): a top-down layer's q(z_l | ·) combines the
// bottom-up Gaussian (μ̂, logσ̂²) computed from the data with the top-down prior (μ_p, logσ²_p)
// computed from the layer above by precision weighting,
//   σ_q⁻² = σ̂⁻² + σ_p⁻²,   μ_q = σ_q² (μ̂ σ̂⁻² + μ_p σ_p⁻²).
// Written with the bottom-up share of the precision w = σ̂⁻²/σ_q⁻² = sigmoid(logσ²_p − logσ̂²)
// (and 1 − w = sigmoid(logσ̂² − logσ²_p), formed directly, not by cancellation):
//   μ_q = w μ̂ + (1 − w) μ_p,   logσ²_q = logσ̂² − softplus(logσ̂² − logσ²_p),
// so neither the precisions (e^{−logσ²} overflows for logσ² < −88) nor their sum are formed.
// Elementwise over [R, L]; every input is per row (the bottom-up path runs on the sample rows).
//
// combine: (μ̂, logσ̂², μ_p, logσ²_p) → (μ_q, logσ²_q).
// Backward, with g = μ̂ − μ_p and the chain rule through w (∂w/∂logσ̂² = −w(1 − w)):
//   ∂/∂μ̂ = w dμ_q,              ∂/∂logσ̂² = w dlogσ²_q − w(1 − w) g dμ_q,
//   ∂/∂μ_p = (1 − w) dμ_q,       ∂/∂logσ²_p = (1 − w) dlogσ²_q + w(1 − w) g dμ_q.
// combine_grads_hat writes the bottom-up pair (its first contribution); combine_grads_prior
// adds the prior pair to what the prior's own terms wrote (hierarchy.wgsl's stage_grads).

struct Params {
    len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mu_hat: array<f32>;
@group(0) @binding(2) var<storage, read> lv_hat: array<f32>;
@group(0) @binding(3) var<storage, read> mu_p: array<f32>;
@group(0) @binding(4) var<storage, read> lv_p: array<f32>;
// combine: (μ_q, logσ²_q) out; the gradients: (dμ_q, dlogσ²_q) in.
@group(0) @binding(5) var<storage, read_write> a: array<f32>;
@group(0) @binding(6) var<storage, read_write> b: array<f32>;
// The gradients out: (∂μ̂, ∂logσ̂²) or (∂μ_p, ∂logσ²_p).
@group(0) @binding(7) var<storage, read_write> da: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_workgroup(wid, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let d = lv_hat[i] - lv_p[i];
    let w = sigmoid(-d);
    let w_p = sigmoid(d);
    a[i] = w * mu_hat[i] + w_p * mu_p[i];
    b[i] = lv_hat[i] - softplus(d);
}

@compute @workgroup_size(WG)
fn combine_grads_hat(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let d = lv_hat[i] - lv_p[i];
    let w = sigmoid(-d);
    let cross = w * sigmoid(d) * (mu_hat[i] - mu_p[i]) * a[i];
    da[i] = w * a[i];
    db[i] = w * b[i] - cross;
}

@compute @workgroup_size(WG)
fn combine_grads_prior(@builtin(workgroup_id) wid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= params.len) {
        return;
    }
    let d = lv_hat[i] - lv_p[i];
    let w = sigmoid(-d);
    let w_p = sigmoid(d);
    let cross = w * w_p * (mu_hat[i] - mu_p[i]) * a[i];
    da[i] += w_p * a[i];
    db[i] += w_p * b[i] + cross;
}
