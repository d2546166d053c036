//! Kernel variants chosen by timing and cached on disk per adapter (`Gpu::tuned`).

mod common;

use std::cell::Cell;

use common::all_gpus;
use vae_wgpu::gpu::{Gpu, TuneCache};
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::adam::AdamConfig;
use vae_wgpu::kernels::batch::upload_pixels;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::kernels::matmul::MatmulVariant;
use vae_wgpu::model::VaeConfig;
use vae_wgpu::train::graph::GraphOptions;
use vae_wgpu::train::{DeviceData, TrainGraph};

fn gpu_with_cache(path: &std::path::Path) -> Gpu {
    let mut gpu = all_gpus().remove(0);
    gpu.set_tune_cache(TuneCache::at(Some(path.to_path_buf())));
    gpu
}

#[test]
fn the_fastest_candidate_is_chosen_once_and_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("tune.json");
    let gpu = gpu_with_cache(&path);
    let timed = Cell::new(0);
    let times = |name: &str, _: Option<f64>| {
        timed.set(timed.get() + 1);
        Ok(match name {
            "slow" => 2e-3,
            _ => 1e-3,
        })
    };
    assert_eq!(
        gpu.tuned("k 1x2x3", &["slow", "fast"], times).unwrap(),
        "fast"
    );
    // Three rounds over both (neither is 3× behind).
    assert_eq!(timed.get(), 6);
    // In memory: not timed again.
    assert_eq!(
        gpu.tuned("k 1x2x3", &["slow", "fast"], times).unwrap(),
        "fast"
    );
    assert_eq!(timed.get(), 6);
    // On disk: a new process (here a new cache) reads the choice and the timings.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("k 1x2x3") && text.contains("0.002"), "{text}");
    let gpu = gpu_with_cache(&path);
    let never =
        |_: &str, _: Option<f64>| -> vae_wgpu::gpu::Result<f64> { panic!("cached: must not time") };
    assert_eq!(
        gpu.tuned("k 1x2x3", &["slow", "fast"], never).unwrap(),
        "fast"
    );
    // Another shape is another entry.
    assert_eq!(
        gpu.tuned("k 9x9x9", &["slow", "fast"], times).unwrap(),
        "fast"
    );
    assert_eq!(timed.get(), 12);
}

#[test]
fn the_default_keeps_its_place_within_the_noise_margin() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = gpu_with_cache(&dir.path().join("tune.json"));
    let times = |name: &str, _: Option<f64>| Ok(if name == "default" { 1.0 } else { 0.95 });
    assert_eq!(
        gpu.tuned("m", &["default", "other"], times).unwrap(),
        "default"
    );
    let times = |name: &str, _: Option<f64>| Ok(if name == "default" { 1.0 } else { 0.5 });
    assert_eq!(
        gpu.tuned("m2", &["default", "other"], times).unwrap(),
        "other"
    );
}

#[test]
fn a_corrupt_or_stale_cache_is_retuned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.json");
    std::fs::write(&path, b"{ not json").unwrap();
    let gpu = gpu_with_cache(&path);
    let timed = Cell::new(0);
    let times = |name: &str, _: Option<f64>| {
        timed.set(timed.get() + 1);
        Ok(if name == "b" { 1.0 } else { 3.0 })
    };
    assert_eq!(gpu.tuned("x", &["a", "b"], times).unwrap(), "b");
    assert_eq!(timed.get(), 6);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(&text).is_ok(),
        "{text}"
    );
    // A cached choice that is no longer a candidate (a kernel removed) is timed again.
    assert_eq!(gpu.tuned("x", &["a", "c"], times).unwrap(), "a");
    assert_eq!(timed.get(), 12);
    // A new candidate (a kernel added since) is timed too, even though the choice still exists.
    let faster = |name: &str, _: Option<f64>| {
        timed.set(timed.get() + 1);
        Ok(if name == "d" { 0.5 } else { 3.0 })
    };
    // a and c, 6× behind d after the first round, are not timed again: 3 + 2 more of d.
    assert_eq!(gpu.tuned("x", &["a", "c", "d"], faster).unwrap(), "d");
    assert_eq!(timed.get(), 17);
}

#[test]
fn errors_while_timing_are_returned() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = gpu_with_cache(&dir.path().join("tune.json"));
    let gpu_err = |_: &str, _: Option<f64>| -> vae_wgpu::gpu::Result<f64> {
        Err(vae_wgpu::gpu::GpuError::Shape {
            kernel: "k".into(),
            reason: "boom".into(),
        })
    };
    let err = gpu.tuned("e", &["a", "b"], gpu_err).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
}

/// A training graph times every matmul shape it uses and the optimizer, with every variant the
/// adapter can run, and records them.
#[test]
fn a_training_graph_tunes_its_kernels() {
    for gpu in all_gpus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tune.json");
        let mut gpu = gpu;
        gpu.set_tune_cache(TuneCache::at(Some(path.clone())));
        let cfg = VaeConfig {
            input: 300,
            hidden: vec![40],
            latent: 3,
            act: Activation::Relu,
            likelihood: Likelihood::Bernoulli,
            upper: Vec::new(),
            conv: None,
            ladder: false,
        };
        let data = DeviceData::bytes(
            upload_pixels(&gpu, "pixels", &[7u8; 300 * 40]).unwrap(),
            40,
            300,
        );
        let opts = GraphOptions {
            batch: 30,
            adam: AdamConfig::default(),
            seed: 1,
            binarize_seed: None,
            objective: vae_wgpu::kernels::iwae::Objective::Elbo,
            samples: 1,
        };
        TrainGraph::new(&gpu, &cfg, &opts, &data, None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let entries: serde_json::Value = serde_json::from_str(&text).unwrap();
        let entries = entries.as_object().unwrap();
        let variants = MatmulVariant::available(&gpu);
        // x·W1 (NN), its weight gradient (TN), the output layer's input gradient (NT); the
        // products of 2^18 multiply-adds or fewer are not timed (30·40·3 for the latent).
        for shape in [
            "matmul NN 30x40x300",
            "matmul TN 300x40x30",
            "matmul NT 30x40x300",
        ] {
            let found = entries.iter().find(|(k, _)| k.ends_with(shape));
            if variants.len() == 1 {
                assert!(found.is_none(), "{shape}: one variant, nothing to time");
                continue;
            }
            let (_, e) = found.unwrap_or_else(|| panic!("{shape} not tuned: {text}"));
            assert_eq!(
                e["seconds"].as_object().unwrap().len(),
                variants.len(),
                "{e}"
            );
            let choice = e["choice"].as_str().unwrap();
            assert!(variants.iter().any(|v| v.name() == choice), "{e}");
        }
        assert!(
            !entries.keys().any(|k| k.ends_with("30x3x40")),
            "tiny products are not timed: {text}"
        );
        let adam = entries
            .iter()
            .find(|(k, _)| k.contains("| adam "))
            .unwrap_or_else(|| panic!("adam not tuned: {text}"));
        assert_eq!(
            adam.1["seconds"].as_object().unwrap().len(),
            2,
            "{}",
            adam.1
        );
    }
}

/// Two processes that tuned the same shape at once agree on the first one saved.
#[test]
fn the_first_saved_choice_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.json");
    let first = gpu_with_cache(&path);
    let second = gpu_with_cache(&path);
    // `second` loaded the (empty) file before `first` saved its choice.
    assert_eq!(
        first
            .tuned("s", &["a", "b"], |n, _| Ok(if n == "a" {
                1.0
            } else {
                2.0
            }))
            .unwrap(),
        "a"
    );
    assert_eq!(
        second
            .tuned("s", &["a", "b"], |n, _| Ok(if n == "a" {
                2.0
            } else {
                1.0
            }))
            .unwrap(),
        "a"
    );
}

/// Later candidates are told when to stop early: three times the best time so far.
#[test]
fn later_candidates_get_a_give_up_limit() {
    let dir = tempfile::tempdir().unwrap();
    let gpu = gpu_with_cache(&dir.path().join("tune.json"));
    let limits = std::cell::RefCell::new(Vec::new());
    let times = |name: &str, limit: Option<f64>| {
        limits.borrow_mut().push(limit);
        Ok(match name {
            "a" => 2.0,
            "b" => 1.0,
            _ => 10.0,
        })
    };
    assert_eq!(gpu.tuned("g", &["a", "b", "c"], times).unwrap(), "b");
    // Round 1 as the candidates come; then a and b again (c, 10× behind, is dropped).
    let later = vec![Some(3.0); 4];
    assert_eq!(
        *limits.borrow(),
        [vec![None, Some(6.0), Some(3.0)], later].concat()
    );
}
