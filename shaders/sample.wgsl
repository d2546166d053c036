// Reparameterized sampling z = mu + exp(logvar / 2) * eps with eps ~ N(0, 1) from a counter-based
// generator, and its backward. Must match `cpu::philox` and `cpu::sample`.
//
// Philox4x32-10 (random.wgsl): key = 64-bit seed, counter = (block, step, stream, 0), one call
// per block of four consecutive elements, so eps depends only on (seed, step, stream, element)
// and never on the dispatch layout.
//
// Shapes: mu, logvar [B, D]; z, eps [K*B, D]; flat element e of z reads e mod (B*D) of mu/logvar.

struct Shape {
    n: u32,          // elements written: K*B*D (forward), B*D (backward), words (test entries)
    per_sample: u32, // B*D
    samples: u32,    // K
    stream: u32,     // third counter word: separates independent uses of one seed and step
}

@group(0) @binding(0) var<uniform> shape: Shape;
// [seed_lo, seed_hi, step, unused]: a storage buffer so `advance` can step it on the device and
// the host can rewrite it with `queue.write_buffer` between submits.
@group(0) @binding(1) var<storage, read> rng: array<u32>;

const WG: u32 = 64u;
const HALF_PI: f32 = 1.5707963267948966;
fn block_words(block: u32) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(block, rng[2], shape.stream, 0u), vec2<u32>(rng[0], rng[1]));
}

// (2k + 1) * 2^-24 from the top 23 bits k: exact in f32, never 0 or 1.
fn uniform01(word: u32) -> f32 {
    return (f32(word >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// -ln(u) for u in (0, 1). WGSL's log() only promises an absolute error of 2^-21 on [0.5, 2],
// where -ln(u) may be as small as 6e-8, so there -ln(u) = log1p((1 - u) / u), 1 - u exact.
fn neg_log_unit(u: f32) -> f32 {
    if (u >= 0.5) {
        return log1p_unit((1.0 - u) / u);
    }
    return -log(u);
}

// (sin(pi s), cos(pi s)) for s in [-1, 1] to a few ulp. WGSL's sin/cos only promise an absolute
// error of 2^-11, so: exact reduction h = 2s = q + w (q integer, |w| <= 1/2, both exact), then
// Taylor polynomials of x = w pi/2 on |x| <= pi/4 (truncation < 2e-9).
fn sincospi(s: f32) -> vec2<f32> {
    let h = 2.0 * s;
    let q = round(h);
    let x = (h - q) * HALF_PI;
    let x2 = x * x;
    var sp = -1.0 / 39916800.0;
    sp = sp * x2 + 1.0 / 362880.0;
    sp = sp * x2 - 1.0 / 5040.0;
    sp = sp * x2 + 1.0 / 120.0;
    sp = sp * x2 - 1.0 / 6.0;
    let sn = x + x * x2 * sp;
    var cp = 1.0 / 479001600.0;
    cp = cp * x2 - 1.0 / 3628800.0;
    cp = cp * x2 + 1.0 / 40320.0;
    cp = cp * x2 - 1.0 / 720.0;
    cp = cp * x2 + 1.0 / 24.0;
    cp = cp * x2 - 0.5;
    let cs = 1.0 + x2 * cp;
    // Rotate by q quarter turns.
    switch (i32(q) & 3) {
        case 1: { return vec2<f32>(cs, -sn); }
        case 2: { return vec2<f32>(-sn, -cs); }
        case 3: { return vec2<f32>(-cs, sn); }
        default: { return vec2<f32>(sn, cs); }
    }
}

// Two standard normals r (cos t, sin t), r = sqrt(-2 ln u0), t = pi (2 u1 - 1).
fn box_muller(w0: u32, w1: u32) -> vec2<f32> {
    let r = sqrt(2.0 * neg_log_unit(uniform01(w0)));
    let sc = sincospi(2.0 * uniform01(w1) - 1.0);
    return r * vec2<f32>(sc.y, sc.x);
}

fn block_normals(block: u32) -> vec4<f32> {
    let w = block_words(block);
    return vec4<f32>(box_muller(w.x, w.y), box_muller(w.z, w.w));
}

fn block_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_workgroup(wid, nwg) * WG + lid;
}

// Test entry: the raw words (or, with AS_UNIFORM, the bits of their uniforms) of elements 0..n.
override AS_UNIFORM: bool = false;
@group(0) @binding(2) var<storage, read_write> out_words: array<u32>;

@compute @workgroup_size(WG)
fn draws(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let block = block_index(wid, nwg, lid);
    if (block >= (shape.n + 3u) / 4u) {
        return;
    }
    let w = block_words(block);
    for (var i = 0u; i < 4u; i++) {
        let e = block * 4u + i;
        if (e < shape.n) {
            out_words[e] = select(w[i], bitcast<u32>(uniform01(w[i])), AS_UNIFORM);
        }
    }
}

// Forward: one invocation per block of four elements of z.
@group(0) @binding(2) var<storage, read> mu: array<f32>;
@group(0) @binding(3) var<storage, read> logvar: array<f32>;
@group(0) @binding(4) var<storage, read_write> z: array<f32>;
@group(0) @binding(5) var<storage, read_write> eps: array<f32>;

@compute @workgroup_size(WG)
fn reparam_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let block = block_index(wid, nwg, lid);
    if (block >= (shape.n + 3u) / 4u) {
        return;
    }
    let e4 = block_normals(block);
    for (var i = 0u; i < 4u; i++) {
        let e = block * 4u + i;
        if (e < shape.n) {
            let src = e % shape.per_sample;
            z[e] = mu[src] + exp(0.5 * logvar[src]) * e4[i];
            eps[e] = e4[i];
        }
    }
}

// Backward: one invocation per element of mu, summing over the K sample rows that read it, and
// ADDING to dmu/dlogvar, which already hold the KL gradient.
@group(0) @binding(1) var<storage, read> dz: array<f32>;
@group(0) @binding(2) var<storage, read> eps_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> dmu: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlogvar: array<f32>;

@compute @workgroup_size(WG)
fn reparam_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = block_index(wid, nwg, lid);
    if (i >= shape.per_sample) {
        return;
    }
    var g_mu = 0.0;
    var g_eps = 0.0;
    for (var k = 0u; k < shape.samples; k++) {
        let e = k * shape.per_sample + i;
        let g = dz[e];
        g_mu += g;
        g_eps += g * eps_in[e];
    }
    dmu[i] += g_mu;
    dlogvar[i] += g_eps * 0.5 * exp(0.5 * logvar[i]);
}

// step += 1 on the device, so several training steps can be recorded into one submit.
@group(0) @binding(0) var<storage, read_write> rng_state: array<u32>;

@compute @workgroup_size(1)
fn advance() {
    rng_state[2] = rng_state[2] + 1u;
}
