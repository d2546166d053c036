//! Activation forward/backward on the GPU against the f64 CPU reference, and the CPU derivative
//! against central finite differences.

mod common;

use common::{Lcg, U32, all_gpus, assert_close};
use vae_wgpu::cpu::activation as cpu;
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::activation::ActivationKernels;

/// Edge values and a sweep, 1037 elements (not a multiple of the 256-wide workgroup).
fn inputs() -> Vec<f32> {
    let mut v = vec![
        0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 1e-3, -1e-3, 0.5, -0.5, 1.0, -1.0, 15.0, -15.0,
        20.0, -20.0, 80.0, -80.0, 1e4, -1e4, 3e38, -3e38,
    ];
    let mut rng = Lcg(7);
    while v.len() < 1037 {
        v.push(rng.uniform(-12.0, 12.0) as f32);
    }
    v
}

/// WGSL allows exp an error of 3 + 2|a| ulp at argument a, and forming a itself rounds
/// (relative error of a few u, i.e. |a| * few u absolute in the exponent). So the relative
/// tolerance is (8 + 4|a|) u, with a the largest exponent argument the activation forms
/// (2u(x) for GELU, x otherwise) and u the f32 unit roundoff. Intermediates below the f32 normal
/// range may flush to zero: (1 + |x|) * 1.2e-38 absolute.
///
/// Where a result is a sum of terms of both signs (the GELU derivative near its zero), the
/// relative part applies to the sum of the terms' magnitudes, `scale`, not to the result.
fn tolerance(act: Activation, x: f32, scale: f64) -> f64 {
    let x = (x as f64).abs();
    let arg = match act {
        Activation::Gelu => 2.0 * 0.7978845608 * (x + 0.044715 * x * x * x),
        _ => x,
    }
    .min(100.0);
    let underflow = match act {
        // The derivative multiplies an underflowed sigmoid product by 2x du(x) <= 2x(1 + 0.14 x^2).
        Activation::Gelu => 2.5 * 2.0 * x * (1.0 + 0.14 * x * x),
        _ => 1.0 + x,
    };
    (8.0 + 4.0 * arg) * U32 * scale + underflow.min(1e6) * 1.2e-38
}

/// Sum of the magnitudes of the terms a GPU result is formed from (see `tolerance`).
fn term_scale(act: Activation, x: f32, dy: f64, want: f64) -> f64 {
    match act {
        Activation::Gelu => {
            let x = x as f64;
            let u = 0.7978845608 * (x + 0.044715 * x * x * x);
            let du = 0.7978845608 * (1.0 + 3.0 * 0.044715 * x * x);
            let s = cpu::sigmoid(2.0 * u);
            dy.abs() * (s + (2.0 * x * s * cpu::sigmoid(-2.0 * u) * du).abs())
        }
        _ => want.abs(),
    }
}

#[test]
fn activations_match_cpu_reference() {
    let x = inputs();
    let dy: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
    for gpu in all_gpus() {
        let kernels = ActivationKernels::new(&gpu).unwrap();
        let xv = gpu.upload("x", &x).unwrap();
        let dyv = gpu.upload("dy", &dy).unwrap();
        let out = gpu.zeros("out", x.len() as u64).unwrap();
        for act in Activation::ALL {
            let name = format!("{act:?} forward on {}", gpu.describe());
            gpu.run(&[&kernels.forward(&gpu, act, &xv, &out).unwrap()])
                .unwrap();
            let got: Vec<f32> = gpu.read(&out).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| cpu::forward(act, v as f64)).collect();
            // The reference is rounded to f32 first: the GPU cannot do better than that.
            assert_close(&name, &got, &want, |i| {
                tolerance(act, x[i], want[i].abs()) + (want[i] as f32 as f64 - want[i]).abs()
            });

            let name = format!("{act:?} backward on {}", gpu.describe());
            gpu.run(&[&kernels.backward(&gpu, act, &xv, &dyv, &out).unwrap()])
                .unwrap();
            let got: Vec<f32> = gpu.read(&out).unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&v, &d)| d as f64 * cpu::derivative(act, v as f64))
                .collect();
            assert_close(&name, &got, &want, |i| {
                let scale = term_scale(act, x[i], dy[i] as f64, want[i]);
                tolerance(act, x[i], scale) + (want[i] as f32 as f64 - want[i]).abs()
            });
        }
    }
}

#[test]
fn activation_derivatives_match_finite_differences() {
    // Central differences in f64 with h = 1e-6: truncation error ~h^2 f''' and rounding ~1e-16/h,
    // both below 1e-8 for |x| <= 12; ReLU-family kinks at 0 are avoided by the sweep.
    let mut rng = Lcg(11);
    for act in Activation::ALL {
        for _ in 0..2000 {
            let x = rng.uniform(-12.0, 12.0);
            if x.abs() < 1e-3 {
                continue;
            }
            let h = 1e-6;
            let fd = (cpu::forward(act, x + h) - cpu::forward(act, x - h)) / (2.0 * h);
            let an = cpu::derivative(act, x);
            assert!(
                (fd - an).abs() <= 1e-7 * (1.0 + an.abs()),
                "{act:?} at {x}: analytic {an}, finite difference {fd}"
            );
        }
    }
}
