//! Runs of the real `vae train` binary: the same seed gives the same losses, a stopped run resumed
//! from its checkpoint ends bit for bit where an uninterrupted one does, Ctrl-C leaves a resumable
//! checkpoint, and a diverging run stops naming the step without touching the saved checkpoint.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vae_wgpu::train::checkpoint::{self, Checkpoint};

/// A small model so each run takes seconds on a software adapter; dynamic binarization, a KL
/// warm-up and a logging interval that does not divide the stop step exercise every piece of
/// state a resume must restore.
const SMALL: &[&str] = &[
    "--hidden",
    "64",
    "--latent",
    "8",
    "--binarize",
    "dynamic",
    "--kl-warmup",
    "45",
    "--log-every",
    "7",
    "--quiet",
];

fn vae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .output()
        .expect("run vae")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vae failed ({}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn train(out: &Path, extra: &[&str]) -> String {
    ok(vae(&[
        &["train", "--out", out.to_str().unwrap()],
        SMALL,
        extra,
    ]
    .concat()))
}

/// The metrics rows without wall-clock and memory fields.
fn losses(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let row = v.as_object_mut().unwrap();
            for machine_state in [
                "samples_per_s",
                "epoch_seconds",
                "host_rss_bytes",
                "device_buffers",
                "device_buffer_bytes",
            ] {
                row.remove(machine_state);
            }
            v
        })
        .collect()
}

fn load(run: &Path) -> Checkpoint {
    Checkpoint::load(&run.join(checkpoint::FILE)).unwrap()
}

fn same_state(a: &Checkpoint, b: &Checkpoint, what: &str) {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(a.progress, b.progress, "{what}: progress");
    assert!(
        bits(&a.params) == bits(&b.params),
        "{what}: parameters differ"
    );
    assert!(
        bits(&a.exp_avg) == bits(&b.exp_avg),
        "{what}: Adam m1 differs"
    );
    assert!(
        bits(&a.exp_avg_sq) == bits(&b.exp_avg_sq),
        "{what}: Adam m2 differs"
    );
}

#[test]
fn same_seed_is_deterministic_and_resume_is_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a2, b) = (
        dir.path().join("a"),
        dir.path().join("a2"),
        dir.path().join("b"),
    );
    train(&a, &["--epochs", "2"]);
    train(&a2, &["--epochs", "2"]);
    // 32 steps per epoch (31 of 128 and one of the remaining 32 items): stop in the middle of
    // epoch 2 and of a logging interval.
    let stopped = train(&b, &["--epochs", "2", "--max-steps", "40"]);
    assert!(stopped.contains("stopped after step 40"), "{stopped}");
    assert_eq!(load(&b).progress.step, 40);
    assert_eq!(load(&b).progress.steps_into_epoch, 8);
    let resumed = ok(vae(&["train", "--quiet", "--resume", b.to_str().unwrap()]));
    assert!(resumed.contains("resuming"), "{resumed}");

    let reference = losses(&a);
    // Steps that are multiples of 7, each epoch's end, and a summary row per epoch:
    // 7..28 and 32 in epoch 1, 35..63 and 64 in epoch 2.
    assert_eq!(reference.len(), 6 + 7, "rows: {reference:?}");
    assert_eq!(losses(&a2), reference, "same seed, different losses");
    assert_eq!(losses(&b), reference, "resumed run logged other losses");
    same_state(&load(&a), &load(&a2), "same seed");
    same_state(&load(&a), &load(&b), "resumed");

    // A different seed really changes the run (guards against a comparison that cannot fail).
    let c = dir.path().join("c");
    train(&c, &["--epochs", "1", "--seed", "2"]);
    assert_ne!(losses(&c)[0], reference[0]);
}

/// Several steps per submit (their per-step parameters staged and copied in between) give the
/// same run bit for bit as one step per submit: chunks of 5 meet logging points every 7 steps,
/// the epoch's last partial batch (another graph) and a `--max-steps` stop at 40.
#[test]
fn several_steps_per_submit_give_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let (one, five, stopped) = (
        dir.path().join("one"),
        dir.path().join("five"),
        dir.path().join("stopped"),
    );
    // SMALL warms β up over 45 steps and binarizes dynamically: the staged per-step parameters
    // change from step to step within a submit.
    let run = ["--epochs", "2"];
    train(&one, &[&run[..], &["--steps-per-submit", "1"]].concat());
    train(&five, &[&run[..], &["--steps-per-submit", "5"]].concat());
    assert_eq!(
        losses(&five),
        losses(&one),
        "5 steps per submit logged other losses"
    );
    same_state(&load(&one), &load(&five), "5 steps per submit");
    let chunked = ["--steps-per-submit", "3", "--max-steps", "40"];
    let out = train(&stopped, &[&run[..], &chunked].concat());
    assert!(out.contains("stopped after step 40"), "{out}");
    ok(vae(&[
        "train",
        "--quiet",
        "--steps-per-submit",
        "4",
        "--resume",
        stopped.to_str().unwrap(),
    ]));
    same_state(
        &load(&one),
        &load(&stopped),
        "stopped and resumed, 3 and 4 per submit",
    );
}

/// A hierarchy with the IWAE objective resumes bit for bit too: its upper layers' noise, like
/// z_1's, is a function of (seed, step).
#[test]
fn a_hierarchical_iwae_run_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let model = [
        "--stage",
        "16:4",
        "--objective",
        "iwae",
        "--k",
        "2",
        "--epochs",
        "2",
    ];
    train(&a, &model);
    // The interrupted run also records 3 steps per submit: the IWAE weights' and the upper
    // layer's per-step parameters (β) are staged like the rest.
    let chunked = ["--max-steps", "40", "--steps-per-submit", "3"];
    train(&b, &[&model[..], &chunked].concat());
    assert_eq!(load(&b).progress.step, 40);
    ok(vae(&["train", "--quiet", "--resume", b.to_str().unwrap()]));
    assert_eq!(losses(&b), losses(&a), "resumed run logged other losses");
    same_state(
        &load(&a),
        &load(&b),
        "resumed hierarchy, 3 steps per submit",
    );
    assert_eq!(load(&a).settings.model.upper.len(), 1);
}

#[cfg(unix)]
#[test]
fn ctrl_c_and_sigterm_write_a_checkpoint_that_resumes() {
    for signal in ["INT", "TERM"] {
        interrupt_and_resume(signal);
    }
}

#[cfg(unix)]
fn interrupt_and_resume(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args([&["train", "--out", run.to_str().unwrap()], SMALL].concat())
        .args(["--epochs", "1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way (two logged intervals of 7 steps), then interrupt.
    let started = Instant::now();
    loop {
        let rows = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|m| m.lines().count())
            .unwrap_or(0);
        if rows >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "training never started"
        );
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("vae exited early: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second trainer on the same run directory is refused while the first holds it.
    let second = vae(&[
        &["train", "--out", run.to_str().unwrap(), "--overwrite"],
        SMALL,
    ]
    .concat());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second trainer was let in");
    assert!(
        stderr.contains("is in use by another `vae train`")
            && stderr.contains(&child.id().to_string()),
        "{stderr}"
    );
    let sig = if signal == "INT" {
        libc::SIGINT
    } else {
        libc::SIGTERM
    };
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "SIG{signal}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("checkpoint written"), "{stdout}");
    let saved = load(&run);
    assert!(saved.progress.step >= 14, "{:?}", saved.progress);
    let target = (saved.progress.epochs_done + 1).to_string();
    let resumed = ok(vae(&[
        "train",
        "--quiet",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        &target,
    ]));
    assert!(resumed.contains("run written"), "{resumed}");
    let done = load(&run);
    assert_eq!(done.progress.epochs_done.to_string(), target);
    assert_eq!(done.progress.steps_into_epoch, 0);
}

#[test]
fn divergence_names_the_step_and_leaves_the_checkpoint_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, &["--epochs", "1"]);
    let before = std::fs::read(run.join(checkpoint::FILE)).unwrap();
    // Adam moves every parameter by ~lr on the first step, so with lr = 1e38 the second step's
    // forward pass overflows: the loss of step 2 is the first non-finite one.
    let out = vae(&[
        &["train", "--out", run.to_str().unwrap(), "--overwrite"],
        SMALL,
        &["--epochs", "1", "--lr", "1e38"],
    ]
    .concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in [
        "training diverged",
        "at step 2 (epoch 1)",
        "non-finite tensors now: parameters enc.0.weight",
        "was not touched",
    ] {
        assert!(stderr.contains(needle), "expected `{needle}` in {stderr}");
    }
    let after = std::fs::read(run.join(checkpoint::FILE)).unwrap();
    assert!(before == after, "the saved checkpoint changed");
}
