//! KL between two diagonal Gaussians: the f64 reference against central finite differences and
//! against the textbook formula, its N(0, I)-prior case against the ELBO's KL bit for bit, and
//! the GPU against the reference on awkward shapes and edge values, overwriting and
//! accumulating, with tolerances derived from WGSL's error bounds (u = 2⁻²⁴, 1 ulp ≤ 2u
//! relative; +, −, × round once, correctly; exp(a) 3 + 2|a| ulp, i.e. (6 + 4|a|)u; subnormal
//! results may flush to zero).

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::elbo as cpu_elbo;
use vae_wgpu::cpu::gauss_kl::{self as cpu, Dims, Inputs};
use vae_wgpu::gpu::{Gpu, GpuError, View};
use vae_wgpu::kernels::gauss_kl::{GaussKl, GaussKlInputs, GaussKlOutputs, GaussKlShape};

/// Smallest normal f32: what a flushed subnormal result can lose.
const FLUSH: f64 = f32::MIN_POSITIVE as f64;

/// Test data of one shape, f32 as the GPU sees it.
#[derive(Clone)]
struct Data {
    n: Dims,
    mu_q: Vec<f32>,
    logvar_q: Vec<f32>,
    mu_p: Vec<f32>,
    logvar_p: Vec<f32>,
}

fn pick(rng: &mut Lcg, edges: &[f32]) -> f32 {
    edges[(rng.next_f64() * edges.len() as f64) as usize % edges.len()]
}

/// Random elements of seven kinds: moderate; q = p exactly; tiny variances (logσ² −20); large
/// ±logσ² (±15); |μ_q − μ_p| ≈ 1e3 with logσ²_p ≥ −20 (diff²·e^{−lv_p} ≤ 5e14, far from f32
/// overflow); q within a few ulp of p (where the direct formula cancels); and d = lv_q − lv_p
/// at the branch points of exp_excess and expm1_acc. With B > 1 row 0 is q = p throughout, so
/// its KL must come out exactly 0.
fn data(n: Dims, seed: u64) -> Data {
    let mut rng = Lcg(seed);
    let len = n.batch * n.latent;
    let mut d = Data {
        n,
        mu_q: Vec::with_capacity(len),
        logvar_q: Vec::with_capacity(len),
        mu_p: Vec::with_capacity(len),
        logvar_p: Vec::with_capacity(len),
    };
    for i in 0..len {
        let m = rng.uniform(-3.0, 3.0) as f32;
        let v = rng.uniform(-5.0, 5.0) as f32;
        let kind = if n.batch > 1 && i < n.latent {
            1
        } else {
            (rng.next_f64() * 7.0) as usize
        };
        let (mq, vq, mp, vp) = match kind {
            0 => (
                m,
                v,
                rng.uniform(-3.0, 3.0) as f32,
                rng.uniform(-5.0, 5.0) as f32,
            ),
            1 => {
                let v = if rng.next_f64() < 0.5 {
                    pick(&mut rng, &[-20.0, -15.0, 15.0, 0.0, 1e-30])
                } else {
                    v
                };
                (m, v, m, v)
            }
            2 => match (rng.next_f64() * 3.0) as usize {
                0 => (m, -20.0, m + 0.5, v),
                1 => (m, v, m - 0.25, -20.0),
                _ => (m, -20.0, -m, -20.0),
            },
            3 => (
                m,
                pick(&mut rng, &[15.0, -15.0]),
                rng.uniform(-3.0, 3.0) as f32,
                pick(&mut rng, &[15.0, -15.0]),
            ),
            4 => {
                let (mq, mp) = pick2(&mut rng, &[(1e3, 0.0), (-1e3, 0.0), (500.0, -500.0)]);
                (mq, v, mp + m, pick(&mut rng, &[-20.0, -15.0, 0.0, 15.0, v]))
            }
            5 => {
                let dv = pick(&mut rng, &[1e-6, -1e-6, 1e-4, -3e-7, 0.0]);
                let dm = pick(&mut rng, &[1e-5, -1e-5, 0.0, 3e-3]);
                (m + dm, v + dv, m, v)
            }
            _ => {
                let dv = pick(&mut rng, &[-1.0, 2.0, 0.5, -0.5, 1.999, -1.001, 1e-20]);
                (m, v + dv, rng.uniform(-3.0, 3.0) as f32, v)
            }
        };
        d.mu_q.push(mq);
        d.logvar_q.push(vq);
        d.mu_p.push(mp);
        d.logvar_p.push(vp);
    }
    d
}

fn pick2(rng: &mut Lcg, pairs: &[(f32, f32)]) -> (f32, f32) {
    pairs[(rng.next_f64() * pairs.len() as f64) as usize % pairs.len()]
}

fn reference(beta: f32, scale: f32, d: &Data) -> cpu::Output {
    let (mq, lq, mp, lp) = (
        to_f64(&d.mu_q),
        to_f64(&d.logvar_q),
        to_f64(&d.mu_p),
        to_f64(&d.logvar_p),
    );
    let inputs = Inputs {
        mu_q: &mq,
        logvar_q: &lq,
        mu_p: &mp,
        logvar_p: &lp,
    };
    cpu::gauss_kl(beta as f64, scale as f64, d.n, &inputs)
}

// ---------------------------------------------------------------- CPU

#[test]
fn cpu_gradients_match_finite_differences() {
    // L = scale·β·Σ_b kl[b] in f64, central differences with h = 1e-5 on μ within ±2 and logσ²
    // within ±2 (so |d| ≤ 4). Truncation h²/6·|∂³L|: L is quadratic in μ; in a log-variance
    // ∂³ ≤ ½βs(e^4 + diff²·e^2) < 15, so < 3e-10. Rounding: L (15 terms, each < 100) is
    // formed to ~30 f64 ulp of Σ|terms| < 250, i.e. < 1e-12, over 2h: < 1e-7. Hence 2e-7·(1 + |g|).
    let n = Dims {
        batch: 3,
        latent: 5,
    };
    let (beta, scale) = (0.7, 0.25);
    let mut rng = Lcg(11);
    let mut v = |lo, hi| -> Vec<f64> { (0..15).map(|_| rng.uniform(lo, hi)).collect() };
    let mut inputs = [v(-2.0, 2.0), v(-2.0, 2.0), v(-2.0, 2.0), v(-2.0, 2.0)];
    // q within 1e-4 of p (where the direct form of e^d − 1 − d cancels), and q = p exactly.
    inputs[0][0] = inputs[2][0] + 1e-3;
    inputs[1][0] = inputs[3][0] + 1e-4;
    inputs[0][1] = inputs[2][1];
    inputs[1][1] = inputs[3][1];
    let run = |inp: &[Vec<f64>; 4]| {
        cpu::gauss_kl(
            beta,
            scale,
            n,
            &Inputs {
                mu_q: &inp[0],
                logvar_q: &inp[1],
                mu_p: &inp[2],
                logvar_p: &inp[3],
            },
        )
    };
    let loss = |inp: &[Vec<f64>; 4]| scale * beta * run(inp).kl.iter().sum::<f64>();
    let out = run(&inputs);
    let grads = [&out.dmu_q, &out.dlogvar_q, &out.dmu_p, &out.dlogvar_p];
    let names = ["mu_q", "logvar_q", "mu_p", "logvar_p"];
    let h = 1e-5;
    let mut worst = 0.0f64;
    for w in 0..4 {
        for k in 0..15 {
            let (mut p, mut m) = (inputs.clone(), inputs.clone());
            p[w][k] += h;
            m[w][k] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            let an = grads[w][k];
            let tol = 2e-7 * (1.0 + an.abs());
            worst = worst.max((fd - an).abs() / tol);
            assert!(
                (fd - an).abs() <= tol,
                "d/d {}[{k}]: analytic {an}, finite difference {fd}",
                names[w]
            );
        }
    }
    eprintln!("finite differences: max err/tol {worst:.3}");
    // q = p: KL and every gradient exactly 0.
    assert_eq!(out.kl.len(), 3);
    for g in grads {
        assert_eq!(g[1], 0.0);
    }
    assert_eq!(
        cpu::kl_term(inputs[0][1], inputs[1][1], inputs[2][1], inputs[3][1]),
        0.0
    );
}

#[test]
fn cpu_kl_equals_the_textbook_formula() {
    // ½[(lv_p − lv_q) + (e^{lv_q} + diff²)/e^{lv_p} − 1], formed directly in f64: each of its
    // few operations rounds once, so it is within 8ε·(|lv_p − lv_q| + e^{lv_q − lv_p} + diff²·
    // e^{−lv_p} + 1) of the truth, and the accurate form is far closer than that.
    let mut rng = Lcg(5);
    for _ in 0..2000 {
        let (mq, mp) = (rng.uniform(-5.0, 5.0), rng.uniform(-5.0, 5.0));
        let (lq, lp) = (rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0));
        let direct = 0.5 * ((lp - lq) + (lq.exp() + (mq - mp).powi(2)) / lp.exp() - 1.0);
        let scale = (lp - lq).abs() + (lq - lp).exp() + (mq - mp).powi(2) * (-lp).exp() + 1.0;
        let got = cpu::kl_term(mq, lq, mp, lp);
        assert!(
            (got - direct).abs() <= 8.0 * f64::EPSILON * scale,
            "KL({mq}, {lq} ‖ {mp}, {lp}): {got} against the direct {direct}"
        );
    }
    // Near q = p the direct form loses every digit; the accurate one follows the expansions
    // ½(d²/2 + d³/6 + d⁴/24) and ½·diff²·e^{−lv_p} to a few f64 ulp (d and diff formed exactly).
    let (mp, lp) = (0.3f64, -1.2f64);
    for dlv in [1e-9f64, -1e-9, 1e-6, -3e-5] {
        let lq = lp + dlv;
        let d = lq - lp;
        let want = 0.5 * (d * d / 2.0 + d.powi(3) / 6.0 + d.powi(4) / 24.0 + d.powi(5) / 120.0);
        let got = cpu::kl_term(mp, lq, mp, lp);
        assert!(
            ((got - want) / want).abs() < 1e-14,
            "d {d}: {got} against the series {want}"
        );
    }
    for dm in [1e-7f64, -1e-12] {
        let mq = mp + dm;
        let diff = mq - mp;
        let want = 0.5 * diff * diff * (-lp).exp();
        let got = cpu::kl_term(mq, lp, mp, lp);
        assert!(
            ((got - want) / want).abs() < 1e-14,
            "diff {diff}: {got} against {want}"
        );
    }
}

#[test]
fn n01_prior_reduces_to_the_elbo_kl_term_exactly() {
    // μ_p = 0, logσ²_p = 0: every element's KL is cpu::elbo::kl_term bit for bit, and the rows
    // and gradients are bit for bit those of cpu::elbo's KL part.
    let mut rng = Lcg(9);
    let mut mus: Vec<f64> = (0..200).map(|_| rng.uniform(-4.0, 4.0)).collect();
    let mut lvs: Vec<f64> = (0..200).map(|_| rng.uniform(-6.0, 6.0)).collect();
    let edges = [
        (0.0, 0.0),
        (0.0, 1e-12),
        (1e-7, -1e-7),
        (1e3, -20.0),
        (-1e3, 20.0),
        (2.5, 0.05),
        (-0.5, -0.0999),
        (0.0, 15.0),
        (3.0, -15.0),
    ];
    for (m, v) in edges {
        mus.push(m);
        lvs.push(v);
    }
    for (&m, &v) in mus.iter().zip(&lvs) {
        let a = cpu::kl_term(m, v, 0.0, 0.0);
        let b = cpu_elbo::kl_term(m, v);
        assert_eq!(a.to_bits(), b.to_bits(), "μ {m}, logσ² {v}: {a} vs {b}");
    }
    let n = Dims {
        batch: 19,
        latent: 11,
    };
    let zeros = vec![0.0; 209];
    let (mu, lv) = (&mus[..209], &lvs[..209]);
    let (beta, scale) = (0.8, 1.0 / 3.0);
    let got = cpu::gauss_kl(
        beta,
        scale,
        n,
        &Inputs {
            mu_q: mu,
            logvar_q: lv,
            mu_p: &zeros,
            logvar_p: &zeros,
        },
    );
    let dims = cpu_elbo::Dims {
        batch: 19,
        dim: 1,
        latent: 11,
    };
    let want = cpu_elbo::elbo(
        cpu_elbo::Likelihood::Bernoulli,
        beta,
        scale,
        dims,
        &cpu_elbo::Inputs {
            x: &[0.0; 19],
            dec: &[0.0; 19],
            dec_logvar: &[],
            mu,
            logvar: lv,
        },
    );
    assert_eq!(got.kl, want.kl);
    assert_eq!(got.dmu_q, want.dmu);
    assert_eq!(got.dlogvar_q, want.dlogvar);
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    assert_eq!(got.dmu_p, neg(&want.dmu));
}

// ---------------------------------------------------------------- error bounds of the kernel

/// Error bound of expm1_acc(v) (common.wgsl, as in tests/elbo.rs): the degree-10 series below
/// 0.5, exp(v) − 1 above.
fn expm1_err(v: f64) -> f64 {
    if v.abs() < 0.5 {
        24.0 * U32 * v.abs().exp_m1()
    } else {
        (6.0 + 4.0 * v.abs()) * U32 * v.exp() + U32 * v.exp_m1().abs()
    }
}

/// Error bound of exp_excess(v) (common.wgsl, as in tests/elbo.rs).
fn exp_excess_err(v: f64) -> f64 {
    if v > -1.0 && v < 2.0 {
        // Degree-16 Horner: γ₃₂ times the sum of the terms' magnitudes; v² may flush to zero.
        32.0 * U32 * cpu_elbo::exp_excess(v.abs()) + FLUSH
    } else if v <= -1.0 {
        2.0 * U32 * (1.0 + v).abs() + (8.0 + 4.0 * v.abs()) * U32 * v.exp()
    } else {
        (8.0 + 4.0 * v) * U32 * v.exp() + 2.0 * U32 * (1.0 + v)
    }
}

/// Relative error bound of a product of factors with relative errors `e`: Π(1 + eᵢ) − 1.
fn grow(e: &[f64]) -> f64 {
    e.iter().fold(1.0, |p, x| p * (1.0 + x)) - 1.0
}

/// Per-element and per-row tolerances of the kernel against the exact values of its f32 inputs.
///
/// The kernel forms diff = μ_q − μ_p and d = lv_q − lv_p in f32 (correctly rounded: the test
/// repeats them in f32, and the effect of that rounding, e.g. |e^{d_f32} − e^d|, is computed
/// exactly in f64 rather than bounded); e^{−lv_p/2} to (6 + 2|lv_p|)u; r = diff·e^{−lv_p/2} and
/// r² add a rounding each; β·scale one; exp_excess and expm1_acc their bounds above. Every
/// other operation rounds once (u of its result); subnormal results may flush (FLUSH).
struct Tolerances {
    kl: Vec<f64>,
    dmu: Vec<f64>,
    dlogvar_q: Vec<f64>,
    dlogvar_p: Vec<f64>,
}

fn tolerances(d: &Data, beta: f32, scale: f32, wg: u32) -> Tolerances {
    let u = U32;
    let bs = beta as f64 * scale as f64;
    let hb = 0.5 * bs;
    let Dims { batch, latent } = d.n;
    let mut t = Tolerances {
        kl: Vec::new(),
        dmu: Vec::new(),
        dlogvar_q: Vec::new(),
        dlogvar_p: Vec::new(),
    };
    // Each term passes ⌈L/WG⌉ − 1 serial additions (the first adds to 0: exact) and log2(WG)
    // tree levels: γ_h·Σ|terms|.
    let h = (latent.div_ceil(wg as usize) - 1 + wg.trailing_zeros() as usize) as f64;
    let gamma = h * u / (1.0 - h * u);
    for b in 0..batch {
        let (mut mag, mut err) = (0.0, 0.0);
        for l in 0..latent {
            let i = b * latent + l;
            let (mq, lq, mp, lp) = (d.mu_q[i], d.logvar_q[i], d.mu_p[i], d.logvar_p[i]);
            let (diff, dv) = (mq as f64 - mp as f64, lq as f64 - lp as f64);
            let (diff_g, dv_g) = ((mq - mp) as f64, (lq - lp) as f64);
            let lp = lp as f64;
            let ip = (-0.5 * lp).exp();
            let e_ip = (6.0 + 2.0 * lp.abs()) * u;
            let (r2, r2_g) = ((diff * ip).powi(2), (diff_g * ip).powi(2));
            let e_r2 = grow(&[e_ip, u, e_ip, u, u]);
            let (ee, ee_g) = (cpu_elbo::exp_excess(dv), cpu_elbo::exp_excess(dv_g));
            let (em1, em1_g) = (dv.exp_m1(), dv_g.exp_m1());
            let (ee_err, em1_err) = (exp_excess_err(dv_g), expm1_err(dv_g));

            // KL term r² + exp_excess(d), before the row sum.
            let pre = (ee_g - ee).abs() + (r2_g - r2).abs() + ee_err + e_r2 * r2_g + 2.0 * FLUSH;
            let term_err = pre + u * (ee_g.abs() + r2_g + pre);
            mag += ee.abs() + r2 + term_err;
            err += term_err;

            // dμ_q = (bs·r)·e^{−lv_p/2}.
            let g_mu = bs * diff * (-lp).exp();
            let g_mu_g = bs * diff_g * (-lp).exp();
            t.dmu.push(
                (g_mu_g - g_mu).abs()
                    + grow(&[u, e_ip, u, u, e_ip, u]) * g_mu_g.abs()
                    + FLUSH * (1.0 + bs * ip),
            );
            // dlogσ²_q = (½bs)·expm1_acc(d).
            t.dlogvar_q.push(
                hb * ((em1_g - em1).abs()
                    + (1.0 + u).powi(2) * em1_err
                    + grow(&[u, u]) * em1_g.abs())
                    + FLUSH,
            );
            // dlogσ²_p = −(½bs)·(expm1_acc(d) + r²).
            let s_err = em1_err + e_r2 * r2_g + FLUSH;
            let sum_err = s_err + u * ((em1_g + r2_g).abs() + s_err);
            t.dlogvar_p.push(
                hb * ((em1_g - em1).abs()
                    + (r2_g - r2).abs()
                    + (1.0 + u).powi(2) * sum_err
                    + grow(&[u, u]) * (em1_g + r2_g).abs())
                    + FLUSH,
            );
        }
        // The final ½ is exact (bar a subnormal result).
        t.kl.push(0.5 * (err + gamma * mag) + FLUSH);
    }
    t
}

// ---------------------------------------------------------------- GPU

struct GpuOut {
    kl: Vec<f32>,
    dmu_q: Vec<f32>,
    dlogvar_q: Vec<f32>,
    dmu_p: Vec<f32>,
    dlogvar_p: Vec<f32>,
}

/// Gradient buffers' contents before the run: random values for the accumulating kernel, NaN
/// (which must be overwritten) for the other.
fn prefill(len: usize, accumulate: bool, seed: u64) -> [Vec<f32>; 4] {
    let mut rng = Lcg(seed);
    std::array::from_fn(|_| {
        if accumulate {
            rng.vec(len, -2.0, 2.0)
        } else {
            vec![f32::NAN; len]
        }
    })
}

fn run_gpu(gpu: &Gpu, k: &GaussKl, beta: f32, scale: f32, d: &Data, pre: &[Vec<f32>; 4]) -> GpuOut {
    let up = |name, v: &[f32]| gpu.upload(name, v).unwrap();
    let shape = GaussKlShape {
        batch: d.n.batch as u32,
        latent: d.n.latent as u32,
    };
    let (mq, lq, mp, lp) = (
        up("mu_q", &d.mu_q),
        up("logvar_q", &d.logvar_q),
        up("mu_p", &d.mu_p),
        up("logvar_p", &d.logvar_p),
    );
    let kl = up("kl", &vec![f32::NAN; d.n.batch]);
    let [g0, g1, g2, g3] = pre;
    let (dmq, dlq, dmp, dlp) = (
        up("dmu_q", g0),
        up("dlogvar_q", g1),
        up("dmu_p", g2),
        up("dlogvar_p", g3),
    );
    let ds = k
        .bind(
            gpu,
            shape,
            beta,
            scale,
            &GaussKlInputs {
                mu_q: &mq,
                logvar_q: &lq,
                mu_p: &mp,
                logvar_p: &lp,
            },
            &GaussKlOutputs {
                kl: &kl,
                dmu_q: &dmq,
                dlogvar_q: &dlq,
                dmu_p: &dmp,
                dlogvar_p: &dlp,
            },
        )
        .unwrap();
    gpu.run(&ds.dispatches()).unwrap();
    let read = |v: &View| gpu.read::<f32>(v).unwrap();
    GpuOut {
        kl: read(&kl),
        dmu_q: read(&dmq),
        dlogvar_q: read(&dlq),
        dmu_p: read(&dmp),
        dlogvar_p: read(&dlp),
    }
}

/// Checks one run against `want` (the reference, or the ELBO's N(0, I) KL) with the tolerances
/// above; accumulated gradients add the prefill (f64) and one rounding of the sum.
#[allow(clippy::too_many_arguments)]
fn check(
    name: &str,
    d: &Data,
    beta: f32,
    scale: f32,
    wg: u32,
    accumulate: bool,
    pre: &[Vec<f32>; 4],
    want: &cpu::Output,
    g: &GpuOut,
) {
    let t = tolerances(d, beta, scale, wg);
    assert_close(&format!("{name} kl"), &g.kl, &want.kl, |b| t.kl[b]);
    // Rows with q = p throughout: exactly 0.
    for b in 0..d.n.batch {
        let r = b * d.n.latent..(b + 1) * d.n.latent;
        let same = d.mu_q[r.clone()] == d.mu_p[r.clone()] && d.logvar_q[r.clone()] == d.logvar_p[r];
        if same {
            assert_eq!(g.kl[b], 0.0, "{name}: row {b} has q = p");
        }
    }
    let grads = [
        ("dmu_q", &g.dmu_q, &want.dmu_q, &t.dmu),
        ("dlogvar_q", &g.dlogvar_q, &want.dlogvar_q, &t.dlogvar_q),
        ("dmu_p", &g.dmu_p, &want.dmu_p, &t.dmu),
        ("dlogvar_p", &g.dlogvar_p, &want.dlogvar_p, &t.dlogvar_p),
    ];
    for (k, (what, got, grad, tol)) in grads.into_iter().enumerate() {
        let (want, tol): (Vec<f64>, Vec<f64>) = if accumulate {
            grad.iter()
                .zip(&pre[k])
                .zip(tol)
                .map(|((&w, &p), &t)| {
                    let s = p as f64 + w;
                    (s, t + U32 * (s.abs() + t) + FLUSH)
                })
                .unzip()
        } else {
            (grad.to_vec(), tol.clone())
        };
        assert_close(&format!("{name} {what}"), got, &want, |i| tol[i]);
        // q = p exactly: the gradient is exactly 0 (the prefill is added unchanged).
        for i in 0..got.len() {
            if d.mu_q[i] == d.mu_p[i] && d.logvar_q[i] == d.logvar_p[i] {
                let base = if accumulate { pre[k][i] } else { 0.0 };
                assert_eq!(got[i], base, "{name} {what}[{i}]: q = p");
            }
        }
    }
    if !accumulate {
        let neg: Vec<f32> = g.dmu_q.iter().map(|v| -v).collect();
        assert_eq!(g.dmu_p, neg, "{name}: dmu_p = -dmu_q exactly");
    }
}

#[test]
fn gpu_matches_cpu_on_awkward_shapes_and_edge_values() {
    // Shapes that are not multiples of any workgroup size, a single element, and a row longer
    // than two workgroups of 64; workgroups of 8 (software adapters) and 64 (hardware); both
    // store modes, on every adapter.
    let (beta, scale) = (0.8f32, 1.0 / 3.0);
    let shapes = [(7, 13), (1, 1), (33, 50), (2, 129)];
    for gpu in all_gpus() {
        for wg in [8, 64] {
            for accumulate in [false, true] {
                let k = GaussKl::with_workgroup(&gpu, accumulate, wg).unwrap();
                for (s, &(batch, latent)) in shapes.iter().enumerate() {
                    let d = data(Dims { batch, latent }, 100 + s as u64);
                    let pre = prefill(batch * latent, accumulate, 200 + s as u64);
                    let g = run_gpu(&gpu, &k, beta, scale, &d, &pre);
                    let want = reference(beta, scale, &d);
                    let name = format!(
                        "WG{wg} acc={accumulate} B{batch} L{latent} on {:?}",
                        gpu.info.backend
                    );
                    check(&name, &d, beta, scale, wg, accumulate, &pre, &want, &g);
                }
            }
        }
    }
}

#[test]
fn gpu_n01_prior_matches_the_elbo_kl() {
    // μ_p = 0, logσ²_p = 0 on the GPU against cpu::elbo's KL and its dμ, dlogσ² (which the
    // reference reproduces bit for bit: n01_prior_reduces_to_the_elbo_kl_term_exactly).
    let n = Dims {
        batch: 9,
        latent: 21,
    };
    let len = n.batch * n.latent;
    let mut rng = Lcg(77);
    let mut d = Data {
        n,
        mu_q: rng.vec(len, -3.0, 3.0),
        logvar_q: (0..len)
            .map(|_| {
                if rng.next_f64() < 0.3 {
                    pick(&mut rng, &[-20.0, 20.0, 0.0, 1e-6, -1e-6, 2.0, -1.0])
                } else {
                    rng.uniform(-6.0, 6.0) as f32
                }
            })
            .collect(),
        mu_p: vec![0.0; len],
        logvar_p: vec![0.0; len],
    };
    d.mu_q[0] = 0.0;
    d.logvar_q[0] = 0.0;
    let (beta, scale) = (0.6f32, 0.125f32);
    let (mu, lv) = (to_f64(&d.mu_q), to_f64(&d.logvar_q));
    let elbo = cpu_elbo::elbo(
        cpu_elbo::Likelihood::Bernoulli,
        beta as f64,
        scale as f64,
        cpu_elbo::Dims {
            batch: n.batch,
            dim: 1,
            latent: n.latent,
        },
        &cpu_elbo::Inputs {
            x: &vec![0.0; n.batch],
            dec: &vec![0.0; n.batch],
            dec_logvar: &[],
            mu: &mu,
            logvar: &lv,
        },
    );
    let want = cpu::Output {
        kl: elbo.kl.clone(),
        dmu_q: elbo.dmu.clone(),
        dlogvar_q: elbo.dlogvar.clone(),
        dmu_p: elbo.dmu.iter().map(|v| -v).collect(),
        dlogvar_p: elbo
            .dlogvar
            .iter()
            .zip(&mu)
            .map(|(g, m)| -(g + 0.5 * beta as f64 * scale as f64 * m * m))
            .collect(),
    };
    for gpu in all_gpus() {
        let k = GaussKl::new(&gpu, false).unwrap();
        let pre = prefill(len, false, 0);
        let g = run_gpu(&gpu, &k, beta, scale, &d, &pre);
        let name = format!("N(0, I) prior on {:?}", gpu.info.backend);
        check(
            &name,
            &d,
            beta,
            scale,
            k.workgroup(),
            false,
            &pre,
            &want,
            &g,
        );
    }
}

#[test]
fn beta_can_change_between_submits() {
    let n = Dims {
        batch: 5,
        latent: 7,
    };
    let d = data(n, 3);
    for gpu in all_gpus() {
        let k = GaussKl::new(&gpu, false).unwrap();
        let up = |name, v: &[f32]| gpu.upload(name, v).unwrap();
        let z = |name, len| gpu.zeros(name, len).unwrap();
        let (mq, lq, mp, lp) = (
            up("mu_q", &d.mu_q),
            up("logvar_q", &d.logvar_q),
            up("mu_p", &d.mu_p),
            up("logvar_p", &d.logvar_p),
        );
        let (kl, dmq, dlq, dmp, dlp) = (
            z("kl", 5),
            z("dmu_q", 35),
            z("dlogvar_q", 35),
            z("dmu_p", 35),
            z("dlogvar_p", 35),
        );
        let ds = k
            .bind(
                &gpu,
                GaussKlShape {
                    batch: 5,
                    latent: 7,
                },
                0.0,
                0.5,
                &GaussKlInputs {
                    mu_q: &mq,
                    logvar_q: &lq,
                    mu_p: &mp,
                    logvar_p: &lp,
                },
                &GaussKlOutputs {
                    kl: &kl,
                    dmu_q: &dmq,
                    dlogvar_q: &dlq,
                    dmu_p: &dmp,
                    dlogvar_p: &dlp,
                },
            )
            .unwrap();
        for beta in [0.0f32, 0.25, 1.0] {
            ds.set_beta(&gpu, beta);
            gpu.run(&ds.dispatches()).unwrap();
            let want = reference(beta, 0.5, &d);
            let t = tolerances(&d, beta, 0.5, k.workgroup());
            let g = |v: &View| gpu.read::<f32>(v).unwrap();
            let name = format!("beta {beta} on {:?}", gpu.info.backend);
            assert_close(&format!("{name} kl"), &g(&kl), &want.kl, |b| t.kl[b]);
            assert_close(&format!("{name} dmu_q"), &g(&dmq), &want.dmu_q, |i| {
                t.dmu[i]
            });
            assert_close(
                &format!("{name} dlogvar_p"),
                &g(&dlp),
                &want.dlogvar_p,
                |i| t.dlogvar_p[i],
            );
        }
    }
}

#[test]
fn bad_bindings_are_typed_errors() {
    for gpu in all_gpus() {
        let k = GaussKl::new(&gpu, true).unwrap();
        let v = |len| gpu.zeros("v", len).unwrap();
        let (mq, lq, mp, lp) = (v(12), v(12), v(11), v(12));
        let (kl, g0, g1, g2, g3) = (v(3), v(12), v(12), v(12), v(12));
        let shape = GaussKlShape {
            batch: 3,
            latent: 4,
        };
        let outputs = GaussKlOutputs {
            kl: &kl,
            dmu_q: &g0,
            dlogvar_q: &g1,
            dmu_p: &g2,
            dlogvar_p: &g3,
        };
        let short = GaussKlInputs {
            mu_q: &mq,
            logvar_q: &lq,
            mu_p: &mp,
            logvar_p: &lp,
        };
        let err = |r: Result<_, GpuError>| match r {
            Err(GpuError::Shape { reason, .. }) => reason,
            Err(e) => panic!("not a shape error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        let reason = err(k.bind(&gpu, shape, 1.0, 1.0, &short, &outputs));
        assert!(reason.contains("mu_p"), "{reason}");
        let ok = GaussKlInputs {
            mu_q: &mq,
            logvar_q: &lq,
            mu_p: &g0,
            logvar_p: &lp,
        };
        let reason = err(k.bind(&gpu, shape, 1.0, 1.0, &ok, &outputs));
        assert!(
            reason.contains("dmu_q") && reason.contains("mu_p"),
            "{reason}"
        );
        let inputs = GaussKlInputs {
            mu_q: &mq,
            logvar_q: &lq,
            mu_p: &lp,
            logvar_p: &lp,
        };
        let empty = GaussKlShape {
            batch: 0,
            latent: 4,
        };
        err(k.bind(&gpu, empty, 1.0, 1.0, &inputs, &outputs));
        // Views start on the adapter's storage offset alignment.
        let align = (gpu.limits.min_storage_buffer_offset_alignment as u64 / 4).max(12);
        let both = v(2 * align);
        let overlap = GaussKlOutputs {
            dmu_q: &both.slice(0, 12),
            dlogvar_q: &both.slice(0, 24),
            ..outputs
        };
        let reason = err(k.bind(&gpu, shape, 1.0, 1.0, &inputs, &overlap));
        assert!(reason.contains("overlap"), "{reason}");
        // Disjoint ranges of one buffer are fine.
        let split = GaussKlOutputs {
            dmu_q: &both.slice(0, 12),
            dlogvar_q: &both.slice(align, 12),
            ..outputs
        };
        k.bind(&gpu, shape, 1.0, 1.0, &inputs, &split).unwrap();
        let bad_wg = GaussKl::with_workgroup(&gpu, false, 12);
        assert!(matches!(bad_wg, Err(GpuError::Shape { .. })));
    }
}
