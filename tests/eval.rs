//! The importance-sampled log-likelihood on the device against brute force: for a model with a
//! one-dimensional latent, log p(x) = log ∫ p(x|z) N(z; 0, 1) dz, the ELBO and the spread of the
//! importance weights are computed by quadrature on the CPU in f64. The GPU estimate with k = 1
//! must average to the ELBO, with large k to log p(x) (less the estimator's known bias), with
//! moderate k in between: ELBO ≤ IWAE_k ≤ log p(x).

mod common;

use common::all_gpus;
use vae_wgpu::cpu::elbo::{LN_2PI, bernoulli_nll};
use vae_wgpu::cpu::vae;
use vae_wgpu::eval::{IwaeGraph, IwaeOptions};
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::batch::upload_pixels;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::model::{ParamLayout, VaeConfig, init_params};
use vae_wgpu::train::DeviceData;

const D: usize = 6;
/// Independent estimates per image, so means have small, known noise.
const REPEATS: usize = 32;

fn model() -> (VaeConfig, ParamLayout, Vec<f32>) {
    let cfg = VaeConfig {
        input: D,
        hidden: vec![5],
        latent: 1,
        act: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        upper: Vec::new(),
        conv: None,
        ladder: false,
    };
    let layout = ParamLayout::new(&cfg);
    // PyTorch's init, scaled up so the decoder depends strongly on z and q(z|x) is far from
    // the true posterior: a gap between ELBO and log p(x) worth resolving.
    let params = init_params(&cfg, &layout, 3)
        .iter()
        .map(|v| 3.0 * v)
        .collect();
    (cfg, layout, params)
}

/// Exact quantities for one image by quadrature over z ∈ [−12, 12].
struct Exact {
    log_px: f64,
    elbo: f64,
    /// Var(log w) under q: the spread of one-sample estimates.
    var_log_w: f64,
    /// Var(w)/E[w]² under q: sets the bias σ²/(2k) and spread √(σ²/k) of IWAE_k.
    rel_var_w: f64,
}

fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + v.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn exact(cfg: &VaeConfig, layout: &ParamLayout, p: &[f64], x: &[f64]) -> Exact {
    let (mu, lv) = vae::encode(cfg, layout, p, x);
    let (mu, lv) = (mu[0], lv[0]);
    let h = 1e-3;
    let z: Vec<f64> = (0..=24_000).map(|i| -12.0 + h * i as f64).collect();
    let dec = vae::decode(cfg, layout, p, &z);
    let log_joint: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(i, &z)| {
            let rec: f64 = (0..D).map(|j| bernoulli_nll(dec[i * D + j], x[j])).sum();
            -rec - 0.5 * z * z - 0.5 * LN_2PI
        })
        .collect();
    let log_q: Vec<f64> = z
        .iter()
        .map(|&z| -0.5 * (z - mu).powi(2) / lv.exp() - 0.5 * lv - 0.5 * LN_2PI)
        .collect();
    let log_px = log_sum_exp(&log_joint) + h.ln();
    let q: Vec<f64> = log_q.iter().map(|l| l.exp() * h).collect();
    let log_w: Vec<f64> = log_joint.iter().zip(&log_q).map(|(a, b)| a - b).collect();
    let elbo: f64 = q.iter().zip(&log_w).map(|(q, w)| q * w).sum();
    let var_log_w = q
        .iter()
        .zip(&log_w)
        .map(|(q, w)| q * (w - elbo).powi(2))
        .sum();
    let second: Vec<f64> = log_joint
        .iter()
        .zip(&log_q)
        .map(|(j, q)| 2.0 * j - q)
        .collect();
    let rel_var_w = (log_sum_exp(&second) + h.ln() - 2.0 * log_px).exp() - 1.0;
    Exact {
        log_px,
        elbo,
        var_log_w,
        rel_var_w,
    }
}

#[test]
fn importance_sampled_likelihood_converges_to_quadrature() {
    let (cfg, layout, params) = model();
    let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let images: [[u8; D]; 3] = [
        [255, 0, 255, 0, 255, 0],
        [255, 255, 255, 0, 0, 0],
        [0, 0, 0, 0, 0, 255],
    ];
    let exact: Vec<Exact> = images
        .iter()
        .map(|im| {
            let x: Vec<f64> = im.iter().map(|&b| b as f64 / 255.0).collect();
            exact(&cfg, &layout, &p64, &x)
        })
        .collect();
    for e in &exact {
        eprintln!(
            "exact: log p(x) {:.4}, ELBO {:.4}, Var log w {:.3}, Var w / E[w]² {:.3}",
            e.log_px, e.elbo, e.var_log_w, e.rel_var_w
        );
        assert!(
            e.elbo < e.log_px - 0.05,
            "no gap to resolve: {}",
            e.log_px - e.elbo
        );
    }
    let pixels: Vec<u8> = images.iter().flatten().copied().collect();
    // Every image REPEATS times, in batches of 32 (each batch its own noise stream).
    let items: Vec<u32> = (0..images.len() as u32)
        .flat_map(|i| std::iter::repeat_n(i, REPEATS))
        .collect();
    for gpu in all_gpus() {
        let data = DeviceData::bytes(
            upload_pixels(&gpu, "pixels", &pixels).unwrap(),
            images.len(),
            D,
        );
        let pv = gpu.upload("params", &params).unwrap();
        let graph = IwaeGraph::new(
            &gpu,
            &cfg,
            &pv,
            &data,
            IwaeOptions {
                batch: 32,
                chunk: 64,
                seed: 9,
                binarize_seed: None,
            },
        )
        .unwrap();
        // Mean estimate per image for k samples.
        let means = |k: u64| -> Vec<f64> {
            let mut sums = vec![0.0; images.len()];
            for (i, group) in items.chunks(32).enumerate() {
                let r = graph
                    .run(&gpu, group, k, i as u32 + 1000 * k as u32)
                    .unwrap();
                for (&item, v) in group.iter().zip(&r.log_px) {
                    sums[item as usize] += v;
                }
            }
            sums.iter().map(|s| s / REPEATS as f64).collect()
        };
        let n = REPEATS as f64;
        let (m1, m16, m4096) = (means(1), means(16), means(4096));
        for (j, e) in exact.iter().enumerate() {
            let what = format!("image {j} on {}", gpu.describe());
            eprintln!(
                "{what}: IWAE_1 {:.4}  IWAE_16 {:.4}  IWAE_4096 {:.4}  log p(x) {:.4}",
                m1[j], m16[j], m4096[j], e.log_px
            );
            // k = 1: the mean of single-sample log-weights, i.e. the ELBO; 4 standard errors,
            // plus 1e-3 for f32 arithmetic on log-weights of a few nats.
            let tol1 = 4.0 * (e.var_log_w / n).sqrt() + 1e-3;
            assert!(
                (m1[j] - e.elbo).abs() <= tol1,
                "{what}: IWAE_1 {} vs ELBO {} ± {tol1}",
                m1[j],
                e.elbo
            );
            // Large k: log p(x) − σ²/(2k) (the delta-method bias), spread √(σ²/k); allow the
            // bias term again for the approximation, 4 standard errors, and f32 sums of k terms.
            let k = 4096.0;
            let bias = e.rel_var_w / (2.0 * k);
            let tol = bias + 4.0 * (e.rel_var_w / k / n).sqrt() + k * 6e-8 + 1e-3;
            assert!(
                (m4096[j] - (e.log_px - bias)).abs() <= tol,
                "{what}: IWAE_4096 {} vs log p(x) {} (bias {bias}) ± {tol}",
                m4096[j],
                e.log_px
            );
            // Moderate k lies between, up to noise: ELBO ≤ IWAE_16 ≤ log p(x).
            let noise = 4.0 * (e.var_log_w / n).sqrt();
            assert!(
                m16[j] >= e.elbo - noise && m16[j] <= e.log_px + noise,
                "{what}: IWAE_16 {} outside [ELBO {}, log p {}] ± {noise}",
                m16[j],
                e.elbo,
                e.log_px
            );
        }
    }
}

/// `vae eval` on a freshly trained run: the report's figures are consistent (the bound with
/// k = 64 is above the ELBO on average, the terms add up) and land in RUN/eval.json.
#[test]
fn vae_eval_reports_a_trained_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let vae = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .output()
            .unwrap()
    };
    let run_s = run.to_str().unwrap();
    let train = vae(&[
        "train", "--quiet", "--epochs", "1", "--hidden", "64", "--latent", "8", "--out", run_s,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let out = vae(&["eval", run_s, "--k", "64", "--limit", "100", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let num = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert_eq!(num("examples"), 100.0);
    assert_eq!(num("k"), 64.0);
    assert!(
        ((num("reconstruction_nll") + num("kl")) + num("elbo")).abs() < 1e-6 * num("elbo").abs()
    );
    assert!(num("log_px") > num("elbo"), "{r}");
    assert!(num("log_px") < 0.0 && num("log_px_std_error") > 0.0);
    let kl: Vec<f64> = r["kl_per_dim"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(kl.len(), 8);
    assert!(num("active_units") <= 8.0);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    assert_eq!(saved, r);
    // A directory without a checkpoint is a clear error.
    let bad = vae(&["eval", dir.path().to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("checkpoint.safetensors"));
}

/// A run trained with the IWAE objective is still evaluated on the ELBO (and log p(x)): the
/// reported ELBO is not its training loss, which is the tighter −IWAE_K bound on the same data.
#[test]
fn vae_eval_reports_the_elbo_of_an_iwae_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let vae = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .output()
            .unwrap()
    };
    let train = vae(&[
        "train",
        "--quiet",
        "--epochs",
        "1",
        "--hidden",
        "64",
        "--latent",
        "8",
        "--objective",
        "iwae",
        "--k",
        "4",
        "--out",
        run_s,
    ]);
    assert!(
        train.status.success(),
        "{}",
        String::from_utf8_lossy(&train.stderr)
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let test_iwae = metrics
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|row| row["test_loss"].as_f64())
        .expect("an epoch row with the test loss");
    let out = vae(&["eval", run_s, "--k", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let neg_elbo = -r["elbo"].as_f64().unwrap();
    assert!(
        neg_elbo > test_iwae + 0.1,
        "-ELBO {neg_elbo} should exceed the -IWAE_4 training test loss {test_iwae}"
    );
}

/// A hierarchy's importance-sampled log-likelihood on the device against `cpu::hvae::step`'s
/// IWAE bound with the same noise (regenerated on the CPU from the evaluation's streams: z_1's
/// from stream 0, stage j's from stream j + 1, step = batch stream · 2¹⁶ + chunk); the same
/// model with top-down inference against `cpu::ladder::step`.
#[test]
fn hierarchical_log_likelihood_matches_cpu_reference() {
    for ladder in [false, true] {
        hierarchical_log_likelihood(ladder);
    }
}

fn hierarchical_log_likelihood(ladder: bool) {
    use vae_wgpu::cpu::hvae;
    use vae_wgpu::cpu::philox::StreamPos;
    use vae_wgpu::cpu::sample::normals;
    use vae_wgpu::kernels::iwae::Objective;
    use vae_wgpu::model::Stage;
    let cfg = VaeConfig {
        input: 13,
        hidden: vec![9],
        latent: 4,
        act: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        upper: vec![
            Stage {
                hidden: vec![5],
                latent: 3,
            },
            Stage {
                hidden: vec![],
                latent: 2,
            },
        ],
        conv: None,
        ladder,
    };
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, 5)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let (items, batch, k, seed, stream) = (5usize, 5usize, 7usize, 21u64, 3u32);
    let pixels: Vec<u8> = (0..items * cfg.input)
        .map(|i| ((i * 37) % 256) as u8)
        .collect();
    let x: Vec<f64> = pixels.iter().map(|&b| b as f64 / 255.0).collect();
    let mut eps = Vec::new();
    for (l, &units) in cfg.latents().iter().enumerate() {
        let pos = StreamPos {
            seed,
            step: stream * 0x10000,
            stream: l as u32,
        };
        eps.extend(normals(&pos, k * batch * units));
    }
    let step = if ladder {
        vae_wgpu::cpu::ladder::step
    } else {
        hvae::step
    };
    let want = -step(&cfg, &layout, &p64, &x, &eps, Objective::Iwae, 1.0).total;
    for gpu in all_gpus() {
        let data = DeviceData::bytes(
            upload_pixels(&gpu, "pixels", &pixels).unwrap(),
            items,
            cfg.input,
        );
        let pv = gpu.upload("params", &params).unwrap();
        let graph = IwaeGraph::new(
            &gpu,
            &cfg,
            &pv,
            &data,
            IwaeOptions {
                batch: batch as u32,
                chunk: k as u32,
                seed,
                binarize_seed: None,
            },
        )
        .unwrap();
        let all: Vec<u32> = (0..items as u32).collect();
        let r = graph.run(&gpu, &all, k as u64, stream).unwrap();
        let got: f64 = r.log_px.iter().sum();
        // Log-weights of ~10 nats per row from f32 chains of a few dozen terms: 1e-5 relative.
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{} (ladder: {ladder}): Σ log p(x) {got} vs reference {want}",
            gpu.describe()
        );
        assert_eq!(r.layers.len(), 3);
        for (layer, &units) in r.layers.iter().zip(&cfg.latents()) {
            assert_eq!(layer.kl.len(), items);
            assert_eq!(layer.q_mean.len(), items * units);
            assert!(layer.kl.iter().all(|v| v.is_finite()));
        }
    }
}

/// The pictures' encoder for a ladder gives the posterior mean along the top-down mean path,
/// as `cpu::ladder::posterior_mean` (f32 chains of a few dozen terms: 1e-5 of the scale).
#[test]
fn ladder_pictures_encode_the_top_down_posterior_mean() {
    use vae_wgpu::eval::pictures::Codec;
    use vae_wgpu::model::Stage;
    let cfg = VaeConfig {
        input: 13,
        hidden: vec![9],
        latent: 4,
        act: Activation::Tanh,
        likelihood: Likelihood::Bernoulli,
        upper: vec![
            Stage {
                hidden: vec![5],
                latent: 3,
            },
            Stage {
                hidden: vec![],
                latent: 2,
            },
        ],
        conv: None,
        ladder: true,
    };
    let layout = ParamLayout::new(&cfg);
    let params: Vec<f32> = init_params(&cfg, &layout, 6)
        .iter()
        .map(|v| 2.0 * v)
        .collect();
    let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let items = 5usize;
    let pixels: Vec<u8> = (0..items * cfg.input)
        .map(|i| ((i * 53) % 256) as u8)
        .collect();
    let x: Vec<f64> = pixels.iter().map(|&b| b as f64 / 255.0).collect();
    let want = vae_wgpu::cpu::ladder::posterior_mean(&cfg, &layout, &p64, &x);
    let bottom_up = vae::encode(&cfg, &layout, &p64, &x).0;
    assert!(
        want.iter()
            .zip(&bottom_up)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "the top-down mean should differ from the bottom-up one"
    );
    for gpu in all_gpus() {
        let data = DeviceData::bytes(
            upload_pixels(&gpu, "pixels", &pixels).unwrap(),
            items,
            cfg.input,
        );
        let pv = gpu.upload("params", &params).unwrap();
        let codec = Codec::new(&gpu, &cfg, &pv, &data, 8).unwrap();
        let all: Vec<u32> = (0..items as u32).collect();
        let got = codec.encode(&gpu, &all).unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * scale,
                "{} [{i}]: {g} vs {w}",
                gpu.describe()
            );
        }
    }
}
