//! A writer killed with SIGKILL at an arbitrary moment (mid-write, mid-fsync, mid-rename) never
//! leaves a torn checkpoint: the file always loads and holds one of the complete versions.
//!
//! The test re-runs itself as the writer (told so by an environment variable), which saves two
//! alternating checkpoints as fast as it can while the parent kills it after varying delays.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vae_wgpu::train::checkpoint::{self, Checkpoint};

const DIR_VAR: &str = "VAE_KILL_TEST_DIR";

/// The reference model's size (7.8 MB per file), so a write takes long enough to be hit.
fn version(k: u64) -> Checkpoint {
    let scale = [1.0, 0.5, 0.25];
    common::mlp_checkpoint(784, 400, 20, k as usize, |kind, i| {
        scale[kind] * k as f32 * (i % 1000) as f32
    })
}

/// The child's part: write the two versions alternately until killed.
fn write_forever(dir: &str) -> ! {
    let path = Path::new(dir).join(checkpoint::FILE);
    let versions = [version(1), version(2)];
    for i in 0.. {
        versions[i % 2].save(&path).unwrap();
    }
    unreachable!("killed by the parent")
}

#[test]
fn kill_9_never_leaves_a_torn_checkpoint() {
    if let Ok(dir) = std::env::var(DIR_VAR) {
        write_forever(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(checkpoint::FILE);
    let versions = [version(1), version(2)];
    let mut seen = [0usize; 2];
    for round in 0..12u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_9_never_leaves_a_torn_checkpoint"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first complete file, then let the writer run a varying while.
        let started = Instant::now();
        while !path.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the writer never wrote"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(7 + 23 * (round % 5) + 3 * round));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let got = Checkpoint::load(&path)
            .unwrap_or_else(|e| panic!("round {round}: a torn checkpoint after kill -9: {e}"));
        let k = versions
            .iter()
            .position(|v| *v == got)
            .unwrap_or_else(|| panic!("round {round}: the checkpoint is neither version"));
        seen[k] += 1;
    }
    eprintln!(
        "after 12 kills the checkpoint was version 1 {} times, version 2 {} times",
        seen[0], seen[1]
    );
    // Saving again clears what killed writers left behind.
    versions[0].save(&path).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "stale temporaries: {left:?}");
}
