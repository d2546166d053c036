//! Shared by the GPU test files: every adapter present, and comparisons with stated tolerances.
#![allow(dead_code)]

pub mod files;

use vae_wgpu::gpu::{self, BackendChoice, Gpu};

/// A device on every adapter present (Vulkan lavapipe and GL llvmpipe in CI), so each test runs
/// the same assertions on each backend. No adapter is a failure, never a skip.
pub fn all_gpus() -> Vec<Gpu> {
    let only = std::env::var("VAE_TEST_ADAPTER").ok();
    let adapters = gpu::enumerate(BackendChoice::Auto);
    assert!(
        !adapters.is_empty(),
        "no GPU adapter found: the GPU tests need one. On Linux without a GPU install \
         Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers"
    );
    let gpus: Vec<Gpu> = adapters
        .into_iter()
        .filter(|a| {
            let name = format!("{} {:?}", a.get_info().name, a.get_info().backend).to_lowercase();
            only.as_ref()
                .is_none_or(|q| name.contains(&q.to_lowercase()))
        })
        .map(|a| Gpu::from_adapter(a).expect("open device"))
        .collect();
    assert!(
        !gpus.is_empty(),
        "VAE_TEST_ADAPTER={only:?} matches no adapter"
    );
    gpus
}

/// Deterministic test data without a dependency on the rand crate's stream stability.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts `|got - want| <= tol[i]` elementwise and returns the worst error relative to its
/// tolerance (for the report). Prints the first mismatches, llm.c style.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    let mut worst_abs = 0.0f64;
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let t = tol(i);
        let ok = err <= t || (g as f64 == w);
        if !ok || !g.is_finite() && w.is_finite() {
            bad.push(format!(
                "  [{i}] got {g:e} want {w:e} err {err:e} tol {t:e}"
            ));
        }
        if t > 0.0 && err.is_finite() {
            worst = worst.max(err / t);
        }
        if err.is_finite() {
            worst_abs = worst_abs.max(err);
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements out of tolerance:\n{}",
        bad.len(),
        got.len(),
        bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!("{what}: max |err| {worst_abs:.3e}, max err/tol {worst:.3}");
    worst
}

/// f32 unit roundoff.
pub const U32: f64 = f32::EPSILON as f64 / 2.0;

/// A checkpoint of an `input-hidden-latent` ReLU Bernoulli VAE with the default training
/// settings on the shipped data, after `epochs_done` epochs of 32 steps. Every tensor element i
/// (counted within its tensor) of parameters, first and second moments is `value(0|1|2, i)`;
/// the alignment padding, which files do not store, is 0.
pub fn mlp_checkpoint(
    input: usize,
    hidden: usize,
    latent: usize,
    epochs_done: usize,
    value: impl Fn(usize, usize) -> f32,
) -> vae_wgpu::train::Checkpoint {
    use vae_wgpu::kernels::Activation;
    use vae_wgpu::kernels::adam::AdamConfig;
    use vae_wgpu::kernels::elbo::Likelihood;
    use vae_wgpu::model::{ParamLayout, VaeConfig};
    use vae_wgpu::train::{Binarize, Checkpoint, Progress, TrainSettings};

    let settings = TrainSettings {
        data: "mnist5k".into(),
        test_data: None,
        model: VaeConfig {
            input,
            hidden: vec![hidden],
            latent,
            act: Activation::Relu,
            likelihood: Likelihood::Bernoulli,
            upper: Vec::new(),
            conv: None,
            ladder: false,
        },
        epochs: 10,
        batch: 128,
        adam: AdamConfig::default(),
        seed: 1,
        beta: 1.0,
        kl_warmup: 0,
        log_every: 50,
        binarize: Binarize::None,
        objective: vae_wgpu::kernels::iwae::Objective::Elbo,
        samples: 1,
        lr_schedule: vae_wgpu::train::LrSchedule::Constant,
    };
    let layout = ParamLayout::new(&settings.model);
    let fill = |kind: usize| {
        let mut flat = vec![0.0f32; layout.len];
        for t in &layout.tensors {
            for (i, v) in flat[t.offset..t.offset + t.len()].iter_mut().enumerate() {
                *v = value(kind, i);
            }
        }
        flat
    };
    Checkpoint {
        settings,
        progress: Progress {
            epochs_done,
            step: 32 * epochs_done as u64,
            ..Progress::default()
        },
        params: fill(0),
        exp_avg: fill(1),
        exp_avg_sq: fill(2),
    }
}
