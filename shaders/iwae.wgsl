// The importance-weighted bound, streamed over samples: log (1/K) Σ_k w_k with
// w_k = p(x, z_k) / q(z_k | x), z_k = μ + σ ε_k, for K up to thousands in chunks of S samples.
//
// log_weights: one invocation per row r = s·B + b of a chunk (S samples of B examples, the
//   sampler's layout): log w = log p(x|z) + log p(z) − log q(z|x)
//                            = −rec_r + ½ Σ_l (ε² + logσ²_{b,l} − z²)
//   (the Gaussian normalizers cancel between p(z) and q(z|x)); rec_r is the row's negative
//   log-likelihood from elbo.wgsl's `rows`.
// accumulate: one invocation per example, a streaming log-sum-exp over the chunk's S weights into
//   state (m_b, s_b) with Σ_k w_k = e^{m_b} s_b: m' = max(m, max_k log w_k),
//   s' = s e^{m − m'} + Σ_k e^{log w_k − m'}. The host forms m + ln s − ln K in f64.
//   Every exp argument is ≤ 0, so nothing overflows, and s stays in [1, K].

struct Params {
    batch: u32,   // B
    samples: u32, // S, samples in this chunk
    latent: u32,  // L
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// rec [S·B] (elbo.wgsl's stats: the first S·B entries).
@group(0) @binding(1) var<storage, read> rec: array<f32>;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> eps: array<f32>;
@group(0) @binding(4) var<storage, read> logvar: array<f32>;
@group(0) @binding(5) var<storage, read_write> log_w: array<f32>;
// [2·B]: m at 0..B (start at -inf, written as -f32::MAX), s at B..2B (start at 0).
@group(0) @binding(6) var<storage, read_write> state: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn log_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = flat_workgroup(wid, nwg) * WG + lid;
    if (r >= params.samples * params.batch) {
        return;
    }
    let b = r % params.batch;
    let l_n = params.latent;
    var acc = 0.0;
    for (var l = 0u; l < l_n; l++) {
        let zi = z[r * l_n + l];
        let e = eps[r * l_n + l];
        acc += e * e + logvar[b * l_n + l] - zi * zi;
    }
    log_w[r] = 0.5 * acc - rec[r];
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let b = flat_workgroup(wid, nwg) * WG + lid;
    let n = params.batch;
    if (b >= n) {
        return;
    }
    var m = state[b];
    for (var k = 0u; k < params.samples; k++) {
        m = max(m, log_w[k * n + b]);
    }
    var s = state[n + b] * exp(state[b] - m);
    for (var k = 0u; k < params.samples; k++) {
        s += exp(log_w[k * n + b] - m);
    }
    state[b] = m;
    state[n + b] = s;
}
