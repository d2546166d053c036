// Adam and AdamW over one flat parameter buffer in a single dispatch: moments, bias correction,
// weight decay and an optional global-norm clip scale, one vec4 of parameters per invocation
// (the buffer is padded to a multiple of 4; consecutive invocations walk contiguous memory).

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
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m2: array<vec4<f32>>;
// Sum of squared gradients (from reduce.wgsl) when clipping.
@group(0) @binding(5) var<storage, read> grad_sumsq: array<f32>;

// AdamW (decoupled decay, p *= 1 - lr*wd) when true; Adam with L2 (g += wd*p) when false.
override DECOUPLED: bool = false;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_workgroup(wid, nwg) * WG + lid;
    if (i >= params.len4) {
        return;
    }
    var scale = 1.0;
    if (params.max_norm > 0.0) {
        // As torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6), never above 1.
        scale = min(1.0, params.max_norm / (sqrt(grad_sumsq[0]) + 1e-6));
    }
    var p = param[i];
    var g = grad[i] * scale;
    if (DECOUPLED) {
        p = p * (1.0 - params.lr * params.weight_decay);
    } else {
        g = g + params.weight_decay * p;
    }
    let m = params.beta1 * m1[i] + params.one_minus_beta1 * g;
    let v = params.beta2 * m2[i] + params.one_minus_beta2 * g * g;
    m1[i] = m;
    m2[i] = v;
    let m_hat = m / params.bias_correction1;
    let v_hat = v / params.bias_correction2;
    param[i] = p - params.lr * m_hat / (sqrt(v_hat) + params.eps);
}
