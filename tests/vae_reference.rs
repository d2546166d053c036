//! The CPU reference VAE step: its gradient against central finite differences of its loss, for
//! every likelihood and a smooth and a kinked activation, on a tiny two-hidden-layer model.

mod common;

use common::Lcg;
use vae_wgpu::cpu::vae;
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::kernels::iwae::Objective;
use vae_wgpu::model::{ParamLayout, VaeConfig, init_params};

/// Checks `grads` against central differences of `loss` at `p`, for every parameter of
/// `layout`. h = 1e-6 in f64: truncation ~h² and rounding ~1e-16·|loss|/h, both < 1e-7 here, so
/// 1e-5·(1 + |fd|) is a safe bound. With `skip_kinks`, a parameter whose ±h moves a ReLU
/// pre-activation across 0 (one-sided differences disagree) is skipped. Returns how many were
/// checked.
fn check_finite_differences(
    what: &str,
    layout: &ParamLayout,
    p: &[f64],
    grads: &[f64],
    loss: impl Fn(&[f64]) -> f64,
    skip_kinks: bool,
) -> usize {
    let h = 1e-6;
    let f0 = loss(p);
    let mut checked = 0;
    for t in &layout.tensors {
        for i in t.offset..t.offset + t.len() {
            let at = |delta: f64| {
                let mut q = p.to_vec();
                q[i] += delta;
                loss(&q)
            };
            let (fp, fm) = (at(h), at(-h));
            if skip_kinks {
                let (right, left) = ((fp - f0) / h, (f0 - fm) / h);
                if (right - left).abs() > 1e-3 * (1.0 + right.abs()) {
                    continue;
                }
            }
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - grads[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                "{what} {}[{}]: analytic {} vs finite difference {fd}",
                t.name,
                i - t.offset,
                grads[i]
            );
            checked += 1;
        }
    }
    checked
}

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
                upper: Vec::new(),
                conv: None,
                ladder: false,
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
            let checked = check_finite_differences(
                &format!("{likelihood:?} {act:?}"),
                &layout,
                &p,
                &r.grads,
                |q| vae::step(&cfg, &layout, q, &x, &eps, beta).total,
                true,
            );
            assert!(
                checked as f64 >= 0.9 * layout.count() as f64,
                "too many skipped: {checked}"
            );
        }
    }
}

/// The K-sample objectives: the reference gradient against finite differences for K = 5 (both
/// objectives, every likelihood, β ≠ 1), and for K = 1 the IWAE bound and gradient equal the
/// single-sample ELBO's with the KL estimated from the same sample.
#[test]
fn k_sample_gradients_match_finite_differences() {
    let likelihoods = [
        Likelihood::Bernoulli,
        Likelihood::Gaussian { sigma: 0.7 },
        Likelihood::GaussianLearned { shared: true },
    ];
    for likelihood in likelihoods {
        for objective in [Objective::Elbo, Objective::Iwae] {
            let cfg = VaeConfig {
                input: 6,
                hidden: vec![5],
                latent: 3,
                act: Activation::Tanh,
                likelihood,
                upper: Vec::new(),
                conv: None,
                ladder: false,
            };
            let layout = ParamLayout::new(&cfg);
            let p: Vec<f64> = init_params(&cfg, &layout, 4)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mut rng = Lcg(8);
            let (batch, k) = (3, 5);
            let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
            let eps: Vec<f64> = (0..k * batch * cfg.latent)
                .map(|_| rng.uniform(-2.0, 2.0))
                .collect();
            let beta = 0.8;
            let loss = |q: &[f64]| vae::step_k(&cfg, &layout, q, &x, &eps, objective, beta);
            let r = loss(&p);
            // tanh is smooth: nothing is skipped.
            let checked = check_finite_differences(
                &format!("{likelihood:?} {objective:?} K={k}"),
                &layout,
                &p,
                &r.grads,
                |q| loss(q).total,
                false,
            );
            assert_eq!(checked, layout.count());
            // The bound's ordering on the same samples: the K-sample IWAE loss is at most the
            // mean of the single-sample IWAE losses (Jensen), which is the ELBO with sampled KL.
            if objective == Objective::Iwae {
                let mean_single: f64 = (0..k)
                    .map(|s| {
                        let rows = s * batch * cfg.latent..(s + 1) * batch * cfg.latent;
                        vae::step_k(&cfg, &layout, &p, &x, &eps[rows], objective, beta).total
                    })
                    .sum::<f64>()
                    / k as f64;
                assert!(
                    r.total <= mean_single + 1e-12,
                    "{} > {mean_single}",
                    r.total
                );
            }
        }
    }
}

#[test]
fn iwae_with_one_sample_is_the_elbo_with_a_sampled_kl() {
    let cfg = VaeConfig {
        input: 6,
        hidden: vec![5],
        latent: 3,
        act: Activation::Relu,
        likelihood: Likelihood::Bernoulli,
        upper: Vec::new(),
        conv: None,
        ladder: false,
    };
    let layout = ParamLayout::new(&cfg);
    let p: Vec<f64> = init_params(&cfg, &layout, 9)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut rng = Lcg(12);
    let batch = 4;
    let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
    let eps: Vec<f64> = (0..batch * cfg.latent)
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect();
    let beta = 0.6;
    let iwae = vae::step_k(&cfg, &layout, &p, &x, &eps, Objective::Iwae, beta);
    let elbo = vae::step(&cfg, &layout, &p, &x, &eps, beta);
    // log w = −rec + β(log p(z) − log q(z|x)): its negation is rec + β·(sampled KL), whose
    // expectation is the analytic KL. With the same z the two losses differ exactly by
    // β·(sampled − analytic KL), and so do the gradients; check the bound itself directly.
    let (mu, logvar) = vae::encode(&cfg, &layout, &p, &x);
    let z: Vec<f64> = (0..eps.len())
        .map(|i| mu[i] + (0.5 * logvar[i]).exp() * eps[i])
        .collect();
    let sampled_kl: f64 = (0..eps.len())
        .map(|i| 0.5 * (z[i] * z[i] - eps[i] * eps[i] - logvar[i]))
        .sum();
    let analytic_kl: f64 = elbo.kl;
    let want = elbo.rec + beta * sampled_kl;
    assert!(
        (iwae.total - want).abs() <= 1e-12 * want.abs(),
        "IWAE K=1 {} vs rec + β·sampled KL {want} (analytic KL {analytic_kl})",
        iwae.total
    );
    assert!((iwae.rec - elbo.rec).abs() <= 1e-12 * elbo.rec.abs());
    // The gradients: the ELBO with sampled KL is the IWAE loss with K = 1, so its gradient
    // computed by finite differences of that closed form must equal IWAE's analytic one.
    let sampled_elbo = |q: &[f64]| {
        let (mu, logvar) = vae::encode(&cfg, &layout, q, &x);
        let z: Vec<f64> = (0..eps.len())
            .map(|i| mu[i] + (0.5 * logvar[i]).exp() * eps[i])
            .collect();
        let kl: f64 = (0..eps.len())
            .map(|i| 0.5 * (z[i] * z[i] - eps[i] * eps[i] - logvar[i]))
            .sum();
        vae::step(&cfg, &layout, q, &x, &eps, beta).rec + beta * kl
    };
    let checked = check_finite_differences(
        "IWAE K=1 against the sampled-KL ELBO",
        &layout,
        &p,
        &iwae.grads,
        sampled_elbo,
        true,
    );
    assert!(
        checked as f64 >= 0.9 * layout.count() as f64,
        "too many skipped: {checked}"
    );
}

/// The hierarchical reference (`cpu::hvae`): gradients against finite differences for two and
/// three stochastic layers, both objectives, K = 1 and 3; with one layer and IWAE it is exactly
/// `vae::step_k` (the same log-weights, formed another way).
#[test]
fn hierarchical_gradients_match_finite_differences() {
    use vae_wgpu::cpu::hvae;
    use vae_wgpu::model::Stage;
    let stages = [
        vec![Stage {
            hidden: vec![4],
            latent: 2,
        }],
        vec![
            Stage {
                hidden: vec![4],
                latent: 3,
            },
            Stage {
                hidden: vec![],
                latent: 2,
            },
        ],
    ];
    let cases = [
        (Likelihood::Bernoulli, Objective::Iwae, 3),
        (Likelihood::Bernoulli, Objective::Elbo, 1),
        (
            Likelihood::GaussianLearned { shared: true },
            Objective::Iwae,
            1,
        ),
        (Likelihood::Gaussian { sigma: 0.7 }, Objective::Elbo, 3),
    ];
    for upper in &stages {
        for (likelihood, objective, k) in cases {
            let cfg = VaeConfig {
                input: 5,
                hidden: vec![4],
                latent: 3,
                act: Activation::Tanh,
                likelihood,
                upper: upper.clone(),
                conv: None,
                ladder: false,
            };
            let layout = ParamLayout::new(&cfg);
            let p: Vec<f64> = init_params(&cfg, &layout, 5)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mut rng = Lcg(31);
            let batch = 2;
            let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
            let n_eps: usize = cfg.latents().iter().sum::<usize>() * k * batch;
            let eps: Vec<f64> = (0..n_eps).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let beta = 0.9;
            let r = hvae::step(&cfg, &layout, &p, &x, &eps, objective, beta);
            assert!(r.total.is_finite() && r.rec > 0.0, "{r:?}");
            let checked = check_finite_differences(
                &format!(
                    "{} layers {likelihood:?} {objective:?} K={k}",
                    upper.len() + 1
                ),
                &layout,
                &p,
                &r.grads,
                |q| hvae::step(&cfg, &layout, q, &x, &eps, objective, beta).total,
                false,
            );
            assert_eq!(checked, layout.count());
        }
    }
    // One layer: the hierarchy's IWAE loss and gradient are step_k's.
    let cfg = VaeConfig {
        input: 5,
        hidden: vec![4],
        latent: 3,
        act: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        upper: Vec::new(),
        conv: None,
        ladder: false,
    };
    let layout = ParamLayout::new(&cfg);
    let p: Vec<f64> = init_params(&cfg, &layout, 6)
        .iter()
        .map(|&v| v as f64)
        .collect();
    let mut rng = Lcg(2);
    let x: Vec<f64> = (0..3 * cfg.input).map(|_| rng.next_f64()).collect();
    let eps: Vec<f64> = (0..4 * 3 * cfg.latent)
        .map(|_| rng.uniform(-2.0, 2.0))
        .collect();
    let a = hvae::step(&cfg, &layout, &p, &x, &eps, Objective::Iwae, 0.7);
    let b = vae::step_k(&cfg, &layout, &p, &x, &eps, Objective::Iwae, 0.7);
    assert!(
        (a.total - b.total).abs() <= 1e-12 * b.total.abs(),
        "{} vs {}",
        a.total,
        b.total
    );
    for (i, (ga, gb)) in a.grads.iter().zip(&b.grads).enumerate() {
        assert!(
            (ga - gb).abs() <= 1e-10 * (1.0 + gb.abs()),
            "param {i}: {ga} vs {gb}"
        );
    }
}

/// Convolutional models: a 2-channel picture through one convolution and a 1-channel picture
/// through two, each mirrored by transposed convolutions (the first and last layers reading and
/// writing the data's [H, W, C] order), with a dense layer between; tanh, so every parameter's
/// loss is smooth. Both objectives, K = 1 and 3, and a second stochastic layer.
#[test]
fn convolutional_gradients_match_finite_differences() {
    use vae_wgpu::cpu::hvae;
    use vae_wgpu::model::{ConvStack, Stage};
    let stacks = [
        ConvStack {
            image: [5, 5, 2],
            channels: vec![3],
            kernel: 3,
            stride: 2,
        },
        ConvStack {
            image: [6, 6, 1],
            channels: vec![2, 3],
            kernel: 3,
            stride: 2,
        },
    ];
    let cases = [
        (Likelihood::Bernoulli, Objective::Iwae, 3, Vec::new()),
        (
            Likelihood::GaussianLearned { shared: true },
            Objective::Elbo,
            1,
            Vec::new(),
        ),
        (
            Likelihood::Bernoulli,
            Objective::Elbo,
            2,
            vec![Stage {
                hidden: vec![],
                latent: 2,
            }],
        ),
    ];
    for stack in &stacks {
        for (likelihood, objective, k, upper) in cases.clone() {
            let [h, w, c] = stack.image;
            let cfg = VaeConfig {
                input: h * w * c,
                hidden: vec![4],
                latent: 3,
                act: Activation::Tanh,
                likelihood,
                upper,
                conv: Some(stack.clone()),
                ladder: false,
            };
            cfg.check().unwrap();
            let layout = ParamLayout::new(&cfg);
            let p: Vec<f64> = init_params(&cfg, &layout, 7)
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mut rng = Lcg(41);
            let batch = 2;
            let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
            let n_eps: usize = cfg.latents().iter().sum::<usize>() * k * batch;
            let eps: Vec<f64> = (0..n_eps).map(|_| rng.uniform(-2.0, 2.0)).collect();
            let beta = 0.8;
            let r = hvae::step(&cfg, &layout, &p, &x, &eps, objective, beta);
            assert!(r.total.is_finite() && r.rec > 0.0, "{r:?}");
            let name = format!("{} {likelihood:?} {objective:?} K={k}", cfg.dims());
            let checked = check_finite_differences(
                &name,
                &layout,
                &p,
                &r.grads,
                |q| hvae::step(&cfg, &layout, q, &x, &eps, objective, beta).total,
                false,
            );
            assert_eq!(checked, layout.count(), "{name}");
            if cfg.upper.is_empty() {
                // The one-layer reference (the ELBO with its analytic KL), which the device's
                // convolutional step is checked against.
                let r1 = vae::step_k(&cfg, &layout, &p, &x, &eps, objective, beta);
                let checked = check_finite_differences(
                    &format!("{name} (one-layer reference)"),
                    &layout,
                    &p,
                    &r1.grads,
                    |q| vae::step_k(&cfg, &layout, q, &x, &eps, objective, beta).total,
                    false,
                );
                assert_eq!(checked, layout.count(), "{name}");
                if objective == Objective::Iwae {
                    assert!((r1.total - r.total).abs() <= 1e-9 * r.total.abs(), "{name}");
                }
            }
        }
    }
}

/// The ladder VAE (top-down inference with precision-weighted posteriors): 2 and 3 stochastic
/// layers, a stage with and one without deterministic layers, both objectives, K = 1 and 3,
/// every likelihood family, and a convolutional trunk; tanh, so every loss is smooth.
#[test]
fn ladder_gradients_match_finite_differences() {
    use vae_wgpu::cpu::ladder;
    use vae_wgpu::model::{ConvStack, Stage};
    let two = vec![Stage {
        hidden: vec![3],
        latent: 2,
    }];
    let three = vec![
        Stage {
            hidden: vec![4],
            latent: 3,
        },
        Stage {
            hidden: vec![],
            latent: 2,
        },
    ];
    let conv = ConvStack {
        image: [5, 5, 1],
        channels: vec![2],
        kernel: 3,
        stride: 2,
    };
    let cases = [
        (two.clone(), Likelihood::Bernoulli, Objective::Iwae, 3, None),
        (
            two,
            Likelihood::Gaussian { sigma: 0.7 },
            Objective::Elbo,
            1,
            Some(conv),
        ),
        (
            three.clone(),
            Likelihood::Bernoulli,
            Objective::Elbo,
            3,
            None,
        ),
        (
            three,
            Likelihood::GaussianLearned { shared: true },
            Objective::Iwae,
            2,
            None,
        ),
    ];
    for (upper, likelihood, objective, k, conv) in cases {
        let cfg = VaeConfig {
            input: 25,
            hidden: vec![4],
            latent: 3,
            act: Activation::Tanh,
            likelihood,
            upper,
            conv,
            ladder: true,
        };
        cfg.check().unwrap();
        let layout = ParamLayout::new(&cfg);
        let p: Vec<f64> = init_params(&cfg, &layout, 8)
            .iter()
            .map(|&v| 1.5 * v as f64)
            .collect();
        let mut rng = Lcg(43);
        let batch = 2;
        let x: Vec<f64> = (0..batch * cfg.input).map(|_| rng.next_f64()).collect();
        let n_eps: usize = cfg.latents().iter().sum::<usize>() * k * batch;
        let eps: Vec<f64> = (0..n_eps).map(|_| rng.uniform(-2.0, 2.0)).collect();
        let beta = 0.9;
        let r = ladder::step(&cfg, &layout, &p, &x, &eps, objective, beta);
        assert!(r.total.is_finite() && r.rec > 0.0, "{r:?}");
        let name = format!("ladder {} {likelihood:?} {objective:?} K={k}", cfg.dims());
        let checked = check_finite_differences(
            &name,
            &layout,
            &p,
            &r.grads,
            |q| ladder::step(&cfg, &layout, q, &x, &eps, objective, beta).total,
            false,
        );
        assert_eq!(checked, layout.count(), "{name}");
        // The same parameters without the ladder are another model: the bound differs.
        let plain = VaeConfig {
            ladder: false,
            ..cfg.clone()
        };
        let h = vae_wgpu::cpu::hvae::step(&plain, &layout, &p, &x, &eps, objective, beta);
        assert!(
            (h.total - r.total).abs() > 1e-6,
            "{name}: {} vs {}",
            h.total,
            r.total
        );
    }
}
