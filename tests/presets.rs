//! The paper presets: what each sets, the IWAE learning-rate schedule, and a CI-sized run of
//! each on the shipped data whose loss falls.

use std::process::Command;

use vae_wgpu::train::LrSchedule;

#[test]
fn the_iwae_schedule_has_the_papers_stages() {
    let full = LrSchedule::Iwae { scale: 1.0 };
    assert_eq!(full.stages(), vec![1, 3, 9, 27, 81, 243, 729, 2187]);
    assert_eq!(full.total_epochs(), Some(3280));
    // 1e-3·10^(−i/7) in stage i: epoch 1 is stage 0, epochs 2..4 stage 1, 3280 stage 7.
    assert_eq!(full.factor(1), 1.0);
    assert!((full.factor(2) - 10f64.powf(-1.0 / 7.0)).abs() < 1e-15);
    assert!((full.factor(4) - 10f64.powf(-1.0 / 7.0)).abs() < 1e-15);
    assert!((full.factor(5) - 10f64.powf(-2.0 / 7.0)).abs() < 1e-15);
    assert_eq!(full.factor(3280), 10f64.powf(-1.0));
    assert_eq!(
        full.factor(3280),
        full.factor(9999),
        "the last stage continues"
    );
    // Scaled: every stage at least one epoch, proportions kept.
    let short = LrSchedule::Iwae { scale: 0.01 };
    assert_eq!(short.stages(), vec![1, 1, 1, 1, 1, 2, 7, 22]);
    assert_eq!(short.total_epochs(), Some(36));
    assert_eq!(LrSchedule::Constant.factor(7), 1.0);
    assert_eq!(LrSchedule::Constant.total_epochs(), None);
}

fn train(dir: &std::path::Path, args: &[&str]) -> (serde_json::Value, Vec<f64>) {
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["train", "--quiet", "--out"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run vae");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let losses = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|row| row.get("loss").and_then(|v| v.as_f64()))
        .collect();
    (config, losses)
}

fn assert_falls(what: &str, losses: &[f64]) {
    assert!(losses.len() >= 4, "{what}: {losses:?}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.8 * first, "{what}: loss {first} -> {last}");
}

#[test]
fn iwae_1layer_preset_sets_the_papers_model_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (config, losses) = train(
        &run,
        &[
            "--preset",
            "iwae-1layer",
            "--schedule-scale",
            "0.001",
            "--objective",
            "iwae",
            "--k",
            "5",
            "--max-steps",
            "300",
            "--log-every",
            "30",
        ],
    );
    let s = &config["settings"];
    assert_eq!(s["model"]["hidden"], serde_json::json!([200, 200]), "{s}");
    assert_eq!(s["model"]["latent"], 50);
    assert_eq!(s["model"]["act"], "tanh");
    assert_eq!(s["batch"], 20);
    assert_eq!(s["binarize"], "dynamic");
    assert_eq!(s["adam"]["eps"], 1e-4);
    assert_eq!(s["objective"], "iwae");
    assert_eq!(s["samples"], 5);
    assert_eq!(
        s["lr_schedule"],
        serde_json::json!({"kind": "iwae", "scale": 0.001})
    );
    // Stages of round(3^i·0.001) epochs, at least one: 1 × 7 and 2 (3^7·0.001 = 2.187).
    assert_eq!(s["epochs"], 9);
    assert_falls("iwae-1layer", &losses);
}

/// The two-stochastic-layer model trains with either objective; its run evaluates per layer and
/// samples top-down.
#[test]
fn iwae_2layer_preset_sets_the_papers_model_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    for objective in ["elbo", "iwae"] {
        let run = dir.path().join(objective);
        let (config, losses) = train(
            &run,
            &[
                "--preset",
                "iwae-2layer",
                "--schedule-scale",
                "0.001",
                "--objective",
                objective,
                "--k",
                "3",
                "--max-steps",
                "300",
                "--log-every",
                "30",
            ],
        );
        let m = &config["settings"]["model"];
        assert_eq!(m["hidden"], serde_json::json!([200, 200]), "{m}");
        assert_eq!(m["latent"], 100);
        assert_eq!(
            m["upper"],
            serde_json::json!([{"hidden": [100, 100], "latent": 50}])
        );
        assert_eq!(m["act"], "tanh");
        assert_eq!(config["settings"]["batch"], 20);
        assert_falls(&format!("iwae-2layer {objective}"), &losses);
    }
    let run = dir.path().join("iwae");
    let vae = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .output()
            .unwrap()
    };
    let run_s = run.to_str().unwrap();
    let out = vae(&["eval", run_s, "--k", "20", "--limit", "60", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = r["layers"].as_array().expect("per-layer statistics");
    assert_eq!(layers.len(), 2, "{r}");
    for (layer, units) in layers.iter().zip([100, 50]) {
        assert_eq!(layer["latent"], units);
        let active = layer["active_units"].as_u64().unwrap();
        assert!(active <= units, "{layer}");
        assert!(layer["kl"].as_f64().unwrap().is_finite(), "{layer}");
    }
    assert!(
        r["log_px"].as_f64().unwrap() > r["elbo"].as_f64().unwrap() - 1.0,
        "{r}"
    );
    let out = vae(&["sample", run_s, "--n", "9"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("samples.png").exists());
}

/// `--stage` builds the hierarchy; malformed values are refused by name.
#[test]
fn stage_flags_build_a_hierarchy() {
    use vae_wgpu::model::Stage;
    let parse_stage = |s: &str| s.parse::<Stage>();
    assert_eq!(
        parse_stage("100,100:50"),
        Ok(Stage {
            hidden: vec![100, 100],
            latent: 50
        })
    );
    assert_eq!(
        parse_stage(":7"),
        Ok(Stage {
            hidden: vec![],
            latent: 7
        })
    );
    for bad in ["50", "100:0", "a:5", "10,,5:3", "10:"] {
        let err = parse_stage(bad).expect_err(bad);
        assert!(err.contains(bad), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["train", "--stage", "100:x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stage"));
}

#[test]
fn pytorch_example_preset_is_the_reference_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (config, losses) = train(
        &run,
        &[
            "--preset",
            "pytorch-example",
            "--max-steps",
            "150",
            "--log-every",
            "15",
        ],
    );
    let s = &config["settings"];
    assert_eq!(s["model"]["hidden"], serde_json::json!([400]), "{s}");
    assert_eq!(s["model"]["latent"], 20);
    assert_eq!(s["model"]["act"], "relu");
    assert_eq!(s["batch"], 128);
    assert_eq!(s["adam"]["lr"], 1e-3);
    assert_eq!(s["epochs"], 10);
    assert_falls("pytorch-example", &losses);
}

#[test]
fn a_preset_refuses_flags_it_defines() {
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["train", "--preset", "iwae-1layer", "--hidden", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--hidden") && err.contains("--preset"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["train", "--schedule-scale", "0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "--schedule-scale needs a preset");
}

#[test]
fn bench_runs_a_preset() {
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args([
            "bench",
            "--preset",
            "iwae-1layer",
            "--objective",
            "iwae",
            "--k",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(r["model"], "784-200-200-50", "{r}");
    assert_eq!(r["objective"], "-IWAE(k=2)");
    assert_eq!(r["batch"], 20);
    assert!(r["samples_per_s"].as_f64().unwrap() > 0.0);
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(["bench", "--preset", "iwae-1layer", "--batch", "7"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a preset fixes the batch");
}

/// `--ladder` trains a hierarchy with top-down inference from the command line, evaluates with
/// per-layer statistics and samples; without a stage it is refused.
#[test]
fn ladder_flag_trains_a_top_down_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("ladder");
    let (config, losses) = train(
        &run,
        &[
            "--hidden",
            "128",
            "--latent",
            "16",
            "--stage",
            "64:8",
            "--ladder",
            "--activation",
            "tanh",
            "--objective",
            "iwae",
            "--k",
            "3",
            "--batch",
            "32",
            "--max-steps",
            "240",
            "--log-every",
            "30",
        ],
    );
    let m = &config["settings"]["model"];
    assert_eq!(m["ladder"], true, "{m}");
    assert_falls("ladder", &losses);
    let run_s = run.to_str().unwrap();
    let vae = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vae"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = vae(&["eval", run_s, "--k", "20", "--limit", "60", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["layers"].as_array().map(Vec::len), Some(2), "{r}");
    assert!(
        r["log_px"].as_f64().unwrap() > r["elbo"].as_f64().unwrap() - 1.0,
        "{r}"
    );
    for cmd in ["sample", "reconstruct"] {
        let out = vae(&[cmd, run_s]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = vae(&["train", "--ladder", "--max-steps", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ladder needs a hierarchy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
