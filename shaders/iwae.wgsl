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
//
// HIERARCHY (several stochastic layers): z_1's prior is p(z_1 | z_2), not N(0, I), and
// hierarchy.wgsl's `stage_terms` has summed the upper layers' terms per row. Binding 2 then
// holds those sums [rows] instead of z, and log p(z_1..L)/q(z_1..L|x) = ½ Σ (ε_1² + logσ_1²) +
// upper[r]. (Reusing the binding keeps every kernel within ten storage buffers.)

override HIERARCHY: bool = false;

// log p(z)/q(z|x) of row r (example b), without β.
fn log_density_ratio(r: u32, b: u32, l_n: u32) -> f32 {
    var acc = 0.0;
    for (var l = 0u; l < l_n; l++) {
        let e = eps[r * l_n + l];
        acc += e * e + logvar[b * l_n + l];
        if (!HIERARCHY) {
            let zi = z[r * l_n + l];
            acc -= zi * zi;
        }
    }
    var ratio = 0.5 * acc;
    if (HIERARCHY) {
        ratio += z[r];
    }
    return ratio;
}

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
    log_w[r] = log_density_ratio(r, r % params.batch, params.latent) - rec[r];
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

// ---- Training with K samples per example (`--k`, `--objective`) -------------------------------
//
// train_terms: one invocation per example b, after elbo.wgsl's `rows` over the K·B sample rows
//   (r = s·B + b) has written rec_r and the unweighted ∂rec_r/∂(decoder output). Writes the
//   per-row weights w̃_r that scale those gradients (`scale_rows`), the example's loss terms
//   [rec, kl, total] for elbo.wgsl's `batch_total`, dμ and dlogσ² of the latent terms, and the
//   latent terms' part of ∂loss/∂z_r (the decoder's part is added by the backward matmul).
//   OBJECTIVE 0, the K-sample ELBO: w̃ = 1/K, loss = mean_s rec_s + β KL(q‖N(0, I)) (analytic).
//   OBJECTIVE 1, IWAE: log w_s = −rec_s + β·½ Σ_l (ε² + logσ² − z²), loss = −log (1/K) Σ_s w_s,
//   w̃ = softmax_s(log w): ∂loss/∂z_s = w̃_s (∂rec_s/∂z_s + β z_s), ∂loss/∂logσ² (explicit) =
//   −β/2 (Σ_s w̃_s = 1), ∂loss/∂μ (explicit) = 0. The reported rec is mean_s rec_s, kl the rest.
//   With HIERARCHY, OBJECTIVE 0 is the Monte Carlo ELBO, loss = −mean_s log w_s, w̃ = 1/K (no
//   layer has an analytic KL), and dz is left alone: z_1's latent gradient comes from
//   hierarchy.wgsl's `stage_grads` of the stage above.
// scale_rows: d_dec[r, :] *= w̃_r (and d_dec_logvar), one workgroup per row.

override OBJECTIVE: u32 = 0u;

struct TrainParams {
    batch: u32,   // B
    samples: u32, // K
    latent: u32,  // L
    dim: u32,     // D (scale_rows)
    beta: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> tparams: TrainParams;
@group(0) @binding(5) var<storage, read_write> weights: array<f32>;
// [3, B]: rec, kl, total.
@group(0) @binding(6) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(7) var<storage, read> mu: array<f32>;
@group(0) @binding(8) var<storage, read_write> dmu: array<f32>;
@group(0) @binding(9) var<storage, read_write> dlogvar: array<f32>;
@group(0) @binding(10) var<storage, read_write> dz: array<f32>;


@compute @workgroup_size(WG)
fn train_terms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let b = flat_workgroup(wid, nwg) * WG + lid;
    let n = tparams.batch;
    if (b >= n) {
        return;
    }
    let k_n = tparams.samples;
    let l_n = tparams.latent;
    let beta = tparams.beta;
    var rec_sum = 0.0;
    for (var s = 0u; s < k_n; s++) {
        rec_sum += rec[s * n + b];
    }
    let rec_mean = rec_sum / f32(k_n);
    if (OBJECTIVE == 0u && !HIERARCHY) {
        var kl = 0.0;
        for (var l = 0u; l < l_n; l++) {
            let i = b * l_n + l;
            let m = mu[i];
            let v = logvar[i];
            // KL per dimension ½(μ² + e^v − 1 − v), as elbo.wgsl forms it.
            kl += m * m + exp_excess(v);
            dmu[i] = beta * m;
            dlogvar[i] = 0.5 * beta * expm1_acc(v);
        }
        kl *= 0.5;
        for (var s = 0u; s < k_n; s++) {
            let r = s * n + b;
            weights[r] = 1.0 / f32(k_n);
            for (var l = 0u; l < l_n; l++) {
                dz[r * l_n + l] = 0.0;
            }
        }
        stats_out[b] = rec_mean;
        stats_out[n + b] = kl;
        stats_out[2u * n + b] = rec_mean + beta * kl;
        return;
    }
    // The log-weights; for IWAE their normalized exponentials, stably (every exponent ≤ 0).
    var m = -3.4028235e38;
    var lw_sum = 0.0;
    for (var s = 0u; s < k_n; s++) {
        let r = s * n + b;
        let lw = beta * log_density_ratio(r, b, l_n) - rec[r];
        weights[r] = lw;
        m = max(m, lw);
        lw_sum += lw;
    }
    var loss = -lw_sum / f32(k_n);
    if (OBJECTIVE == 1u) {
        var total = 0.0;
        for (var s = 0u; s < k_n; s++) {
            let r = s * n + b;
            let e = exp(weights[r] - m);
            weights[r] = e;
            total += e;
        }
        for (var s = 0u; s < k_n; s++) {
            let r = s * n + b;
            weights[r] /= total;
        }
        loss = -(m + log(total) - log(f32(k_n)));
    } else {
        for (var s = 0u; s < k_n; s++) {
            weights[s * n + b] = 1.0 / f32(k_n);
        }
    }
    if (!HIERARCHY) {
        for (var s = 0u; s < k_n; s++) {
            let r = s * n + b;
            let w = weights[r];
            for (var l = 0u; l < l_n; l++) {
                dz[r * l_n + l] = w * beta * z[r * l_n + l];
            }
        }
    }
    for (var l = 0u; l < l_n; l++) {
        dmu[b * l_n + l] = 0.0;
        dlogvar[b * l_n + l] = -0.5 * beta;
    }
    stats_out[b] = rec_mean;
    stats_out[n + b] = loss - rec_mean;
    stats_out[2u * n + b] = loss;
}

@group(0) @binding(1) var<storage, read_write> d_dec: array<f32>;
@group(0) @binding(2) var<storage, read> row_weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_dec_logvar: array<f32>;

override LEARNED_VARIANCE: bool = false;

@compute @workgroup_size(WG)
fn scale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = flat_workgroup(wid, nwg);
    if (r >= tparams.samples * tparams.batch) {
        return;
    }
    let w = row_weights[r];
    let dim = tparams.dim;
    for (var j = lid; j < dim; j += WG) {
        let i = r * dim + j;
        d_dec[i] *= w;
        if (LEARNED_VARIANCE) {
            d_dec_logvar[i] *= w;
        }
    }
}
