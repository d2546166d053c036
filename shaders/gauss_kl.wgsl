// KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)) between two diagonal Gaussians, summed per row,
// and its gradients with respect to all four inputs: the latent term of a hierarchical VAE, where
// the prior of one layer is the output of another. Must match `cpu::gauss_kl`.
//
// Per element i (row b, dimension l), with diff = mu_q - mu_p, d = logvar_q - logvar_p and
// r = diff * e^(-logvar_p / 2) (so r^2 = diff^2 e^-logvar_p, formed without overflowing where the
// result does not):
//   KL_i          = 1/2 [(logvar_p - logvar_q) + (e^logvar_q + diff^2) e^-logvar_p - 1]
//                 = 1/2 (exp_excess(d) + r^2)       (e^d - 1 - d: no cancellation when q ~ p)
//   kl[b]         = sum_l KL_(b,l)
// and the gradients of scale * sum_b beta kl[b]:
//   d mu_q        = beta scale r e^(-logvar_p / 2)     (= beta scale diff e^-logvar_p)
//   d mu_p        = -d mu_q
//   d logvar_q    = beta scale / 2 * expm1(d)
//   d logvar_p    = -beta scale / 2 * (expm1(d) + r^2) (= beta scale / 2 (1 - (e^lq + diff^2) e^-lp))
// With mu_p = 0 and logvar_p = 0 every line is, operation for operation, the N(0, I) KL of
// elbo.wgsl (d = logvar_q - 0 = logvar_q, r = mu_q e^-0), so the two agree exactly wherever
// exp(-0) returns 1.
//
// Layout: one workgroup per row b; invocation lid walks l = lid, lid + WG, ... (neighbouring
// invocations read neighbouring addresses), writes the elementwise gradients and the row's KL
// terms meet in a workgroup-memory tree, as in elbo.wgsl. One invocation per row would need no
// barrier but leaves a GPU with only B invocations (B ~ 100) and walks each row serially; the
// workgroup size is an override so software adapters can run it at 8 (one SIMD row on lavapipe).
//
// Gradients are written, or with ACCUMULATE added to what the arrays hold (in a hierarchy the
// same z_l's parameters also receive gradients from elsewhere). kl[b] is always written.
// The four gradient arrays must not alias the inputs or each other.

override WG: u32 = 64u;
override ACCUMULATE: bool = false;

struct Params {
    batch: u32,
    latent: u32,
    beta: f32,
    // Gradient scale: 1 for a batch-sum loss, 1/B for a batch mean.
    scale: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> mu_q: array<f32>;
@group(0) @binding(2) var<storage, read> logvar_q: array<f32>;
@group(0) @binding(3) var<storage, read> mu_p: array<f32>;
@group(0) @binding(4) var<storage, read> logvar_p: array<f32>;
// [B]
@group(0) @binding(5) var<storage, read_write> kl: array<f32>;
// [B, L] each
@group(0) @binding(6) var<storage, read_write> dmu_q: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogvar_q: array<f32>;
@group(0) @binding(8) var<storage, read_write> dmu_p: array<f32>;
@group(0) @binding(9) var<storage, read_write> dlogvar_p: array<f32>;

var<workgroup> tree: array<f32, WG>;

@compute @workgroup_size(WG)
fn rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let b = flat_workgroup(wid, nwg);
    // The same for the whole workgroup: no invocation is left waiting at a barrier.
    if (b >= params.batch) {
        return;
    }
    let latent = params.latent;
    let beta_scale = params.beta * params.scale;
    let half_bs = 0.5 * beta_scale;
    var acc = 0.0;
    for (var l = lid; l < latent; l = l + WG) {
        let i = b * latent + l;
        let vp = logvar_p[i];
        let diff = mu_q[i] - mu_p[i];
        let d = logvar_q[i] - vp;
        let ip = exp(-0.5 * vp);
        let r = diff * ip;
        let r2 = r * r;
        acc = acc + (r2 + exp_excess(d));
        let em1 = expm1_acc(d);
        let g_mu = beta_scale * r * ip;
        let g_lq = half_bs * em1;
        let g_lp = -(half_bs * (em1 + r2));
        if (ACCUMULATE) {
            dmu_q[i] = dmu_q[i] + g_mu;
            dmu_p[i] = dmu_p[i] - g_mu;
            dlogvar_q[i] = dlogvar_q[i] + g_lq;
            dlogvar_p[i] = dlogvar_p[i] + g_lp;
        } else {
            dmu_q[i] = g_mu;
            dmu_p[i] = -g_mu;
            dlogvar_q[i] = g_lq;
            dlogvar_p[i] = g_lp;
        }
    }
    tree[lid] = acc;
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        workgroupBarrier();
        if (lid < s) {
            tree[lid] = tree[lid] + tree[lid + s];
        }
    }
    if (lid == 0u) {
        kl[b] = 0.5 * tree[0];
    }
}
