//! The ladder posterior (`shaders/ladder.wgsl`): the f64 twins against central finite
//! differences and closed-form cases, and the GPU kernels against the twins on lengths that are
//! not multiples of the 256-element workgroup and on edge values: equal variances, one side's
//! variance 10¹³ times the other's (logσ² = ±15), logσ² = −30 and +30 (precisions that overflow
//! f32 if formed), |μ̂ − μ_p| = 10³, zeros.
//!
//! Tolerances from WGSL's bounds (u = 2⁻²⁴; +, −, × correctly rounded; exp(a) within 3 + 2|a|
//! ulp, i.e. (6 + 4|a|)u relative): the weights w = sigmoid(−d), 1 − w = sigmoid(d) and
//! softplus(d), d = logσ̂² − logσ²_p, each carry one exp, so each is within c = (14 + 4|d|)u
//! relative (softplus: c absolute, plus u·max(d, 0)); an output that is a sum of terms with one
//! or two such factors is within c (one) or 2c (two) of the sum of its terms' magnitudes. An
//! accumulated output is a sum of three terms (what it held and two new ones), which the
//! compiler may associate in any order: γ₂ ≤ 2u of the three magnitudes more.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::ladder::{combine, combine_grads};
use vae_wgpu::kernels::ladder::{LadderGrads, LadderInputs, LadderKernels};

#[test]
fn twins_match_finite_differences_and_closed_forms() {
    // L = Σ G1·μ_q + G2·logσ²_q; h = 1e-6 in f64: truncation ~h²·|L'''| and rounding
    // ~1e-16·|L|/h stay below 1e-8 for these values, against a tolerance of 1e-6·(1 + |fd|).
    let mut rng = Lcg(5);
    let n = 40;
    let v = |rng: &mut Lcg, lo, hi| -> Vec<f64> { (0..n).map(|_| rng.uniform(lo, hi)).collect() };
    let (mu_hat, lv_hat, mu_p, lv_p) = (
        v(&mut rng, -2.0, 2.0),
        v(&mut rng, -3.0, 3.0),
        v(&mut rng, -2.0, 2.0),
        v(&mut rng, -3.0, 3.0),
    );
    let (g1, g2) = (v(&mut rng, -1.0, 1.0), v(&mut rng, -1.0, 1.0));
    let loss = |a: &[f64], b: &[f64], c: &[f64], d: &[f64]| {
        let (m, l) = combine(a, b, c, d);
        (0..n).map(|i| g1[i] * m[i] + g2[i] * l[i]).sum::<f64>()
    };
    let g = combine_grads(&mu_hat, &lv_hat, &mu_p, &lv_p, &g1, &g2);
    let h = 1e-6;
    let inputs = [&mu_hat, &lv_hat, &mu_p, &lv_p];
    let analytic = [&g.mu_hat, &g.lv_hat, &g.mu_p, &g.lv_p];
    for (k, name) in ["mu_hat", "lv_hat", "mu_p", "lv_p"].iter().enumerate() {
        for i in 0..n {
            let at = |delta: f64| {
                let mut vs: Vec<Vec<f64>> = inputs.iter().map(|v| v.to_vec()).collect();
                vs[k][i] += delta;
                loss(&vs[0], &vs[1], &vs[2], &vs[3])
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let an = analytic[k][i];
            assert!(
                (fd - an).abs() <= 1e-6 * (1.0 + fd.abs()),
                "d/d{name}[{i}]: analytic {an} vs finite difference {fd}"
            );
        }
    }
    // Equal variances: the mean of the means, half the variance.
    let (m, l) = combine(&[1.0], &[0.3], &[3.0], &[0.3]);
    assert!((m[0] - 2.0).abs() < 1e-15 && (l[0] - (0.3 - 2f64.ln())).abs() < 1e-15);
    // A prior 10¹³ times wider leaves the bottom-up Gaussian, and vice versa; no overflow at
    // precisions of e^{±30}.
    let (m, l) = combine(&[1.0, 1.0], &[-15.0, 30.0], &[5.0, 5.0], &[15.0, -30.0]);
    assert!(
        (m[0] - 1.0).abs() < 1e-12 && (l[0] + 15.0).abs() < 1e-12,
        "{m:?} {l:?}"
    );
    assert!(
        (m[1] - 5.0).abs() < 1e-12 && (l[1] + 30.0).abs() < 1e-12,
        "{m:?} {l:?}"
    );
}

/// f32 values: one of `edges` a third of the time, else uniform in (lo, hi).
fn values(rng: &mut Lcg, n: usize, (lo, hi): (f64, f64), edges: &[f32]) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.next_f64() < 1.0 / 3.0 {
                edges[(rng.next_f64() * edges.len() as f64) as usize % edges.len()]
            } else {
                rng.uniform(lo, hi) as f32
            }
        })
        .collect()
}

#[test]
fn gpu_matches_the_twins_on_odd_lengths_and_edge_values() {
    for gpu in all_gpus() {
        let kernels = LadderKernels::new(&gpu).unwrap();
        let mut worst = 0.0f64;
        for (case, n) in [1usize, 67, 1000].into_iter().enumerate() {
            let mut rng = Lcg(70 + case as u64);
            let mu_hat = values(&mut rng, n, (-3.0, 3.0), &[0.0, 1e3, -1e3]);
            let lv_hat = values(&mut rng, n, (-4.0, 4.0), &[-30.0, -15.0, 15.0, 30.0, 0.5]);
            let mu_p = values(&mut rng, n, (-3.0, 3.0), &[0.0, 1e3]);
            let lv_p = values(&mut rng, n, (-4.0, 4.0), &[-30.0, 15.0, -15.0, 0.5]);
            let d_mu_q = values(&mut rng, n, (-2.0, 2.0), &[0.0]);
            let d_lv_q = values(&mut rng, n, (-2.0, 2.0), &[0.0]);
            let (p0_mu, p0_lv) = (rng.vec(n, -1.0, 1.0), rng.vec(n, -1.0, 1.0));
            let up = |name, v: &[f32]| gpu.upload(name, v).unwrap();
            let inputs = (
                up("mu_hat", &mu_hat),
                up("lv_hat", &lv_hat),
                up("mu_p", &mu_p),
                up("lv_p", &lv_p),
            );
            let ins = LadderInputs {
                mu_hat: &inputs.0,
                lv_hat: &inputs.1,
                mu_p: &inputs.2,
                lv_p: &inputs.3,
            };
            let garbage = vec![7.0f32; n];
            let (mu_q, lv_q) = (up("mu_q", &garbage), up("lv_q", &garbage));
            let (dmq, dlq) = (up("d_mu_q", &d_mu_q), up("d_lv_q", &d_lv_q));
            let (dmh, dlh) = (up("d_mu_hat", &garbage), up("d_lv_hat", &garbage));
            let (dmp, dlp) = (up("d_mu_p", &p0_mu), up("d_lv_p", &p0_lv));
            let c = kernels.combine(&gpu, n as u64, &ins, &mu_q, &lv_q).unwrap();
            let grads = LadderGrads {
                d_mu_q: &dmq,
                d_lv_q: &dlq,
                d_mu_hat: &dmh,
                d_lv_hat: &dlh,
                d_mu_p: &dmp,
                d_lv_p: &dlp,
            };
            let [gh, gp] = kernels.grads(&gpu, n as u64, &ins, &grads).unwrap();
            gpu.run(&[&c, &gh, &gp]).unwrap();

            let f = |v: &[f32]| to_f64(v);
            let (mh, lh, mp, lp) = (f(&mu_hat), f(&lv_hat), f(&mu_p), f(&lv_p));
            let (want_mu, want_lv) = combine(&mh, &lh, &mp, &lp);
            let g = combine_grads(&mh, &lh, &mp, &lp, &f(&d_mu_q), &f(&d_lv_q));
            let d = |i: usize| lh[i] - lp[i];
            let c1 = |i: usize| (14.0 + 4.0 * d(i).abs()) * U32;
            // w and 1 − w from the twin's precisions.
            let w = |i: usize| 1.0 / (1.0 + d(i).exp());
            let wp = |i: usize| 1.0 / (1.0 + (-d(i)).exp());
            let cross = |i: usize| (w(i) * wp(i) * (mh[i] - mp[i]) * d_mu_q[i] as f64).abs();
            let read = |v| gpu.read::<f32>(v).unwrap();
            let name = format!("n={n} on {}", gpu.describe());
            let tol = |i: usize| c1(i) * (w(i) * mh[i].abs() + wp(i) * mp[i].abs());
            worst = worst.max(assert_close(
                &format!("{name} mu_q"),
                &read(&mu_q),
                &want_mu,
                tol,
            ));
            let tol = |i: usize| c1(i) * (lh[i].abs() + d(i).abs() + 1.0);
            worst = worst.max(assert_close(
                &format!("{name} lv_q"),
                &read(&lv_q),
                &want_lv,
                tol,
            ));
            let tol = |i: usize| c1(i) * w(i) * (d_mu_q[i] as f64).abs();
            worst = worst.max(assert_close(
                &format!("{name} d_mu_hat"),
                &read(&dmh),
                &g.mu_hat,
                tol,
            ));
            let tol = |i: usize| c1(i) * w(i) * (d_lv_q[i] as f64).abs() + 2.0 * c1(i) * cross(i);
            worst = worst.max(assert_close(
                &format!("{name} d_lv_hat"),
                &read(&dlh),
                &g.lv_hat,
                tol,
            ));
            let added = |new: &[f64], old: &[f32]| -> Vec<f64> {
                new.iter().zip(old).map(|(a, &b)| a + b as f64).collect()
            };
            let want = added(&g.mu_p, &p0_mu);
            let tol = |i: usize| {
                let new = wp(i) * (d_mu_q[i] as f64).abs();
                c1(i) * new + 2.0 * U32 * (new + (p0_mu[i] as f64).abs())
            };
            worst = worst.max(assert_close(
                &format!("{name} d_mu_p (added)"),
                &read(&dmp),
                &want,
                tol,
            ));
            let want = added(&g.lv_p, &p0_lv);
            let tol = |i: usize| {
                let new = wp(i) * (d_lv_q[i] as f64).abs() + cross(i);
                c1(i) * new + c1(i) * cross(i) + 2.0 * U32 * (new + (p0_lv[i] as f64).abs())
            };
            worst = worst.max(assert_close(
                &format!("{name} d_lv_p (added)"),
                &read(&dlp),
                &want,
                tol,
            ));
        }
        eprintln!("{}: worst err/tol {worst:.3}", gpu.describe());
    }
}

#[test]
fn a_mismatched_or_aliased_buffer_is_an_error_that_names_it() {
    let gpu = &all_gpus()[0];
    let kernels = LadderKernels::new(gpu).unwrap();
    let z = |name, n: u64| gpu.zeros(name, n).unwrap();
    let (a, b, c, d) = (z("a", 8), z("b", 8), z("c", 8), z("short", 5));
    let ins = LadderInputs {
        mu_hat: &a,
        lv_hat: &b,
        mu_p: &c,
        lv_p: &d,
    };
    let (o1, o2) = (z("o1", 8), z("o2", 8));
    let e = kernels
        .combine(gpu, 8, &ins, &o1, &o2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lv_p"), "{e}");
    let ins = LadderInputs { lv_p: &c, ..ins };
    let e = kernels
        .combine(gpu, 8, &ins, &a, &o2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mu_q") && e.contains("mu_hat"), "{e}");
    // Two outputs may be disjoint ranges of one buffer (at 256-byte offsets), not overlapping
    // ones.
    let both = z("both", 72);
    let (lo, hi, mid) = (both.slice(0, 8), both.slice(64, 8), both.slice(4, 8));
    assert!(kernels.combine(gpu, 8, &ins, &lo, &hi).is_ok());
    let e = kernels
        .combine(gpu, 8, &ins, &lo, &mid)
        .unwrap_err()
        .to_string();
    assert!(e.contains("overlap"), "{e}");
}
