// Shared by every kernel family: activations, their derivatives and accurate small-argument
// helpers. Prepended to a kernel's source by `kernels::compose`.
//
// Activation ids (must match `kernels::Activation`):
// 0 identity, 1 relu, 2 leaky_relu, 3 tanh, 4 sigmoid, 5 softplus, 6 elu, 7 gelu (tanh form).

const LEAKY_SLOPE: f32 = 0.01;
const ELU_ALPHA: f32 = 1.0;
const GELU_C: f32 = 0.7978845608028654; // sqrt(2/pi)
const GELU_A: f32 = 0.044715;

// WGSL only promises log() an absolute error of 2^-21 on [0.5, 2], so the usual
// "compute exp/log, then correct" tricks are invalid here: the small-argument cases use
// polynomials whose truncation error is below f32 roundoff instead.

// exp(x) - 1, relative error ~1e-7 everywhere (Taylor to x^10 on |x| < 0.5).
fn expm1_acc(x: f32) -> f32 {
    if (abs(x) >= 0.5) {
        return exp(x) - 1.0;
    }
    var p = 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
    p = p * x + 1.0 / 720.0;
    p = p * x + 1.0 / 120.0;
    p = p * x + 1.0 / 24.0;
    p = p * x + 1.0 / 6.0;
    p = p * x + 0.5;
    p = p * x + 1.0;
    return p * x;
}

// log(1 + t) for t in [0, 1]: 2 atanh(s), s = t / (2 + t) <= 1/3, odd series to s^17
// (truncation < 1e-9 relative).
fn log1p_unit(t: f32) -> f32 {
    let s = t / (2.0 + t);
    let s2 = s * s;
    var p = 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    return 2.0 * s * p;
}

// 1 / (1 + exp(-x)) for any finite or infinite x, never inf/inf.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// log(1 + exp(x)), exact in both tails.
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_unit(exp(-abs(x)));
}

fn tanh_acc(x: f32) -> f32 {
    let e = expm1_acc(-2.0 * abs(x));
    return sign(x) * (-e / (2.0 + e));
}

fn act_forward(kind: u32, x: f32) -> f32 {
    switch kind {
        case 1u: { return max(x, 0.0); }
        case 2u: { return select(LEAKY_SLOPE * x, x, x > 0.0); }
        case 3u: { return tanh_acc(x); }
        case 4u: { return sigmoid(x); }
        case 5u: { return softplus(x); }
        case 6u: { return select(ELU_ALPHA * expm1_acc(x), x, x > 0.0); }
        case 7u: {
            // 0.5 x (1 + tanh(u)) == x * sigmoid(2u): no cancellation for negative x.
            let u = GELU_C * (x + GELU_A * x * x * x);
            return x * sigmoid(2.0 * u);
        }
        default: { return x; }
    }
}

// d act(x) / dx at the pre-activation x.
fn act_derivative(kind: u32, x: f32) -> f32 {
    switch kind {
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 2u: { return select(LEAKY_SLOPE, 1.0, x > 0.0); }
        case 3u: {
            // sech^2(x) = 4t / (1 + t)^2 with t = exp(-2|x|): accurate in the tails.
            let t = exp(-2.0 * abs(x));
            return 4.0 * t / ((1.0 + t) * (1.0 + t));
        }
        case 4u: { return sigmoid(x) * sigmoid(-x); }
        case 5u: { return sigmoid(x); }
        case 6u: { return select(ELU_ALPHA * exp(x), 1.0, x > 0.0); }
        case 7u: {
            // Beyond |x| = 12 the derivative is 0 or 1 to f32 precision, and x^3 may overflow.
            if (abs(x) > 12.0) {
                return select(0.0, 1.0, x > 0.0);
            }
            let u = GELU_C * (x + GELU_A * x * x * x);
            let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
            let s = sigmoid(2.0 * u);
            return s + x * s * sigmoid(-2.0 * u) * 2.0 * du;
        }
        default: { return 1.0; }
    }
}

// Workgroups of a 1-D problem folded into a 2-D grid (see `Gpu::grid_1d`).
fn flat_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// e^v - 1 - v, accurate to a few ulp everywhere: the direct form cancels near v = 0 (where the
// result is ~v^2/2), so (-1, 2) uses its Taylor series to v^16 (truncation < 1e-10 relative).
fn exp_excess(v: f32) -> f32 {
    if (v > -1.0 && v < 2.0) {
        var p = 1.0 / 20922789888000.0;
        p = p * v + 1.0 / 1307674368000.0;
        p = p * v + 1.0 / 87178291200.0;
        p = p * v + 1.0 / 6227020800.0;
        p = p * v + 1.0 / 479001600.0;
        p = p * v + 1.0 / 39916800.0;
        p = p * v + 1.0 / 3628800.0;
        p = p * v + 1.0 / 362880.0;
        p = p * v + 1.0 / 40320.0;
        p = p * v + 1.0 / 5040.0;
        p = p * v + 1.0 / 720.0;
        p = p * v + 1.0 / 120.0;
        p = p * v + 1.0 / 24.0;
        p = p * v + 1.0 / 6.0;
        p = p * v + 0.5;
        return v * v * p;
    }
    if (v <= -1.0) {
        // -1 - v >= 0 and e^v > 0: no cancellation.
        return (-1.0 - v) + exp(v);
    }
    return exp(v) - (1.0 + v);
}
