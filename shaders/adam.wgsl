// Adam and AdamW over one flat parameter buffer in a single dispatch: moments, bias correction,
// weight decay and an optional global-norm clip scale, one vec4 of parameters per invocation
// (the buffer is padded to a multiple of 4; consecutive invocations walk contiguous memory).
//
// Two entry points share the update: `step` reads the four inputs from storage buffers,
// `step_textured` from `rgba32float` textures the host copies them into first, one vec4 per
// image load (where per-lane storage loads are slow, as on lavapipe: 4 reads of 2.6 MB cost ~8 ms
// there, the copies and scalar image loads ~2.5-3 ms). Both write the storage buffers.

struct Params {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // 1 - beta1^t and 1 - beta2^t, computed on the host in f64 each step.
    bias_correction1: f32,
    bias_correction2: f32,
    // Clip the global gradient norm to this value; 0 disables clipping.
    max_norm: f32,
    // 1 - beta, rounded from f64: forming it from the f32 beta would cost 1e-5 relative
    // (0.999 is not representable) in every moment update.
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    len4: u32,
    // log2 of the textures' row width (`step_textured`).
    tex_shift: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m2: array<vec4<f32>>;
// Sum of squared gradients (from reduce.wgsl) when clipping.
@group(0) @binding(5) var<storage, read> grad_sumsq: array<f32>;
// `step_textured`: the same values as param, grad, m1, m2 before the step.
@group(0) @binding(6) var param_in: texture_storage_2d<rgba32float, read>;
@group(0) @binding(7) var grad_in: texture_storage_2d<rgba32float, read>;
@group(0) @binding(8) var m1_in: texture_storage_2d<rgba32float, read>;
@group(0) @binding(9) var m2_in: texture_storage_2d<rgba32float, read>;

// AdamW (decoupled decay, p *= 1 - lr*wd) when true; Adam with L2 (g += wd*p) when false.
override DECOUPLED: bool = false;

const WG: u32 = 256u;

struct Moments {
    p: vec4<f32>,
    m: vec4<f32>,
    v: vec4<f32>,
}

fn update(p_in: vec4<f32>, g_in: vec4<f32>, m_in: vec4<f32>, v_in: vec4<f32>) -> Moments {
    var scale = 1.0;
    if (params.max_norm > 0.0) {
        // As torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), never above 1.
        scale = min(1.0, params.max_norm / (sqrt(grad_sumsq[0]) + 1e-6));
    }
    var p = p_in;
    var g = g_in * scale;
    if (DECOUPLED) {
        p = p * (1.0 - params.lr * params.weight_decay);
    } else {
        g = g + params.weight_decay * p;
    }
    let m = params.beta1 * m_in + params.one_minus_beta1 * g;
    let v = params.beta2 * v_in + params.one_minus_beta2 * g * g;
    let m_hat = m / params.bias_correction1;
    let v_hat = v / params.bias_correction2;
    return Moments(p - params.lr * m_hat / (sqrt(v_hat) + params.eps), m, v);
}

fn store(i: u32, r: Moments) {
    param[i] = r.p;
    m1[i] = r.m;
    m2[i] = r.v;
}

@compute @workgroup_size(WG)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= params.len4) {
        return;
    }
    store(i, update(param[i], grad[i], m1[i], m2[i]));
}

// Elements 4i..4i+3 of input `which` (0 param, 1 grad, 2 m1, 3 m2): texel i. (GLSL forbids
// texture parameters, hence the switch.)
fn texel4(which: u32, i: u32) -> vec4<f32> {
    let x = vec2(i & ((1u << params.tex_shift) - 1u), i >> params.tex_shift);
    switch (which) {
        case 0u: { return textureLoad(param_in, x); }
        case 1u: { return textureLoad(grad_in, x); }
        case 2u: { return textureLoad(m1_in, x); }
        default: { return textureLoad(m2_in, x); }
    }
}

@compute @workgroup_size(WG)
fn step_textured(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= params.len4) {
        return;
    }
    store(i, update(texel4(0u, i), texel4(1u, i), texel4(2u, i), texel4(3u, i)));
}
