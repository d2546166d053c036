//! The CPU reference VAE step: its gradient against central finite differences of its loss, for
//! every likelihood and a smooth and a kinked activation, on a tiny two-hidden-layer model.

mod common;

use common::Lcg;
use vae_wgpu::cpu::vae;
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::model::{ParamLayout, VaeConfig, init_params};

#[test]
fn reference_gradient_matches_finite_differences() {
    let likelihoods = [
        Likelihood::Bernoulli,
        Likelihood::Gaussian { sigma: 0.7 },
        Likelihood::GaussianLearned { shared: true },
    ];
    for likelihood in likelihoods {
        for act in [Activation::Tanh, Activation::Relu] {
            let cfg = VaeConfig {
                input: 7,
                hidden: vec![5, 4],
                latent: 3,
                act,
                likelihood,
            };
            let layout = ParamLayout::new(&cfg);
            let mut p: Vec<f64> = init_params(&cfg, &layout, 3)
                .iter()
                .map(|&v| v as f64)
                .collect();
            if likelihood.learns_variance() {
                let t = layout.get(vae_wgpu::model::DEC_LOGVAR);
                p[t.offset..t.offset + t.len()]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = 0.1 * i as f64 - 0.3);
            }
            let mut rng = Lcg(21);
            let batch = 3;
            let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
            let eps: Vec<f64> = (0..batch * cfg.latent)
                .map(|_| rng.uniform(-2.0, 2.0))
                .collect();
            let beta = 0.7;
            let r = vae::step(&cfg, &layout, &p, &x, &eps, beta);
            // h = 1e-6 in f64: truncation ~h² and rounding ~1e-16·|loss|/h, both < 1e-7 here.
            // ReLU kinks: a parameter whose ±h moves a pre-activation across 0 is skipped by
            // checking that one-sided differences agree.
            let h = 1e-6;
            let mut checked = 0;
            for t in &layout.tensors {
                for i in t.offset..t.offset + t.len() {
                    let f = |delta: f64| {
                        let mut q = p.clone();
                        q[i] += delta;
                        vae::step(&cfg, &layout, &q, &x, &eps, beta).total
                    };
                    let (fp, f0, fm) = (f(h), r.total, f(-h));
                    let (right, left) = ((fp - f0) / h, (f0 - fm) / h);
                    if (right - left).abs() > 1e-3 * (1.0 + right.abs()) {
                        continue; // a kink between -h and h
                    }
                    let fd = (fp - fm) / (2.0 * h);
                    assert!(
                        (fd - r.grads[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                        "{likelihood:?} {act:?} {}[{}]: analytic {} vs finite difference {fd}",
                        t.name,
                        i - t.offset,
                        r.grads[i]
                    );
                    checked += 1;
                }
            }
            assert!(
                checked as f64 >= 0.9 * layout.count() as f64,
                "too many skipped: {checked}"
            );
        }
    }
}
