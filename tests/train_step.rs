//! The GPU training graph against the CPU reference step: the same parameters, batch and ε give
//! the same loss and gradients, and several Adam steps give the same parameters.

mod common;

use common::{Lcg, all_gpus, to_f64};
use vae_wgpu::cpu::{adam as cpu_adam, batch as cpu_batch, vae};
use vae_wgpu::gpu::Gpu;
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::adam::AdamConfig;
use vae_wgpu::kernels::batch::upload_pixels;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::kernels::iwae::Objective;
use vae_wgpu::model::{VaeConfig, init_params};
use vae_wgpu::train::graph::{GraphOptions, StepInputs};
use vae_wgpu::train::{DeviceData, TrainGraph};

/// Normwise comparison per tensor: |gpu − cpu| ≤ tol · max|cpu| over the tensor. Each gradient
/// is a chain of up to 8 f32 matmuls/reductions over at most 37 terms (γ ≈ 37u ≈ 2e-6 each) plus
/// the WGSL exp/log bounds in the loss, so 2e-4 of the tensor's largest entry leaves a margin of
/// ~10 while still catching any wrong index, transpose or missing term (those are O(1) errors).
const NORMWISE: f64 = 2e-4;

/// `items` random byte images of `dim` pixels, on the host and resident on the device.
fn random_dataset(gpu: &Gpu, items: usize, dim: usize, seed: u64) -> (Vec<u8>, DeviceData) {
    let mut rng = Lcg(seed);
    let pixels: Vec<u8> = (0..items * dim)
        .map(|_| (rng.next_f64() * 256.0) as u8)
        .collect();
    let data = DeviceData::bytes(upload_pixels(gpu, "pixels", &pixels).unwrap(), items, dim);
    (pixels, data)
}

fn compare(what: &str, layout: &vae_wgpu::model::ParamLayout, got: &[f32], want: &[f64]) {
    for t in &layout.tensors {
        let r = t.offset..t.offset + t.len();
        let scale = want[r.clone()]
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-30);
        let worst = r
            .clone()
            .map(|i| (got[i] as f64 - want[i]).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= NORMWISE * scale,
            "{what} {}: max error {worst:e} vs scale {scale:e}",
            t.name
        );
    }
}

/// What one gradient pass on the device gives: the noise of every stochastic layer (z_1's, then
/// each upper layer's, as `cpu::hvae::step` takes it), the gradients and the batch's loss sums.
struct GpuStep {
    eps: Vec<f64>,
    grads: Vec<f32>,
    stats: Vec<f32>,
}

/// Runs forward, loss and backward (no optimizer) of step `step` on the rows from `first`.
fn gradient_step(gpu: &Gpu, g: &TrainGraph, first: usize, step: u64, beta: f64) -> GpuStep {
    g.prepare(
        gpu,
        &StepInputs {
            first: first as u32,
            step,
            lr: 1e-3,
            beta: beta as f32,
            draw: 0,
        },
    );
    gpu.run(&g.gradient_dispatches()).unwrap();
    let mut eps: Vec<f32> = gpu.read(&g.eps).unwrap();
    for e in &g.upper_eps {
        eps.extend(gpu.read::<f32>(e).unwrap());
    }
    GpuStep {
        eps: to_f64(&eps),
        grads: gpu.read(&g.grads).unwrap(),
        stats: gpu.read(&g.batch_stats).unwrap(),
    }
}

impl GpuStep {
    /// The same tolerances as the one-sample step: the K-sample and hierarchical terms add a
    /// softmax over K values, sums over K rows per example and a few more f32 chains.
    fn assert_matches(
        &self,
        name: &str,
        layout: &vae_wgpu::model::ParamLayout,
        r: &vae::StepResult,
    ) {
        let s = &self.stats;
        for (got, want, what) in [(s[0], r.total, "total"), (s[1], r.rec, "rec")] {
            assert!(
                (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{name}: {what} {got} vs {want}"
            );
        }
        compare(&format!("{name} grad"), layout, &self.grads, &r.grads);
    }
}

#[test]
fn gpu_step_matches_cpu_reference() {
    // The Tanh case clips the gradient norm (sums over the batch are far above 5, so the clip
    // is active) and adds L2 decay; the Elu case uses AdamW's decoupled decay.
    let clipped = AdamConfig {
        max_norm: 1.0,
        weight_decay: 1e-2,
        ..AdamConfig::default()
    };
    let adamw = AdamConfig {
        weight_decay: 0.1,
        decoupled: true,
        ..AdamConfig::default()
    };
    let cases = [
        (
            Likelihood::Bernoulli,
            Activation::Relu,
            AdamConfig::default(),
        ),
        (Likelihood::Bernoulli, Activation::Tanh, clipped),
        (Likelihood::Gaussian { sigma: 0.5 }, Activation::Elu, adamw),
        (
            Likelihood::GaussianLearned { shared: true },
            Activation::Softplus,
            AdamConfig::default(),
        ),
    ];
    for gpu in all_gpus() {
        for (likelihood, act, adam) in cases {
            let cfg = VaeConfig {
                input: 37,
                hidden: vec![19, 11],
                latent: 5,
                act,
                likelihood,
                upper: Vec::new(),
                conv: None,
                ladder: false,
            };
            let (batch, items) = (7u32, 13usize);
            let (pixels, data) = random_dataset(&gpu, items, cfg.input, 5);
            let g = TrainGraph::new(
                &gpu,
                &cfg,
                &GraphOptions {
                    batch,
                    adam,
                    seed: 77,
                    binarize_seed: None,
                    objective: Objective::Elbo,
                    samples: 1,
                },
                &data,
                None,
            )
            .unwrap();
            let init = init_params(&cfg, &g.layout, 1);
            gpu.write(&g.params, &init);
            let perm: Vec<u32> = (0..items as u32).map(|i| (i * 5) % items as u32).collect();
            g.set_permutation(&gpu, &perm);

            let mut p_ref = to_f64(&init);
            let mut state = cpu_adam::AdamState::new(p_ref.len());
            let name = format!("{likelihood:?}/{act:?} on {}", gpu.describe());
            for step in 0..3u64 {
                let first = (step as usize * 3) % (items - batch as usize);
                g.prepare(
                    &gpu,
                    &StepInputs {
                        first: first as u32,
                        step,
                        lr: adam.lr,
                        beta: 1.0,
                        draw: 0,
                    },
                );
                gpu.run(&g.gradient_dispatches()).unwrap();
                let eps: Vec<f32> = gpu.read(&g.eps).unwrap();
                let grads: Vec<f32> = gpu.read(&g.grads).unwrap();
                let stats: Vec<f32> = gpu.read(&g.batch_stats).unwrap();
                let x = cpu_batch::gather(&pixels, cfg.input, &perm, first, batch as usize);
                let r = vae::step(&cfg, &g.layout, &p_ref, &x, &to_f64(&eps), 1.0);
                let loss_err = (stats[0] as f64 - r.total).abs();
                assert!(
                    loss_err <= 1e-5 * r.total.abs().max(1.0),
                    "{name} step {step}: loss {} vs {}",
                    stats[0],
                    r.total
                );
                compare(
                    &format!("{name} step {step} grad"),
                    &g.layout,
                    &grads,
                    &r.grads,
                );
                // The optimizer step on both sides from the same gradient.
                gpu.run(&g.optimizer_dispatches()).unwrap();
                if adam.max_norm > 0.0 {
                    let scale = cpu_adam::clip_scale(&adam, &r.grads);
                    assert!(
                        scale < 0.9,
                        "{name}: the clip is not active (scale {scale})"
                    );
                }
                cpu_adam::step(&adam, &mut state, &mut p_ref, &r.grads);
                let params: Vec<f32> = gpu.read(&g.params).unwrap();
                compare(
                    &format!("{name} step {step} params"),
                    &g.layout,
                    &params,
                    &p_ref,
                );
            }
        }
    }
}

/// The K-sample objectives on the device against `cpu::vae::step_k`: loss and gradient for the
/// IWAE bound and the K-sample ELBO, every likelihood, β ≠ 1 (warm-up), K = 1 IWAE included.
#[test]
fn k_sample_step_matches_cpu_reference() {
    let cases = [
        (Likelihood::Bernoulli, Objective::Iwae, 5),
        (Likelihood::Bernoulli, Objective::Iwae, 1),
        (Likelihood::Gaussian { sigma: 0.5 }, Objective::Elbo, 3),
        (
            Likelihood::GaussianLearned { shared: true },
            Objective::Iwae,
            4,
        ),
    ];
    for gpu in all_gpus() {
        for (likelihood, objective, k) in cases {
            let cfg = VaeConfig {
                input: 37,
                hidden: vec![19],
                latent: 5,
                act: Activation::Tanh,
                likelihood,
                upper: Vec::new(),
                conv: None,
                ladder: false,
            };
            let (batch, items) = (7u32, 13usize);
            let (pixels, data) = random_dataset(&gpu, items, cfg.input, 6);
            let opts = GraphOptions {
                batch,
                adam: AdamConfig::default(),
                seed: 5,
                binarize_seed: None,
                objective,
                samples: k,
            };
            let g = TrainGraph::new(&gpu, &cfg, &opts, &data, None).unwrap();
            let init = init_params(&cfg, &g.layout, 2);
            gpu.write(&g.params, &init);
            let perm: Vec<u32> = (0..items as u32).map(|i| (i * 7) % items as u32).collect();
            g.set_permutation(&gpu, &perm);
            let p_ref = to_f64(&init);
            let beta = 0.6;
            for step in 0..2u64 {
                let first = step as usize * 4;
                let out = gradient_step(&gpu, &g, first, step, beta);
                assert_eq!(out.eps.len(), k as usize * batch as usize * cfg.latent);
                let x = cpu_batch::gather(&pixels, cfg.input, &perm, first, batch as usize);
                let r = vae::step_k(&cfg, &g.layout, &p_ref, &x, &out.eps, objective, beta);
                let name = format!(
                    "{likelihood:?} {objective:?} K={k} step {step} on {}",
                    gpu.describe()
                );
                out.assert_matches(&name, &g.layout, &r);
                // The batch is gathered K times over.
                let xs: Vec<f32> = gpu.read(&g.x).unwrap();
                let row = batch as usize * cfg.input;
                for s in 1..k as usize {
                    assert_eq!(
                        xs[s * row..(s + 1) * row],
                        xs[..row],
                        "{name}: copy {s} of the batch"
                    );
                }
            }
        }
    }
}

/// Hierarchical models (2 and 3 stochastic layers, hidden layers in some stages and none in
/// others) on the device against `cpu::hvae::step`: loss and gradient for both objectives, K
/// samples, β ≠ 1, every likelihood family.
#[test]
fn hierarchical_step_matches_cpu_reference() {
    use vae_wgpu::cpu::hvae;
    use vae_wgpu::model::Stage;
    let two = vec![Stage {
        hidden: vec![6],
        latent: 3,
    }];
    let three = vec![
        Stage {
            hidden: vec![7, 5],
            latent: 4,
        },
        Stage {
            hidden: vec![],
            latent: 2,
        },
    ];
    let cases = [
        (two.clone(), Likelihood::Bernoulli, Objective::Iwae, 5),
        (two, Likelihood::Gaussian { sigma: 0.5 }, Objective::Elbo, 1),
        (three.clone(), Likelihood::Bernoulli, Objective::Elbo, 3),
        (
            three,
            Likelihood::GaussianLearned { shared: true },
            Objective::Iwae,
            2,
        ),
    ];
    for gpu in all_gpus() {
        for (upper, likelihood, objective, k) in cases.clone() {
            let cfg = VaeConfig {
                input: 29,
                hidden: vec![11],
                latent: 5,
                act: Activation::Tanh,
                likelihood,
                upper,
                conv: None,
                ladder: false,
            };
            let (batch, items) = (6u32, 11usize);
            let (pixels, data) = random_dataset(&gpu, items, cfg.input, 8);
            let opts = GraphOptions {
                batch,
                adam: AdamConfig::default(),
                seed: 3,
                binarize_seed: None,
                objective,
                samples: k,
            };
            let g = TrainGraph::new(&gpu, &cfg, &opts, &data, None).unwrap();
            assert_eq!(g.upper_eps.len(), cfg.upper.len());
            let init = init_params(&cfg, &g.layout, 4);
            gpu.write(&g.params, &init);
            let perm: Vec<u32> = (0..items as u32).map(|i| (i * 5) % items as u32).collect();
            g.set_permutation(&gpu, &perm);
            let p_ref = to_f64(&init);
            let beta = 0.7;
            for step in 0..2u64 {
                let first = step as usize * 5;
                let out = gradient_step(&gpu, &g, first, step, beta);
                let x = cpu_batch::gather(&pixels, cfg.input, &perm, first, batch as usize);
                let r = hvae::step(&cfg, &g.layout, &p_ref, &x, &out.eps, objective, beta);
                let name = format!(
                    "{} layers {likelihood:?} {objective:?} K={k} step {step} on {}",
                    cfg.upper.len() + 1,
                    gpu.describe()
                );
                out.assert_matches(&name, &g.layout, &r);
            }
        }
    }
}

/// Convolutional models on the device against the CPU reference: 1-channel pictures through
/// two convolutions and 3-channel pictures through one (the layers that read and write the
/// data's [H, W, C] order included), ReLU and tanh, both objectives, K samples, and a second
/// stochastic layer; then three Adam steps give the reference's parameters.
#[test]
fn convolutional_step_matches_cpu_reference() {
    use vae_wgpu::cpu::hvae;
    use vae_wgpu::model::{ConvStack, Stage};
    let gray = ConvStack {
        image: [8, 8, 1],
        channels: vec![3, 5],
        kernel: 3,
        stride: 2,
    };
    let colour = ConvStack {
        image: [7, 7, 3],
        channels: vec![4],
        kernel: 3,
        stride: 2,
    };
    let cases = [
        (
            gray.clone(),
            Activation::Relu,
            Likelihood::Bernoulli,
            Objective::Elbo,
            1,
            vec![],
        ),
        (
            colour.clone(),
            Activation::Tanh,
            Likelihood::GaussianLearned { shared: true },
            Objective::Iwae,
            3,
            vec![],
        ),
        (
            gray.clone(),
            Activation::Tanh,
            Likelihood::Bernoulli,
            Objective::Iwae,
            2,
            vec![Stage {
                hidden: vec![4],
                latent: 2,
            }],
        ),
        (
            colour,
            Activation::Relu,
            Likelihood::Gaussian { sigma: 0.5 },
            Objective::Elbo,
            2,
            vec![],
        ),
        // No activation: each convolution is its own pre-activation.
        (
            gray,
            Activation::Identity,
            Likelihood::Bernoulli,
            Objective::Elbo,
            1,
            vec![],
        ),
    ];
    for gpu in all_gpus() {
        for (stack, act, likelihood, objective, k, upper) in cases.clone() {
            let [h, w, c] = stack.image;
            let cfg = VaeConfig {
                input: h * w * c,
                hidden: vec![9],
                latent: 4,
                act,
                likelihood,
                upper,
                conv: Some(stack),
                ladder: false,
            };
            cfg.check().unwrap();
            let (batch, items) = (5u32, 9usize);
            let (pixels, data) = random_dataset(&gpu, items, cfg.input, 9);
            let adam = AdamConfig::default();
            let opts = GraphOptions {
                batch,
                adam,
                seed: 4,
                binarize_seed: None,
                objective,
                samples: k,
            };
            let g = TrainGraph::new(&gpu, &cfg, &opts, &data, None).unwrap();
            let init = init_params(&cfg, &g.layout, 3);
            gpu.write(&g.params, &init);
            let perm: Vec<u32> = (0..items as u32).map(|i| (i * 4) % items as u32).collect();
            g.set_permutation(&gpu, &perm);
            let mut p_ref = to_f64(&init);
            let mut state = cpu_adam::AdamState::new(p_ref.len());
            let beta = 0.7;
            for step in 0..3u64 {
                let first = step as usize * 2;
                let out = gradient_step(&gpu, &g, first, step, beta);
                let x = cpu_batch::gather(&pixels, cfg.input, &perm, first, batch as usize);
                // One stochastic layer's ELBO has the analytic KL: the one-layer reference.
                let r = if cfg.upper.is_empty() {
                    vae::step_k(&cfg, &g.layout, &p_ref, &x, &out.eps, objective, beta)
                } else {
                    hvae::step(&cfg, &g.layout, &p_ref, &x, &out.eps, objective, beta)
                };
                let name = format!(
                    "{} {act:?} {likelihood:?} {objective:?} K={k} step {step} on {}",
                    cfg.dims(),
                    gpu.describe()
                );
                out.assert_matches(&name, &g.layout, &r);
                // The optimizer step on both sides.
                gpu.run(&g.optimizer_dispatches()).unwrap();
                cpu_adam::step(&adam, &mut state, &mut p_ref, &r.grads);
                let got: Vec<f32> = gpu.read(&g.params).unwrap();
                compare(&format!("{name} params"), &g.layout, &got, &p_ref);
            }
        }
    }
}

/// Ladder VAEs (top-down inference) on the device against `cpu::ladder::step`: 2 and 3
/// stochastic layers, both objectives, K samples, β ≠ 1, the likelihood families, and a
/// convolutional trunk; then three Adam steps give the reference's parameters.
#[test]
fn ladder_step_matches_cpu_reference() {
    use vae_wgpu::cpu::ladder;
    use vae_wgpu::model::{ConvStack, Stage};
    let two = vec![Stage {
        hidden: vec![6],
        latent: 3,
    }];
    let three = vec![
        Stage {
            hidden: vec![7, 5],
            latent: 4,
        },
        Stage {
            hidden: vec![],
            latent: 2,
        },
    ];
    let conv = ConvStack {
        image: [6, 6, 1],
        channels: vec![3],
        kernel: 3,
        stride: 2,
    };
    let cases = [
        (two.clone(), Likelihood::Bernoulli, Objective::Iwae, 5, None),
        (
            two,
            Likelihood::Gaussian { sigma: 0.5 },
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
    for gpu in all_gpus() {
        for (upper, likelihood, objective, k, conv) in cases.clone() {
            let cfg = VaeConfig {
                input: 36,
                hidden: vec![11],
                latent: 5,
                act: Activation::Tanh,
                likelihood,
                upper,
                conv,
                ladder: true,
            };
            cfg.check().unwrap();
            let (batch, items) = (6u32, 11usize);
            let (pixels, data) = random_dataset(&gpu, items, cfg.input, 8);
            let adam = AdamConfig::default();
            let opts = GraphOptions {
                batch,
                adam,
                seed: 3,
                binarize_seed: None,
                objective,
                samples: k,
            };
            let g = TrainGraph::new(&gpu, &cfg, &opts, &data, None).unwrap();
            assert_eq!(g.upper_eps.len(), cfg.upper.len());
            let init = init_params(&cfg, &g.layout, 4);
            gpu.write(&g.params, &init);
            let perm: Vec<u32> = (0..items as u32).map(|i| (i * 5) % items as u32).collect();
            g.set_permutation(&gpu, &perm);
            let mut p_ref = to_f64(&init);
            let mut state = cpu_adam::AdamState::new(p_ref.len());
            let beta = 0.7;
            for step in 0..3u64 {
                let first = step as usize * 2;
                let out = gradient_step(&gpu, &g, first, step, beta);
                let x = cpu_batch::gather(&pixels, cfg.input, &perm, first, batch as usize);
                let r = ladder::step(&cfg, &g.layout, &p_ref, &x, &out.eps, objective, beta);
                let name = format!(
                    "ladder {} {likelihood:?} {objective:?} K={k} step {step} on {}",
                    cfg.dims(),
                    gpu.describe()
                );
                out.assert_matches(&name, &g.layout, &r);
                gpu.run(&g.optimizer_dispatches()).unwrap();
                cpu_adam::step(&adam, &mut state, &mut p_ref, &r.grads);
                let got: Vec<f32> = gpu.read(&g.params).unwrap();
                compare(&format!("{name} params"), &g.layout, &got, &p_ref);
            }
        }
    }
}
