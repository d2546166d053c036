//! Convolutional VAEs from the command line: the keras-conv preset on the shipped data, and
//! `--conv` on a folder of colour PNGs (train, then every picture command), with bad settings
//! refused by name.

use std::path::Path;
use std::process::{Command, Output};

fn vae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .output()
        .expect("run vae")
}

fn ok(args: &[&str]) -> Output {
    let out = vae(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn config(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|row| row.get("loss").and_then(|v| v.as_f64()))
        .collect()
}

/// `n` RGB pictures of `w`×`h`: a coloured square on a dark ground, its place and colour drawn
/// per picture, written as PNGs into `dir`.
fn colour_folder(dir: &Path, n: usize, w: u32, h: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 12345u64;
    let mut next = |m: u32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % m as u64) as u32
    };
    for i in 0..n {
        let (x0, y0, side) = (next(w / 2), next(h / 2), 3 + next(w / 3));
        let colour = [next(256) as u8, next(256) as u8, next(256) as u8];
        let mut pixels = vec![20u8; (w * h * 3) as usize];
        for y in y0..(y0 + side).min(h) {
            for x in x0..(x0 + side).min(w) {
                let at = ((y * w + x) * 3) as usize;
                pixels[at..at + 3].copy_from_slice(&colour);
            }
        }
        let file = std::fs::File::create(dir.join(format!("{i:03}.png"))).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
    }
}

#[test]
fn keras_conv_preset_is_the_keras_model_and_its_loss_falls() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    // Each step of the full model costs seconds on a software adapter: a few steps only.
    ok(&[
        "train",
        "--quiet",
        "--out",
        run_s,
        "--preset",
        "keras-conv",
        "--max-steps",
        "12",
        "--log-every",
        "3",
    ]);
    let c = config(&run);
    let m = &c["settings"]["model"];
    assert_eq!(
        m["conv"],
        serde_json::json!({"image": [28, 28, 1], "channels": [32, 64], "kernel": 3, "stride": 2}),
        "{m}"
    );
    assert_eq!(m["hidden"], serde_json::json!([16]));
    assert_eq!(m["latent"], 2);
    assert_eq!(c["settings"]["batch"], 128);
    // Measured: 499, 472, 437, 414 (each mean over 3 steps) on lavapipe.
    let l = losses(&run);
    assert_eq!(l.len(), 4, "{l:?}");
    assert!(l.windows(2).all(|w| w[1] < w[0]), "keras-conv: loss {l:?}");
    assert!(l[3] < 0.9 * l[0], "keras-conv: loss {l:?}");
}

#[test]
fn conv_flags_train_on_colour_pictures_and_every_picture_command_runs() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = dir.path().join("squares");
    colour_folder(&pictures, 64, 12, 12);
    let run = dir.path().join("run");
    let (data, run_s) = (pictures.to_str().unwrap(), run.to_str().unwrap());
    ok(&[
        "train",
        "--quiet",
        "--out",
        run_s,
        "--data",
        data,
        "--conv",
        "8,16",
        "--hidden",
        "32",
        "--latent",
        "4",
        "--batch",
        "16",
        "--lr",
        "3e-3",
        "--epochs",
        "40",
        "--log-every",
        "16",
    ]);
    let c = config(&run);
    assert_eq!(
        c["settings"]["model"]["conv"]["image"],
        serde_json::json!([12, 12, 3])
    );
    let l = losses(&run);
    assert!(l.len() >= 8, "{l:?}");
    assert!(l[l.len() - 1] < 0.8 * l[0], "loss {l:?}");
    let out = ok(&["eval", run_s, "--data", data, "--k", "10", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (elbo, log_px) = (r["elbo"].as_f64().unwrap(), r["log_px"].as_f64().unwrap());
    assert!(elbo.is_finite() && log_px > elbo - 1.0, "{r}");
    for (cmd, file) in [
        ("sample", "samples.png"),
        ("reconstruct", "reconstructions.png"),
        ("traverse", "traversal.png"),
        ("interpolate", "interpolation.png"),
    ] {
        ok(&[cmd, run_s]);
        let png = run.join(file);
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!(
            info.color_type,
            png::ColorType::Rgb,
            "{cmd}: colour pictures"
        );
    }
}

#[test]
fn impossible_conv_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = |args: &[&str]| {
        let out = vae(args);
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["train", "--conv", "8", "--conv-kernel", "4"]);
    assert!(e.contains("--conv-kernel must be odd"), "{e}");
    let e = err(&["train", "--conv", "0,8"]);
    assert!(e.contains("--conv channels"), "{e}");
    // 6×5 pictures: stride 2 takes both sides to 3, and no one transposed convolution gives
    // back 6 and 5 alike.
    let odd = dir.path().join("odd");
    colour_folder(&odd, 8, 6, 5);
    let e = err(&[
        "train",
        "--data",
        odd.to_str().unwrap(),
        "--conv",
        "4",
        "--batch",
        "4",
    ]);
    assert!(
        e.contains("cannot map 3x3 back to 5x6") && e.contains("odd"),
        "{e}"
    );
    // A run directory is not created for a refused model.
    let flat = dir.path().join("flat.csv");
    std::fs::write(&flat, "0,1,2,3,4,5,6\n1,2,3,4,5,6,7\n").unwrap();
    let e = err(&[
        "train",
        "--data",
        flat.to_str().unwrap(),
        "--conv",
        "4",
        "--batch",
        "1",
    ]);
    assert!(e.contains("not pictures"), "{e}");
}
