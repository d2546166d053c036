//! Activations and their derivatives, in f64 with the textbook formulas.

use crate::kernels::Activation;

const LEAKY_SLOPE: f64 = 0.01;
const ELU_ALPHA: f64 = 1.0;
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044715;

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

pub fn forward(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        Activation::LeakyRelu => {
            if x > 0.0 {
                x
            } else {
                LEAKY_SLOPE * x
            }
        }
        Activation::Tanh => x.tanh(),
        Activation::Sigmoid => sigmoid(x),
        Activation::Softplus => softplus(x),
        Activation::Elu => {
            if x > 0.0 {
                x
            } else {
                ELU_ALPHA * x.exp_m1()
            }
        }
        // 0.5 x (1 + tanh u) written as x sigmoid(2u): the same function without cancellation.
        Activation::Gelu => x * sigmoid(2.0 * GELU_C * (x + GELU_A * x * x * x)),
    }
}

pub fn derivative(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Identity => 1.0,
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::LeakyRelu => {
            if x > 0.0 {
                1.0
            } else {
                LEAKY_SLOPE
            }
        }
        Activation::Tanh => {
            let c = x.cosh();
            if c.is_finite() { 1.0 / (c * c) } else { 0.0 }
        }
        Activation::Sigmoid => sigmoid(x) * sigmoid(-x),
        Activation::Softplus => sigmoid(x),
        Activation::Elu => {
            if x > 0.0 {
                1.0
            } else {
                ELU_ALPHA * x.exp()
            }
        }
        Activation::Gelu => {
            let u = GELU_C * (x + GELU_A * x * x * x);
            let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
            let s = sigmoid(2.0 * u);
            s + 2.0 * x * s * sigmoid(-2.0 * u) * du
        }
    }
}
