// The fused negative ELBO: per-sample reconstruction NLL and KL, their weighted total, and every
// gradient, in one pass over each sample row. Must match `cpu::elbo`.
//
// rows:        one workgroup per sample b; each invocation walks columns lid, lid + WG, ...
//              (neighbouring invocations read neighbouring addresses), writes the elementwise
//              gradients, and the row sums meet in a workgroup-memory tree. rows_vec4 is the
//              same over vec4s of columns when D % 4 == 0.
// batch_total: one workgroup summing the per-sample results into `batch` and adding them to
//              the running (logging) accumulator, so the loss needs no readback per step.
//
// Likelihood (override KIND): 0 Bernoulli with logits, 1 Gaussian with fixed sigma, 2 Gaussian
// with learned log-variance, read per element [B, D] or, with SHARED_LOGVAR, per pixel [D].

override KIND: u32 = 0u;
override SHARED_LOGVAR: bool = false;

struct Params {
    batch: u32,
    dim: u32,
    latent: u32,
    _pad: u32,
    beta: f32,
    // Gradient scale: 1 for a batch-sum loss, 1/B for a batch mean.
    scale: f32,
    // KIND 1: 1 / sigma^2.
    inv_var: f32,
    // The data-independent part of the Gaussian NLL, dim * log(2 pi sigma^2) / 2 (KIND 1) or
    // dim * log(2 pi) / 2 (KIND 2), formed in f64 on the host.
    rec_const: f32,
}

@group(0) @binding(0) var<uniform> params: Params;

// Invocations per workgroup, a power of two. On lavapipe 8 (one SIMD row; its barriers are
// cheap) is ~3x faster than 64; real GPUs want at least a warp.
override WG: u32 = 64u;

var<workgroup> tree: array<vec4<f32>, WG>;

// Sums every invocation's v; all invocations of the workgroup must call it.
fn workgroup_sum(lid: u32, v: vec4<f32>) -> vec4<f32> {
    tree[lid] = v;
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) {
            tree[lid] = tree[lid] + tree[lid + s];
        }
    }
    workgroupBarrier();
    return tree[0];
}

@group(0) @binding(1) var<storage, read> x: array<f32>;
// Logits (KIND 0) or means (KIND 1, 2): [B, D].
@group(0) @binding(2) var<storage, read> dec: array<f32>;
// KIND 2 only: [B, D], or [D] with SHARED_LOGVAR.
@group(0) @binding(3) var<storage, read> dec_logvar: array<f32>;
@group(0) @binding(4) var<storage, read> mu: array<f32>;
@group(0) @binding(5) var<storage, read> logvar: array<f32>;
// [3, B]: rec, kl, total = rec + beta kl.
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> d_dec: array<f32>;
// KIND 2 only: [B, D] per element, also when the log-variance is shared.
@group(0) @binding(8) var<storage, read_write> d_dec_logvar: array<f32>;
// Written, not added: the reparameterization backward adds its terms afterwards.
@group(0) @binding(9) var<storage, read_write> dmu: array<f32>;
@group(0) @binding(10) var<storage, read_write> dlogvar: array<f32>;

// One element's reconstruction term and gradients (term, d_dec, d_dec_logvar) from the target
// t, the decoder output o and (KIND 2) the decoder log-variance v.
fn rec_term(t: f32, o: f32, v: f32) -> vec3<f32> {
    let scale = params.scale;
    switch (KIND) {
        case 0u: {
            // max(l, 0) - l x + log(1 + e^-|l|): e^-|l| in [0, 1], never log(0).
            let nll = max(o, 0.0) - o * t + log1p_unit(exp(-abs(o)));
            return vec3<f32>(nll, (sigmoid(o) - t) * scale, 0.0);
        }
        case 1u: {
            let r = o - t;
            return vec3<f32>(r * r * params.inv_var, r * (params.inv_var * scale), 0.0);
        }
        default: {
            let r = o - t;
            let w = exp(-v);
            let q = r * r * w;
            return vec3<f32>(q + v, r * w * scale, 0.5 * (1.0 - q) * scale);
        }
    }
}

// The KL terms of row b and their gradients, then the row sums and the per-sample results.
// Every invocation of the workgroup must call it.
fn finish_row(b: u32, lid: u32, rec: f32) {
    let latent = params.latent;
    let beta_scale = params.beta * params.scale;
    var kl = 0.0;
    for (var l = lid; l < latent; l = l + WG) {
        let i = b * latent + l;
        let m = mu[i];
        let v = logvar[i];
        kl = kl + (m * m + exp_excess(v));
        dmu[i] = beta_scale * m;
        dlogvar[i] = 0.5 * beta_scale * expm1_acc(v);
    }
    let sums = workgroup_sum(lid, vec4<f32>(rec, kl, 0.0, 0.0));
    if (lid == 0u) {
        let r = select(0.5 * sums.x + params.rec_const, sums.x, KIND == 0u);
        let k = 0.5 * sums.y;
        let batch = params.batch;
        stats[b] = r;
        stats[batch + b] = k;
        stats[2u * batch + b] = r + params.beta * k;
    }
}

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = flat_workgroup(wid, nwg);
    if (b >= params.batch) {
        return;
    }
    let dim = params.dim;
    var rec = 0.0;
    for (var j = lid; j < dim; j = j + WG) {
        let i = b * dim + j;
        var v = 0.0;
        if (KIND == 2u) {
            v = dec_logvar[select(i, j, SHARED_LOGVAR)];
        }
        let r = rec_term(x[i], dec[i], v);
        rec = rec + r.x;
        d_dec[i] = r.y;
        if (KIND == 2u) {
            d_dec_logvar[i] = r.z;
        }
    }
    finish_row(b, lid, rec);
}

// rows for D % 4 == 0 with vec4 loads and stores of the [B, D] arrays: on lavapipe each
// per-invocation load is a scalar loop over the SIMD lanes, so a quarter as many is faster.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dec4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dec_logvar4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> d_dec4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> d_dec_logvar4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn rows_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let b = flat_workgroup(wid, nwg);
    if (b >= params.batch) {
        return;
    }
    let dim4 = params.dim / 4u;
    var rec = 0.0;
    for (var j = lid; j < dim4; j = j + WG) {
        let i = b * dim4 + j;
        var v = vec4<f32>(0.0);
        if (KIND == 2u) {
            v = dec_logvar4[select(i, j, SHARED_LOGVAR)];
        }
        let t = x4[i];
        let o = dec4[i];
        let r0 = rec_term(t.x, o.x, v.x);
        let r1 = rec_term(t.y, o.y, v.y);
        let r2 = rec_term(t.z, o.z, v.z);
        let r3 = rec_term(t.w, o.w, v.w);
        rec = rec + ((r0.x + r1.x) + (r2.x + r3.x));
        d_dec4[i] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
        if (KIND == 2u) {
            d_dec_logvar4[i] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
        }
    }
    finish_row(b, lid, rec);
}

@group(0) @binding(1) var<storage, read> stats_in: array<f32>;
// [total, rec, kl, samples] summed over the batch.
@group(0) @binding(2) var<storage, read_write> batch_sums: array<f32>;
// [0..4] += the same four values each time this runs; the host zeroes it per logging interval.
// [4] counts the batches before the first whose total was not finite, [5] becomes 1 at that
// batch: so the host names the exact step where a loss went NaN/Inf while reading back rarely.
@group(0) @binding(3) var<storage, read_write> running: array<f32>;

@compute @workgroup_size(WG)
fn batch_total(@builtin(local_invocation_index) lid: u32) {
    let batch = params.batch;
    var acc = vec4<f32>(0.0);
    for (var b = lid; b < batch; b = b + WG) {
        acc = acc + vec4<f32>(stats_in[2u * batch + b], stats_in[b], stats_in[batch + b], 0.0);
    }
    let sums = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let t = vec4<f32>(sums.xyz, f32(batch));
        for (var k = 0u; k < 4u; k = k + 1u) {
            batch_sums[k] = t[k];
            running[k] = running[k] + t[k];
        }
        // Finite <=> the exponent bits are not all ones. Tested on the bits because shader
        // compilers may assume floats are never NaN (GL's llvmpipe folds NaN comparisons).
        let exponents = bitcast<vec3<u32>>(t.xyz) & vec3<u32>(0x7f800000u);
        let finite = all(exponents != vec3<u32>(0x7f800000u));
        if (running[5] == 0.0) {
            if (finite) {
                running[4] = running[4] + 1.0;
            } else {
                running[5] = 1.0;
            }
        }
    }
}
