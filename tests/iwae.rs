//! The importance-weighted bound's kernels against the f64 reference: log-weights per row, and
//! the streaming log-sum-exp over chunks of different sizes, including chunks whose weights are
//! far above or below everything seen before.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::iwae as cpu;
use vae_wgpu::gpu::Gpu;
use vae_wgpu::kernels::iwae::{IwaeBuffers, IwaeKernels, IwaeShape, finish, initial_state};

/// One chunk's inputs, rows s·B + b.
struct Chunk {
    rec: Vec<f32>,
    z: Vec<f32>,
    eps: Vec<f32>,
}

fn chunk(rng: &mut Lcg, samples: usize, batch: usize, latent: usize, rec: (f64, f64)) -> Chunk {
    let rows = samples * batch;
    Chunk {
        rec: rng.vec(rows, rec.0, rec.1),
        z: rng.vec(rows * latent, -4.0, 4.0),
        eps: rng.vec(rows * latent, -4.0, 4.0),
    }
}

/// Runs the chunks through the kernels; returns each chunk's log-weights and the final state.
fn run(gpu: &Gpu, chunks: &[Chunk], logvar: &[f32], batch: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    let kernels = IwaeKernels::new(gpu, false).unwrap();
    let latent = logvar.len() / batch;
    let state = gpu.upload("state", &initial_state(batch)).unwrap();
    let lv = gpu.upload("logvar", logvar).unwrap();
    let mut weights = Vec::new();
    for c in chunks {
        let samples = c.rec.len() / batch;
        let (rec, z, eps) = (
            gpu.upload("rec", &c.rec).unwrap(),
            gpu.upload("z", &c.z).unwrap(),
            gpu.upload("eps", &c.eps).unwrap(),
        );
        let log_w = gpu.zeros("log_w", c.rec.len() as u64).unwrap();
        let shape = IwaeShape {
            batch: batch as u32,
            samples: samples as u32,
            latent: latent as u32,
        };
        let bufs = IwaeBuffers {
            rec: &rec,
            z: &z,
            eps: &eps,
            logvar: &lv,
            log_w: &log_w,
            state: &state,
        };
        let d = kernels.bind(gpu, shape, &bufs).unwrap();
        gpu.run(&d.dispatches()).unwrap();
        weights.push(gpu.read(&log_w).unwrap());
    }
    (weights, gpu.read(&state).unwrap())
}

/// Bound on |log w| rounding: 3L + 2 roundings (two squares and three additions per latent,
/// the subtraction of rec) on magnitudes up to |rec| + ½ Σ (ε² + |logσ²| + z²).
fn log_w_tol(c: &Chunk, logvar: &[f32], batch: usize, r: usize) -> f64 {
    let latent = logvar.len() / batch;
    let b = r % batch;
    let mag: f64 = (0..latent)
        .map(|l| {
            let (z, e) = (c.z[r * latent + l] as f64, c.eps[r * latent + l] as f64);
            e * e + (logvar[b * latent + l] as f64).abs() + z * z
        })
        .sum::<f64>()
        * 0.5
        + (c.rec[r] as f64).abs();
    (3 * latent + 2) as f64 * U32 * mag
}

#[test]
fn streamed_bound_matches_reference_across_uneven_chunks() {
    let (batch, latent) = (7usize, 5usize);
    let mut rng = Lcg(41);
    let logvar = rng.vec(batch * latent, -6.0, 3.0);
    // Chunks of 3, 10 and 1 samples: ordinary weights, then weights far above (the running
    // maximum jumps, the old sum is rescaled by e^-1000 → 0), then far below.
    let chunks = vec![
        chunk(&mut rng, 3, batch, latent, (100.0, 300.0)),
        chunk(&mut rng, 10, batch, latent, (-800.0, -700.0)),
        chunk(&mut rng, 1, batch, latent, (1.0e4, 2.0e4)),
    ];
    let lv64 = to_f64(&logvar);
    for gpu in all_gpus() {
        let (weights, state) = run(&gpu, &chunks, &logvar, batch);
        let (mut all_w, mut all_tol) = (Vec::new(), Vec::new());
        for (i, (c, got)) in chunks.iter().zip(&weights).enumerate() {
            let want = cpu::log_weights(
                &to_f64(&c.rec),
                &to_f64(&c.z),
                &to_f64(&c.eps),
                &lv64,
                batch,
            );
            assert_close(
                &format!("log w chunk {i} on {}", gpu.describe()),
                got,
                &want,
                |r| log_w_tol(c, &logvar, batch, r),
            );
            all_tol.extend((0..want.len()).map(|r| log_w_tol(c, &logvar, batch, r)));
            all_w.extend(want);
        }
        let total = all_w.len() / batch;
        let want = cpu::bound(&all_w, batch);
        let got: Vec<f32> = finish(&state, total as u64)
            .iter()
            .map(|&v| v as f32)
            .collect();
        // Each term's error reaches the bound weighted by its share w_k / Σ w: its log-weight
        // error δ_k, and exp()'s (3 + 2|x|) ulp (2u each) at x = log w − max ≤ 0; the f32 sums
        // and the rescaling add (K + 8)u; the result is rounded to f32 for comparison.
        let tol = |b: usize| {
            let rows: Vec<usize> = (b..all_w.len()).step_by(batch).collect();
            let m = rows
                .iter()
                .map(|&r| all_w[r])
                .fold(f64::NEG_INFINITY, f64::max);
            let (num, den) = rows.iter().fold((0.0, 0.0), |(n, d), &r| {
                let x = all_w[r] - m;
                let e = x.exp();
                (
                    n + e * (all_tol[r] + 2.0 * (3.0 + 2.0 * x.abs()) * U32),
                    d + e,
                )
            });
            num / den + (total as f64 + 8.0) * U32 + U32 * want[b].abs()
        };
        assert_close(
            &format!("IWAE bound K={total} on {}", gpu.describe()),
            &got,
            &want,
            tol,
        );
    }
}

/// With one sample the bound is that sample's log-weight exactly: m = log w, s = 1.
#[test]
fn one_sample_bound_is_the_log_weight() {
    let (batch, latent) = (130usize, 3usize);
    let mut rng = Lcg(7);
    let logvar = rng.vec(batch * latent, -2.0, 2.0);
    let c = chunk(&mut rng, 1, batch, latent, (0.0, 500.0));
    for gpu in all_gpus() {
        let (weights, state) = run(&gpu, std::slice::from_ref(&c), &logvar, batch);
        let bound = finish(&state, 1);
        for b in 0..batch {
            assert_eq!(
                bound[b],
                weights[0][b] as f64,
                "example {b} on {}",
                gpu.describe()
            );
        }
    }
}
