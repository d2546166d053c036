//! Philox against the Random123 known answers; the GPU random stream against the CPU bit for bit;
//! the normals against the CPU and against N(0, 1); the reparameterized sample and its backward
//! against the f64 reference, and that reference against finite differences.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::philox::{StreamPos, philox4x32_10, uniform};
use vae_wgpu::cpu::sample as cpu;
use vae_wgpu::gpu::Gpu;
use vae_wgpu::kernels::sample::{SampleShape, Sampler};

const SEED_A: u64 = 0x0123_4567_89ab_cdef;
const SEED_B: u64 = 42;

#[test]
fn philox_matches_random123_known_answers() {
    // kat_vectors from Random123 1.09, philox4x32_10 lines.
    let cases = [
        (
            [0; 4],
            [0; 2],
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
        ),
        (
            [0xffff_ffff; 4],
            [0xffff_ffff; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];
    for (ctr, key, want) in cases {
        assert_eq!(
            philox4x32_10(ctr, key),
            want,
            "counter {ctr:x?} key {key:x?}"
        );
    }
}

#[test]
fn uniforms_are_open_unit_interval() {
    assert_eq!(uniform(0), 0.5 / 8_388_608.0);
    assert_eq!(uniform(u32::MAX), 1.0 - 0.5 / 8_388_608.0);
    assert!(uniform(u32::MAX) < 1.0 && uniform(0) > 0.0);
}

fn read_u32(gpu: &Gpu, v: &vae_wgpu::gpu::View) -> Vec<u32> {
    gpu.read(v).unwrap()
}

fn read_f32(gpu: &Gpu, v: &vae_wgpu::gpu::View) -> Vec<f32> {
    gpu.read(v).unwrap()
}

#[test]
fn gpu_stream_matches_cpu_bit_for_bit() {
    // 100_003 words: not a multiple of the 4-word block nor of the 64-block workgroup.
    let n = 100_003;
    for gpu in all_gpus() {
        let name = gpu.describe();
        let sampler = Sampler::new(&gpu, SEED_A).unwrap();
        let words = gpu.zeros("words", n as u64).unwrap();
        let unif = gpu.zeros("uniforms", n as u64).unwrap();
        for (seed, step, stream) in [(SEED_A, 0, 0), (SEED_B, 7, 3), (u64::MAX, u32::MAX, 1)] {
            sampler.set_state(&gpu, seed, step);
            gpu.run(&[
                &sampler.raw_words(&gpu, stream, &words).unwrap(),
                &sampler.uniforms(&gpu, stream, &unif).unwrap(),
            ])
            .unwrap();
            let pos = StreamPos { seed, step, stream };
            let want = pos.words(n);
            let got = read_u32(&gpu, &words);
            let bad = got.iter().zip(&want).filter(|(g, w)| g != w).count();
            assert_eq!(bad, 0, "{name}: {bad} of {n} words differ for {pos:?}");
            let got = read_f32(&gpu, &unif);
            let bad = got
                .iter()
                .zip(&want)
                .filter(|&(g, &w)| g.to_bits() != uniform(w).to_bits())
                .count();
            assert_eq!(bad, 0, "{name}: {bad} of {n} uniforms differ for {pos:?}");
            assert!(got.iter().all(|&u| u > 0.0 && u < 1.0));
        }
        // The on-device step counter: state (B, 6) advanced twice is (B, 8).
        sampler.set_state(&gpu, SEED_B, 6);
        let advance = sampler.advance(&gpu).unwrap();
        gpu.run(&[
            &advance,
            &advance,
            &sampler.raw_words(&gpu, 0, &words).unwrap(),
        ])
        .unwrap();
        let want = StreamPos {
            seed: SEED_B,
            step: 8,
            stream: 0,
        }
        .words(n);
        assert!(read_u32(&gpu, &words) == want, "{name}: advance");
        assert_eq!(read_u32(&gpu, sampler.rng()), vec![SEED_B as u32, 0, 8, 0]);
        sampler.set_step(&gpu, 3);
        assert_eq!(read_u32(&gpu, sampler.rng()), vec![SEED_B as u32, 0, 3, 0]);
        eprintln!("{name}: {n} words and uniforms identical to the CPU for 3 (seed, step, stream)");
    }
}

/// Runs the forward on μ = 0, logσ² = 0 (so z = ε) and returns (z, ε).
fn draw(gpu: &Gpu, sampler: &Sampler, shape: SampleShape, stream: u32) -> (Vec<f32>, Vec<f32>) {
    let per = shape.per_sample() as usize;
    let zero = gpu.upload("zero", &vec![0.0f32; per]).unwrap();
    let z = gpu.zeros("z", shape.total()).unwrap();
    let eps = gpu.zeros("eps", shape.total()).unwrap();
    let d = sampler
        .forward(gpu, shape, stream, &zero, &zero, &z, &eps)
        .unwrap();
    gpu.run(&[&d]).unwrap();
    (read_f32(gpu, &z), read_f32(gpu, &eps))
}

#[test]
fn dispatch_layout_cannot_change_values() {
    for gpu in all_gpus() {
        let sampler = Sampler::new(&gpu, SEED_B).unwrap();
        sampler.set_state(&gpu, SEED_B, 5);
        let shapes = [
            SampleShape {
                rows: 1,
                cols: 1000,
                samples: 1,
            },
            SampleShape {
                rows: 1,
                cols: 1003,
                samples: 1,
            },
            SampleShape {
                rows: 17,
                cols: 59,
                samples: 1,
            },
            SampleShape {
                rows: 3,
                cols: 7,
                samples: 50,
            },
            SampleShape {
                rows: 1,
                cols: 1,
                samples: 1,
            },
        ];
        let draws: Vec<Vec<u32>> = shapes
            .iter()
            .map(|&s| {
                let (z, eps) = draw(&gpu, &sampler, s, 2);
                assert!(z.iter().zip(&eps).all(|(a, b)| a.to_bits() == b.to_bits()));
                eps.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for (s, d) in shapes.iter().zip(&draws) {
            let common = d.len().min(draws[0].len());
            assert!(
                d[..common] == draws[0][..common],
                "{}: shape {s:?} changes the first {common} normals",
                gpu.describe()
            );
        }
        // The stream and the step do change them.
        let (_, other_stream) = draw(&gpu, &sampler, shapes[0], 3);
        sampler.set_step(&gpu, 6);
        let (_, other_step) = draw(&gpu, &sampler, shapes[0], 2);
        let same = |v: &[f32]| {
            v.iter()
                .zip(&draws[0])
                .filter(|(a, b)| a.to_bits() == **b)
                .count()
        };
        assert!(same(&other_stream) < 5 && same(&other_step) < 5);
    }
}

/// Bound on |ε_gpu − ε| for a Box–Muller pair of radius r, u = 2⁻²⁴ (WGSL error bounds, with
/// 1 ulp ≤ 2u relative):
/// - the uniforms are exact (checked bit for bit above);
/// - −ln u0: `log` has 3 ulp = 6u below ½; above ½ the kernel uses log1p((1−u0)/u0): 1−u0 exact,
///   the division 2.5 ulp, log1p_unit's division, add and polynomial ~10u more: ≤ 16u in all;
/// - sqrt: 1/inverseSqrt, 2 + 2.5 ulp = 9u, plus half of the 16u above: r within 17u·r;
/// - sincospi: exact reduction, argument rounded twice (2u·π/4), polynomials ~2u: ≤ 4u absolute;
/// - the product r·(cos, sin) one more u.
///   So |Δε| ≤ r (17u + 4u + u) = 22u·r; the test allows 32u·r.
fn normal_tolerance(r: f64) -> f64 {
    32.0 * U32 * r
}

#[test]
fn gpu_normals_match_cpu() {
    let n: usize = 262_147;
    let pos = StreamPos {
        seed: SEED_A,
        step: 11,
        stream: 1,
    };
    let mut want = cpu::normals(&pos, n.next_multiple_of(4));
    let radius: Vec<f64> = (0..n)
        .map(|i| {
            let p = i & !1;
            (want[p] * want[p] + want[p + 1] * want[p + 1]).sqrt()
        })
        .collect();
    want.truncate(n);
    for gpu in all_gpus() {
        let sampler = Sampler::new(&gpu, SEED_A).unwrap();
        sampler.set_step(&gpu, 11);
        let (_, eps) = draw(
            &gpu,
            &sampler,
            SampleShape {
                rows: 1,
                cols: n as u32,
                samples: 1,
            },
            1,
        );
        let name = format!("normals on {}", gpu.describe());
        assert_close(&name, &eps, &want, |i| normal_tolerance(radius[i]));
    }
}

/// Φ(x) through erfc with the Chebyshev fit of Numerical Recipes (`erfcc`, relative error
/// < 1.2e-7), far below the KS resolution 1/√n ≈ 1e-3 used here.
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn gpu_normals_are_standard_normal() {
    // 2^20 + 5 draws. Each bound is a 5-sigma bound (false alarm ~6e-7) or the KS 0.1% level.
    let n = (1 << 20) + 5;
    for gpu in all_gpus() {
        let sampler = Sampler::new(&gpu, SEED_B).unwrap();
        let shape = SampleShape {
            rows: 1,
            cols: n as u32,
            samples: 1,
        };
        let (_, eps) = draw(&gpu, &sampler, shape, 0);
        let mut x = to_f64(&eps);
        let nf = n as f64;
        let mean = x.iter().sum::<f64>() / nf;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (nf - 1.0);
        // Sample mean of N(0,1): sd 1/√n. Sample variance: sd √(2/(n−1)).
        assert!(mean.abs() < 5.0 / nf.sqrt(), "mean {mean}");
        assert!(
            (var - 1.0).abs() < 5.0 * (2.0 / (nf - 1.0)).sqrt(),
            "variance {var}"
        );
        // Neighbours (the two halves of a Box–Muller pair and adjacent pairs) and the same
        // elements one step later must be uncorrelated: sample correlation sd 1/√n.
        let lag1 = correlation(&x[..n - 1], &x[1..]);
        let lag2 = correlation(&x[..n - 2], &x[2..]);
        sampler.set_step(&gpu, 1);
        let (_, next) = draw(&gpu, &sampler, shape, 0);
        let steps = correlation(&x, &to_f64(&next));
        for (what, r) in [("lag 1", lag1), ("lag 2", lag2), ("step", steps)] {
            assert!(r.abs() < 5.0 / nf.sqrt(), "{what} correlation {r}");
        }
        // Kolmogorov–Smirnov against Φ: the 0.1% critical value is 1.95/√n.
        x.sort_by(f64::total_cmp);
        let d = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let f = normal_cdf(v);
                (f - i as f64 / nf).max((i + 1) as f64 / nf - f)
            })
            .fold(0.0, f64::max);
        let crit = 1.95 / nf.sqrt();
        eprintln!(
            "{}: n {n}, mean {mean:.2e}, var−1 {:.2e}, corr lag1 {lag1:.1e} lag2 {lag2:.1e} \
             step {steps:.1e}, KS D {d:.2e} (critical {crit:.2e}), max |ε| {:.3}",
            gpu.describe(),
            var - 1.0,
            x[0].abs().max(x[n - 1].abs())
        );
        assert!(d < crit, "KS statistic {d} >= {crit}");
    }
}

#[test]
fn reparam_forward_matches_cpu_on_edge_values() {
    // logσ² over [−20, 20] (and exact edges), μ zero, moderate and huge.
    let mut rng = Lcg(5);
    let lv_edges = [-20.0, 20.0, 0.0, -1e-7, 1e-7, -10.0, 10.0];
    let mu_edges = [0.0, -0.0, 1.0, -1.0, 1e4, -1e4, 1e30, -1e30];
    let (rows, cols, samples) = (13u32, 77u32, 2u32);
    let per = (rows * cols) as usize;
    let mu: Vec<f32> = (0..per)
        .map(|i| {
            if i % 3 == 0 {
                mu_edges[i / 3 % mu_edges.len()]
            } else {
                rng.uniform(-3.0, 3.0) as f32
            }
        })
        .collect();
    let lv: Vec<f32> = (0..per)
        .map(|i| {
            if i % 4 == 0 {
                lv_edges[i / 4 % lv_edges.len()]
            } else {
                rng.uniform(-20.0, 20.0) as f32
            }
        })
        .collect();
    let shape = SampleShape {
        rows,
        cols,
        samples,
    };
    for gpu in all_gpus() {
        let sampler = Sampler::new(&gpu, SEED_A).unwrap();
        let muv = gpu.upload("mu", &mu).unwrap();
        let lvv = gpu.upload("lv", &lv).unwrap();
        let z = gpu.zeros("z", shape.total()).unwrap();
        let eps = gpu.zeros("eps", shape.total()).unwrap();
        gpu.run(&[&sampler
            .forward(&gpu, shape, 0, &muv, &lvv, &z, &eps)
            .unwrap()])
            .unwrap();
        let (z, eps) = (read_f32(&gpu, &z), read_f32(&gpu, &eps));
        // The GPU's own ε (checked against the CPU above), so this isolates exp and the FMA-free
        // arithmetic: exp(a) at a = logσ²/2 (exact) is within 3 + 2|a| ulp = (6 + 4|a|)u, the
        // product and the sum round once each.
        let want = cpu::reparam_forward(&to_f64(&mu), &to_f64(&lv), &to_f64(&eps));
        let name = format!("reparam forward on {}", gpu.describe());
        assert_close(&name, &z, &want, |e| {
            let i = e % per;
            let a = 0.5 * lv[i] as f64;
            let se = (a.exp() * eps[e] as f64).abs();
            (8.0 + 4.0 * a.abs()) * U32 * se + 2.0 * U32 * want[e].abs()
        });
    }
}

#[test]
fn reparam_backward_matches_finite_differences() {
    // L = Σ dz·z(μ, logσ²; ε fixed) is linear in μ and smooth in logσ²: central differences with
    // h = 1e-6 have truncation h²·|∂³L| ≲ 1e-12·e^{|lv|/2} and rounding ~1e-16·|L|/h ≈ 1e-9.
    let mut rng = Lcg(9);
    let (per, k) = (40, 3);
    let mu: Vec<f64> = (0..per).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let lv: Vec<f64> = (0..per).map(|_| rng.uniform(-5.0, 5.0)).collect();
    let eps: Vec<f64> = (0..per * k).map(|_| rng.uniform(-3.0, 3.0)).collect();
    let dz: Vec<f64> = (0..per * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let loss = |mu: &[f64], lv: &[f64]| -> f64 {
        cpu::reparam_forward(mu, lv, &eps)
            .iter()
            .zip(&dz)
            .map(|(z, g)| z * g)
            .sum()
    };
    let (mut dmu, mut dlv) = (vec![0.0; per], vec![0.0; per]);
    cpu::reparam_backward(&dz, &eps, &lv, &mut dmu, &mut dlv);
    let h = 1e-6;
    for i in 0..per {
        for (which, grad) in [("mu", dmu[i]), ("logvar", dlv[i])] {
            let (mut p, mut m) = if which == "mu" {
                (mu.clone(), mu.clone())
            } else {
                (lv.clone(), lv.clone())
            };
            p[i] += h;
            m[i] -= h;
            let fd = if which == "mu" {
                (loss(&p, &lv) - loss(&m, &lv)) / (2.0 * h)
            } else {
                (loss(&mu, &p) - loss(&mu, &m)) / (2.0 * h)
            };
            assert!(
                (fd - grad).abs() <= 1e-7 * (1.0 + grad.abs()),
                "d{which}[{i}]: analytic {grad}, finite difference {fd}"
            );
        }
    }
}

#[test]
fn reparam_backward_matches_cpu() {
    let mut rng = Lcg(21);
    let shape = SampleShape {
        rows: 19,
        cols: 67,
        samples: 3,
    };
    let per = shape.per_sample() as usize;
    let total = shape.total() as usize;
    let lv: Vec<f32> = (0..per)
        .map(|i| {
            if i % 5 == 0 {
                [-20.0, 20.0, 0.0][i / 5 % 3]
            } else {
                rng.uniform(-20.0, 20.0) as f32
            }
        })
        .collect();
    let eps = rng.vec(total, -4.0, 4.0);
    let dz = rng.vec(total, -1.0, 1.0);
    // dμ and dlogσ² arrive holding the KL gradient; the backward adds to them.
    let dmu0 = rng.vec(per, -1.0, 1.0);
    let dlv0 = rng.vec(per, -1.0, 1.0);
    let mut want_mu = to_f64(&dmu0);
    let mut want_lv = to_f64(&dlv0);
    cpu::reparam_backward(
        &to_f64(&dz),
        &to_f64(&eps),
        &to_f64(&lv),
        &mut want_mu,
        &mut want_lv,
    );
    let k = shape.samples as f64;
    for gpu in all_gpus() {
        let sampler = Sampler::new(&gpu, SEED_A).unwrap();
        let up = |name, v: &[f32]| gpu.upload(name, v).unwrap();
        let (dzv, epsv, lvv, dmu, dlv) = (
            up("dz", &dz),
            up("eps", &eps),
            up("lv", &lv),
            up("dmu", &dmu0),
            up("dlv", &dlv0),
        );
        gpu.run(&[&sampler
            .backward(&gpu, shape, &dzv, &epsv, &lvv, &dmu, &dlv)
            .unwrap()])
            .unwrap();
        let name = format!("reparam backward dmu on {}", gpu.describe());
        // K + 1 additions in f32: (K + 1)u times the sum of magnitudes.
        assert_close(&name, &read_f32(&gpu, &dmu), &want_mu, |i| {
            let s: f64 = (0..shape.samples as usize)
                .map(|j| dz[j * per + i].abs() as f64)
                .sum();
            (k + 1.0) * U32 * (s + dmu0[i].abs() as f64)
        });
        // Σ dz·ε: 2K roundings; ½ exp(a): (6 + 4|a|)u; the product and the final add: 2u.
        let name = format!("reparam backward dlogvar on {}", gpu.describe());
        assert_close(&name, &read_f32(&gpu, &dlv), &want_lv, |i| {
            let a = 0.5 * lv[i] as f64;
            let s: f64 = (0..shape.samples as usize)
                .map(|j| (dz[j * per + i] as f64 * eps[j * per + i] as f64).abs())
                .sum();
            (2.0 * k + 10.0 + 4.0 * a.abs()) * U32 * 0.5 * a.exp() * s
                + 2.0 * U32 * (dlv0[i].abs() as f64 + want_lv[i].abs())
        });
    }
}
