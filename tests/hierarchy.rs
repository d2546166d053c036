//! The upper-stage latent terms of a hierarchical VAE (`shaders/hierarchy.wgsl`) against their
//! f64 twins in `cpu::hvae`, on row counts that are not multiples of the 64-row workgroup and on
//! edge values: z = 0, |z − μ_p| = 10³, tiny and large variances (logσ² = ±20, q's −30), ε = 0.
//! The twins themselves are checked through `cpu::hvae::step` against finite differences
//! (tests/vae_reference.rs), and the whole device graph against that step (tests/train_step.rs).
//!
//! Tolerances from WGSL's bounds (u = 2⁻²⁴; +, −, × correctly rounded; exp(a) within
//! 3 + 2|a| ulp, i.e. (6 + 4|a|)u relative): every element is a handful of products around one
//! exp, so its error is at most its terms' magnitudes times (14 + 4|a|)u; a row's sum of n such
//! terms adds γ_n = n·u of the sum of their magnitudes.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::hvae::{self, StageRef};
use vae_wgpu::gpu::{Gpu, View};
use vae_wgpu::kernels::hierarchy::{HierarchyKernels, StageGrads, StageShape, StageValues};

struct Case {
    rows: usize,
    latent: usize,
    below: usize,
    top: bool,
    add: bool,
}

/// f32 test values: a value from `edges` one time in three, else uniform in (lo, hi).
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

struct Data {
    eps: Vec<f32>,
    q_logvar: Vec<f32>,
    z: Vec<f32>,
    z_below: Vec<f32>,
    p_mu: Vec<f32>,
    p_logvar: Vec<f32>,
    weights: Vec<f32>,
    /// What `terms` and `dz_below` hold before the dispatch (used when adding).
    terms0: Vec<f32>,
    dz_below0: Vec<f32>,
    dz: Vec<f32>,
}

fn data(c: &Case, seed: u64) -> Data {
    let mut rng = Lcg(seed);
    let (nl, nb) = (c.rows * c.latent, c.rows * c.below);
    Data {
        eps: values(&mut rng, nl, (-3.0, 3.0), &[0.0, 4.5, -4.5]),
        q_logvar: values(&mut rng, nl, (-4.0, 2.0), &[-30.0, -20.0, 8.0]),
        z: values(&mut rng, nl, (-3.0, 3.0), &[0.0, 1e3, -1e3]),
        z_below: values(&mut rng, nb, (-3.0, 3.0), &[0.0, 1e3, -1e3]),
        p_mu: values(&mut rng, nb, (-3.0, 3.0), &[0.0, 1.0]),
        p_logvar: values(&mut rng, nb, (-4.0, 4.0), &[-20.0, 20.0, 0.0]),
        weights: rng.vec(c.rows, 0.0, 1.0),
        terms0: rng.vec(c.rows, -50.0, 50.0),
        dz_below0: rng.vec(nb, -2.0, 2.0),
        dz: rng.vec(nl, -2.0, 2.0),
    }
}

fn up(gpu: &Gpu, v: &[f32]) -> View {
    gpu.upload("hierarchy.test", v).unwrap()
}

fn check(gpu: &Gpu, c: &Case, seed: u64) {
    let beta = 0.8f32;
    let d = data(c, seed);
    let name = format!(
        "rows {} L {} Lb {} top {} add {} on {}",
        c.rows,
        c.latent,
        c.below,
        c.top,
        c.add,
        gpu.describe()
    );
    let (eps, q_logvar, z, z_below, p_mu, p_logvar) = (
        up(gpu, &d.eps),
        up(gpu, &d.q_logvar),
        up(gpu, &d.z),
        up(gpu, &d.z_below),
        up(gpu, &d.p_mu),
        up(gpu, &d.p_logvar),
    );
    let weights = up(gpu, &d.weights);
    let terms = up(gpu, &d.terms0);
    let dz_below = up(gpu, &d.dz_below0);
    // The top stage writes dz itself; below the top, posterior_grads reads the given one.
    let dz = up(gpu, &d.dz);
    let nb = (c.rows * c.below) as u64;
    let nl = (c.rows * c.latent) as u64;
    let (dp_mu, dp_logvar, dq_logvar) = (
        gpu.zeros("dp_mu", nb).unwrap(),
        gpu.zeros("dp_logvar", nb).unwrap(),
        gpu.zeros("dq_logvar", nl).unwrap(),
    );
    let shape = StageShape {
        rows: c.rows as u32,
        latent: c.latent as u32,
        below: c.below as u32,
        top: c.top,
    };
    let values = StageValues {
        eps: &eps,
        q_logvar: &q_logvar,
        z: &z,
        z_below: &z_below,
        p_mu: &p_mu,
        p_logvar: &p_logvar,
    };
    let k = HierarchyKernels::new(gpu).unwrap();
    let t = k.terms(gpu, shape, &values, &terms, c.add).unwrap();
    let g = k
        .grads(
            gpu,
            shape,
            beta,
            &values,
            &StageGrads {
                weights: &weights,
                dz_below: &dz_below,
                dz: &dz,
                dp_mu: &dp_mu,
                dp_logvar: &dp_logvar,
                dq_logvar: &dq_logvar,
            },
            c.add,
        )
        .unwrap();
    gpu.run(&[&t, &g.prior, &g.posterior]).unwrap();

    let f = |v: &Vec<f32>| to_f64(v);
    let (e64, qlv, z64, zb, pm, plv) = (
        f(&d.eps),
        f(&d.q_logvar),
        f(&d.z),
        f(&d.z_below),
        f(&d.p_mu),
        f(&d.p_logvar),
    );
    let s = StageRef {
        rows: c.rows,
        eps: &e64,
        q_logvar: &qlv,
        z: &z64,
        z_below: &zb,
        p_mu: &pm,
        p_logvar: &plv,
    };
    let gw: Vec<f64> = d.weights.iter().map(|&w| w as f64 * beta as f64).collect();
    let u = U32;

    // Terms: magnitudes of every summand per row.
    let mut want = hvae::stage_terms(&s, c.top);
    let n_terms = (2 * c.latent + 2 * c.below + 2) as f64;
    let tol: Vec<f64> = (0..c.rows)
        .map(|r| {
            let q: f64 = (r * c.latent..(r + 1) * c.latent)
                .map(|i| e64[i] * e64[i] + qlv[i].abs() + if c.top { z64[i] * z64[i] } else { 0.0 })
                .sum();
            let p: f64 = (r * c.below..(r + 1) * c.below)
                .map(|i| {
                    let dd = zb[i] - pm[i];
                    (dd * dd * (-plv[i]).exp()) * (14.0 + 4.0 * plv[i].abs()) + plv[i].abs()
                })
                .sum();
            let prev = if c.add { d.terms0[r].abs() as f64 } else { 0.0 };
            (0.5 * (q + p) + prev) * (n_terms + 14.0) * u
        })
        .collect();
    if c.add {
        want.iter_mut()
            .zip(&d.terms0)
            .for_each(|(w, &t0)| *w += t0 as f64);
    }
    assert_close(
        &format!("{name} terms"),
        &gpu.read::<f32>(&terms).unwrap(),
        &want,
        |i| tol[i],
    );

    let prior = hvae::stage_grads(&s, &gw, c.top);
    let scale = |i: usize| {
        let dd = zb[i] - pm[i];
        let gd = (gw[i / c.below] * dd * (-plv[i]).exp()).abs();
        (gd, (14.0 + 4.0 * plv[i].abs()) * u)
    };
    assert_close(
        &format!("{name} dp_mu"),
        &gpu.read::<f32>(&dp_mu).unwrap(),
        &prior.dp_mu,
        |i| scale(i).0 * scale(i).1,
    );
    assert_close(
        &format!("{name} dp_logvar"),
        &gpu.read::<f32>(&dp_logvar).unwrap(),
        &prior.dp_logvar,
        |i| {
            let dd = zb[i] - pm[i];
            let g = gw[i / c.below];
            0.5 * g * (1.0 + dd * dd * (-plv[i]).exp()) * scale(i).1
        },
    );
    let mut want_below = prior.dz_below.clone();
    if c.add {
        want_below
            .iter_mut()
            .zip(&d.dz_below0)
            .for_each(|(w, &v)| *w += v as f64);
    }
    assert_close(
        &format!("{name} dz_below"),
        &gpu.read::<f32>(&dz_below).unwrap(),
        &want_below,
        |i| scale(i).0 * scale(i).1 + if c.add { want_below[i].abs() * u } else { 0.0 },
    );
    let dz_used: Vec<f64> = match &prior.dz {
        Some(top) => {
            assert_close(
                &format!("{name} dz (prior)"),
                &gpu.read::<f32>(&dz).unwrap(),
                top,
                |i| top[i].abs() * 3.0 * u,
            );
            top.clone()
        }
        None => f(&d.dz),
    };
    let want_q = hvae::posterior_grads(&e64, &qlv, &dz_used, &gw);
    assert_close(
        &format!("{name} dq_logvar"),
        &gpu.read::<f32>(&dq_logvar).unwrap(),
        &want_q,
        |i| {
            let a = (dz_used[i] * e64[i] * 0.5 * (0.5 * qlv[i]).exp()).abs();
            let b = 0.5 * gw[i / c.latent];
            // dz itself carries the top stage's rounding when the kernel wrote it.
            (a + b) * (14.0 + 2.0 * qlv[i].abs()) * u
        },
    );
}

#[test]
fn stage_kernels_match_cpu_reference() {
    let cases = [
        Case {
            rows: 67,
            latent: 5,
            below: 3,
            top: true,
            add: false,
        },
        Case {
            rows: 67,
            latent: 5,
            below: 3,
            top: false,
            add: true,
        },
        Case {
            rows: 1,
            latent: 1,
            below: 7,
            top: true,
            add: true,
        },
        Case {
            rows: 130,
            latent: 2,
            below: 1,
            top: false,
            add: false,
        },
    ];
    for gpu in all_gpus() {
        for (i, c) in cases.iter().enumerate() {
            check(&gpu, c, 11 + i as u64);
        }
    }
}

/// A wrong buffer length is an error naming it, not a silent out-of-range read.
#[test]
fn stage_kernels_refuse_mismatched_buffers() {
    let gpu = all_gpus().remove(0);
    let k = HierarchyKernels::new(&gpu).unwrap();
    let v = |n| gpu.zeros("v", n).unwrap();
    let (a, b, short) = (v(12), v(9), v(8));
    let shape = StageShape {
        rows: 3,
        latent: 4,
        below: 3,
        top: false,
    };
    let values = StageValues {
        eps: &a,
        q_logvar: &a,
        z: &a,
        z_below: &short,
        p_mu: &b,
        p_logvar: &b,
    };
    let Err(err) = k.terms(&gpu, shape, &values, &v(3), false) else {
        panic!("z_below is one short");
    };
    assert!(err.to_string().contains("z_below"), "{err}");
}
