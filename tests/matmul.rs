//! The matmul kernels (tiled and subgroup, every layout, fused epilogues) against the f64 CPU
//! reference, on every adapter present.
//!
//! Tolerance. A dot product of K terms computed in f32 in any order, with or without fused
//! multiply-adds, satisfies the standard forward-error bound
//! `|ŝ − s| ≤ γ_K · (|op(A)|·|op(B)|)ᵢⱼ` with `γ_K = K·u / (1 − K·u)`, `u = 2⁻²⁴` (Higham,
//! *Accuracy and Stability of Numerical Algorithms*, §3.1): every term passes through at most K
//! roundings (one product, at most K − 1 sums; the kernels' extra additions of exact zeros in
//! masked K tails are exact). The bias is one more term: `γ_{K+1} · (|A||B| + |bias|)`. Products
//! that flush to zero below f32's normal range add at most 2⁻¹²⁶ each.
//!
//! The epilogue then propagates and adds error: an activation with Lipschitz constant L ≤ 1.2
//! (GELU's slope peaks at 1.13, the others at 1) maps an input error e to at most L·e, plus its
//! own error, which WGSL's exp/log precision bounds at `(8 + 4|x|)·u·|y|` (as in
//! tests/activation.rs); the derivative factor g has `(8 + 8|x|)·u·|g|` (tanh and sigmoid
//! derivatives take exp of 2|x|); a product `y·g` adds `|g|·e_y + |y|·e_g + u·|y·g|`, the
//! accumulation `u·|C|`. All of these are computed per element in f64.

mod common;

use common::{Lcg, U32, all_gpus, assert_close};
use vae_wgpu::cpu::activation as act_cpu;
use vae_wgpu::cpu::matmul as cpu;
use vae_wgpu::gpu::{Gpu, GpuError};
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::matmul::{
    Blocked, ColumnBlocks, Layout, Matmul, MatmulConfig, MatmulVariant,
};

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U32;
    nu / (1.0 - nu)
}

/// Activations whose WGSL implementation is exact up to one rounding.
fn exact_act(act: Activation) -> bool {
    matches!(
        act,
        Activation::Identity | Activation::Relu | Activation::LeakyRelu
    )
}

/// Inputs of one fused product (host copies of what is uploaded).
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// The pre-activation read by `grad_act`.
    aux: Option<Vec<f32>>,
    /// C before the dispatch (read back when accumulating).
    c_old: Vec<f32>,
}

impl Case {
    fn random(cfg: &MatmulConfig, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let mut rng = Lcg(seed);
        Case {
            m,
            n,
            k,
            a: rng.vec(m * k, -1.0, 1.0),
            b: rng.vec(k * n, -1.0, 1.0),
            bias: cfg.bias.then(|| rng.vec(n, -1.0, 1.0)),
            aux: cfg.grad_act.map(|_| rng.vec(m * n, -4.0, 4.0)),
            c_old: rng.vec(m * n, -1.0, 1.0),
        }
    }
}

/// Runs `case` through `matmul` and checks C (and the stored pre-activation) against the
/// reference within the bound derived in the module docs. Returns the worst err/tol.
fn check(gpu: &Gpu, matmul: &Matmul, case: &Case, what: &str) -> f64 {
    check_blocked(gpu, matmul, case, what, None)
}

/// A stored rows×ld matrix as column blocks of `width` at `stride` elements, NaN between blocks
/// (so a read of the gaps would poison the result).
fn scatter(dense: &[f32], rows: usize, ld: usize, width: usize, stride: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; (ld / width - 1) * stride + rows * width];
    for r in 0..rows {
        for c in 0..ld {
            out[(c / width) * stride + r * width + c % width] = dense[r * ld + c];
        }
    }
    out
}

fn gather(blocked: &[f32], rows: usize, ld: usize, width: usize, stride: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * ld];
    for r in 0..rows {
        for c in 0..ld {
            out[r * ld + c] = blocked[(c / width) * stride + r * width + c % width];
        }
    }
    out
}

/// [`check`], with the operands the config blocks stored as column blocks of `width` (strides
/// of 8 elements more than a block, NaN in between).
fn check_blocked(gpu: &Gpu, matmul: &Matmul, case: &Case, what: &str, width: Option<usize>) -> f64 {
    let cfg = *matmul.config();
    let (m, n, k) = (case.m, case.n, case.k);
    let name = format!(
        "{what}: {:?} {m}x{n}x{k} {} on {} (blocks of {width:?})",
        cfg,
        matmul.variant().name(),
        gpu.info.name
    );
    let (a_rows, a_ld) = if cfg.layout.trans_a() { (k, m) } else { (m, k) };
    let (b_rows, b_ld) = if cfg.layout.trans_b() { (n, k) } else { (k, n) };
    let w = width.unwrap_or(1);
    let stride = |rows: usize| rows * w + 8;
    let blocks = width.map(|w| ColumnBlocks {
        width: w as u32,
        a: stride(a_rows) as u32,
        b: stride(b_rows) as u32,
        c: stride(m) as u32,
        vector: stride(1) as u32,
    });
    let lay = |on: bool, v: &[f32], rows: usize, ld: usize| match (on, width) {
        (true, Some(w)) => scatter(v, rows, ld, w, stride(rows)),
        _ => v.to_vec(),
    };
    let bl = cfg.blocked;
    let av = gpu.upload("a", &lay(bl.a, &case.a, a_rows, a_ld)).unwrap();
    let bv = gpu.upload("b", &lay(bl.b, &case.b, b_rows, b_ld)).unwrap();
    let cv = gpu.upload("c", &lay(bl.c, &case.c_old, m, n)).unwrap();
    let biasv = (case.bias.as_ref()).map(|b| gpu.upload("bias", &lay(bl.c, b, 1, n)).unwrap());
    let auxv = if cfg.store_pre {
        let len = lay(bl.c, &vec![0.0; m * n], m, n).len();
        Some(gpu.zeros("aux", len as u64).unwrap())
    } else {
        (case.aux.as_ref()).map(|x| gpu.upload("aux", &lay(bl.c, x, m, n)).unwrap())
    };
    let dims = (m as u32, n as u32, k as u32);
    let dispatch = matmul
        .bind_blocked(
            gpu,
            dims,
            [&av, &bv, &cv],
            biasv.as_ref(),
            auxv.as_ref(),
            blocks.as_ref(),
        )
        .unwrap();
    gpu.run(&[&dispatch]).unwrap();
    let unlay = |v: Vec<f32>| match (bl.c, width) {
        (true, Some(w)) => gather(&v, m, n, w, stride(m)),
        _ => v,
    };
    let got = unlay(gpu.read(&cv).unwrap());

    let want = cpu::fused(
        &cfg,
        m,
        n,
        k,
        &case.a,
        &case.b,
        case.bias.as_deref(),
        case.aux.as_deref(),
        Some(&case.c_old),
    );
    let scale = cpu::matmul_abs(cfg.layout, m, n, k, &case.a, &case.b);
    let ftz = k as f64 * f32::MIN_POSITIVE as f64;
    let pre_err: Vec<f64> = (0..m * n)
        .map(|i| {
            let bias = case.bias.as_ref().map_or(0.0, |b| (b[i % n] as f64).abs());
            let terms = k + usize::from(cfg.bias);
            gamma(terms) * (scale[i] + bias) + ftz
        })
        .collect();
    let tol = |i: usize| {
        let p = want.pre[i];
        let y = act_cpu::forward(cfg.act, p);
        let own = if exact_act(cfg.act) {
            0.0
        } else {
            (8.0 + 4.0 * p.abs().min(100.0)) * U32
        };
        let mut e = 1.2 * pre_err[i] + (own + U32) * y.abs();
        let mut v = y;
        if let Some(g_act) = cfg.grad_act {
            let x = case.aux.as_ref().unwrap()[i] as f64;
            let g = act_cpu::derivative(g_act, x);
            let e_g = if exact_act(g_act) {
                0.0
            } else {
                (8.0 + 8.0 * x.abs().min(100.0)) * U32 * g.abs()
            };
            v = y * g;
            e = g.abs() * e + y.abs() * e_g + U32 * v.abs();
        }
        if cfg.accumulate {
            e += U32 * (v + case.c_old[i] as f64).abs();
        }
        e
    };
    let worst = assert_close(&name, &got, &want.c, tol);
    if cfg.store_pre {
        let pre = unlay(gpu.read(auxv.as_ref().unwrap()).unwrap());
        assert_close(&format!("{name} (pre-activation)"), &pre, &want.pre, |i| {
            pre_err[i]
        });
    }
    worst
}

/// Shapes not multiples of any tile, covering 1, primes, 129, 784 and the model's shapes: partial
/// tiles in every dimension for both kernels (64×64 tiles), K of every residue mod 4 (the
/// subgroup kernel's k-blocks) and not a multiple of 16 (the tiled kernel's K slices).
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 3, 17),
    (3, 17, 127),
    (17, 129, 3),
    (127, 3, 129),
    (65, 66, 130),
    (129, 784, 17),
    (784, 127, 128),
    (4, 8, 12),
    (128, 400, 784),
    (784, 400, 128),
    // Multiples of 4 along every operand's rows (the vec4 kernel's texels) that are not tile
    // multiples: partial 32×64 tiles, K not a multiple of 32, and in TN a K tail (K = 33).
    (36, 68, 20),
    (132, 4, 8),
    (4, 100, 33 * 4),
    (100, 44, 33),
];

#[test]
fn layouts_match_the_cpu_reference_on_every_variant() {
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            for layout in Layout::ALL {
                let cfg = MatmulConfig::new(layout);
                let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
                assert_eq!(matmul.variant(), variant);
                for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
                    if !variant.fits(layout, m as u32, n as u32, k as u32) {
                        continue;
                    }
                    let case = Case::random(&cfg, m, n, k, 100 + i as u64);
                    check(&gpu, &matmul, &case, "product");
                }
            }
        }
    }
}

#[test]
fn fused_epilogues_match_the_cpu_reference() {
    let base = MatmulConfig::new(Layout::NN);
    let configs = [
        MatmulConfig {
            bias: true,
            act: Activation::Relu,
            ..base
        },
        MatmulConfig {
            bias: true,
            act: Activation::Tanh,
            store_pre: true,
            ..base
        },
        MatmulConfig {
            bias: true,
            act: Activation::Gelu,
            store_pre: true,
            ..base
        },
        MatmulConfig {
            grad_act: Some(Activation::Relu),
            ..base
        },
        MatmulConfig {
            grad_act: Some(Activation::Tanh),
            ..base
        },
        MatmulConfig {
            accumulate: true,
            ..base
        },
        MatmulConfig {
            bias: true,
            act: Activation::Sigmoid,
            accumulate: true,
            ..base
        },
        MatmulConfig {
            grad_act: Some(Activation::Sigmoid),
            accumulate: true,
            ..base
        },
        MatmulConfig {
            bias: true,
            act: Activation::LeakyRelu,
            ..base
        },
    ];
    // Partial tiles with a K tail, and a shape whose sizes are multiples of 4. The epilogue code
    // does not depend on the layout, so each config runs in one layout, in turn (every layout is
    // covered by the product test): a pipeline per config and variant keeps the driver's shader
    // compiles (about a second each on lavapipe) within reason.
    let shapes = [(37, 33, 65), (64, 40, 36), (36, 20, 52)];
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            for (i, cfg) in configs.into_iter().enumerate() {
                let cfg = MatmulConfig {
                    layout: Layout::ALL[i % 3],
                    ..cfg
                };
                let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
                for (j, &(m, n, k)) in shapes.iter().enumerate() {
                    if !variant.fits(cfg.layout, m as u32, n as u32, k as u32) {
                        continue;
                    }
                    let case = Case::random(&cfg, m, n, k, 7 + j as u64);
                    check(&gpu, &matmul, &case, "epilogue");
                }
            }
        }
    }
}

#[test]
fn edge_values() {
    // Exact zeros, ±1e3 magnitudes with mixed signs (sums up to ~1e8 that cancel), and a
    // sparse mix: the bound scales with |A||B|, so zeros must come out exact.
    let shapes = [(33, 47, 129), (32, 64, 36), (36, 20, 44)];
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            for layout in Layout::ALL {
                let cfg = MatmulConfig {
                    bias: true,
                    act: Activation::Relu,
                    ..MatmulConfig::new(layout)
                };
                let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
                for &(m, n, k) in &shapes {
                    if !variant.fits(layout, m as u32, n as u32, k as u32) {
                        continue;
                    }
                    let mut rng = Lcg(3);
                    let zeros = Case {
                        m,
                        n,
                        k,
                        a: vec![0.0; m * k],
                        b: rng.vec(k * n, -1e3, 1e3),
                        bias: Some(vec![0.0; n]),
                        aux: None,
                        c_old: vec![f32::NAN; m * n],
                    };
                    check(&gpu, &matmul, &zeros, "zero A");
                    let big = Case {
                        m,
                        n,
                        k,
                        a: rng.vec(m * k, -1e3, 1e3),
                        b: rng.vec(k * n, -1e3, 1e3),
                        bias: Some(rng.vec(n, -1e3, 1e3)),
                        aux: None,
                        c_old: vec![0.0; m * n],
                    };
                    check(&gpu, &matmul, &big, "±1e3");
                    let sparse = |rng: &mut Lcg, len| -> Vec<f32> {
                        (0..len)
                            .map(|_| match (rng.next_f64() * 4.0) as u32 {
                                0 => 0.0,
                                1 => rng.uniform(-1e3, 1e3) as f32,
                                2 => rng.uniform(-1e-3, 1e-3) as f32,
                                _ => -1.0,
                            })
                            .collect()
                    };
                    let mixed = Case {
                        m,
                        n,
                        k,
                        a: sparse(&mut rng, m * k),
                        b: sparse(&mut rng, k * n),
                        bias: Some(sparse(&mut rng, n)),
                        aux: None,
                        c_old: vec![0.0; m * n],
                    };
                    check(&gpu, &matmul, &mixed, "mixed magnitudes");
                }
            }
        }
    }
}

#[test]
fn huge_grids_fold_under_the_dispatch_limit() {
    // 1×K · K×N with N past 65535 workgroups of every kernel (64 columns each); K = 4 and N a
    // multiple of 4 for the vec4 kernel, whose B texture then needs rows wider than 64 texels.
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            let (n, k) = if variant.fits(Layout::NN, 1, 4_200_001, 1) {
                (4_200_001, 1)
            } else {
                (4_200_000, 4)
            };
            let cfg = MatmulConfig::new(Layout::NN);
            let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
            let b: Vec<f32> = (0..n * k).map(|i| (i % 1000) as f32).collect();
            let case = Case {
                m: 1,
                n,
                k,
                a: vec![-0.5; k],
                b,
                bias: None,
                aux: None,
                c_old: vec![0.0; n],
            };
            check(&gpu, &matmul, &case, "folded grid");
        }
    }
}

#[test]
fn the_subgroup_kernel_runs_on_lavapipe() {
    // The fast path must not silently go untested: wherever the Vulkan software adapter is
    // present, it has subgroups and the default choice is the subgroup kernel.
    for gpu in all_gpus() {
        let lavapipe = gpu.info.backend == wgpu::Backend::Vulkan && gpu.is_software();
        if lavapipe {
            assert!(gpu.has_subgroups(), "{} lacks subgroups", gpu.describe());
        }
        let matmul = Matmul::new(&gpu, MatmulConfig::new(Layout::NN), None).unwrap();
        let want = if lavapipe {
            MatmulVariant::Subgroup
        } else {
            MatmulVariant::auto(&gpu)
        };
        assert_eq!(matmul.variant(), want, "{}", gpu.describe());
        assert_eq!(
            MatmulVariant::available(&gpu).contains(&MatmulVariant::Subgroup),
            gpu.has_subgroups()
        );
    }
}

#[test]
fn bad_bindings_are_typed_errors() {
    for gpu in all_gpus() {
        if !gpu.has_subgroups() {
            let e = Matmul::new(
                &gpu,
                MatmulConfig::new(Layout::NN),
                Some(MatmulVariant::Subgroup),
            );
            assert!(matches!(e, Err(GpuError::Shape { .. })), "{e:?}");
        }
        if gpu.has_subgroups() {
            // The vec4 kernel reads whole texels: K = 5 in NN is a named error, not a wrong product.
            let vec4 = Matmul::new(
                &gpu,
                MatmulConfig::new(Layout::NN),
                Some(MatmulVariant::SubgroupVec4),
            )
            .unwrap();
            let v = |len| gpu.zeros("v", len).unwrap();
            let e = vec4.bind(&gpu, 4, 4, 5, &v(20), &v(20), &v(16), None, None);
            assert!(
                matches!(&e, Err(GpuError::Shape { reason, .. }) if reason.contains("vec4")),
                "{e:?}"
            );
        }
        let both = MatmulConfig {
            store_pre: true,
            grad_act: Some(Activation::Relu),
            ..MatmulConfig::new(Layout::NN)
        };
        assert!(matches!(
            Matmul::new(&gpu, both, None),
            Err(GpuError::Shape { .. })
        ));

        let cfg = MatmulConfig {
            bias: true,
            ..MatmulConfig::new(Layout::TN)
        };
        let matmul = Matmul::new(&gpu, cfg, None).unwrap();
        let v = |len| gpu.zeros("v", len).unwrap();
        let (a, b, c, bias) = (v(12), v(20), v(15), v(5));
        // 3×5 = (4×3)ᵀ · 4×5: fits exactly.
        assert!(
            matmul
                .bind(&gpu, 3, 5, 4, &a, &b, &c, Some(&bias), None)
                .is_ok()
        );
        let short = v(14);
        for e in [
            matmul.bind(&gpu, 3, 5, 4, &a, &b, &short, Some(&bias), None),
            matmul.bind(&gpu, 3, 5, 4, &a, &short, &c, Some(&bias), None),
            matmul.bind(&gpu, 3, 5, 4, &a, &b, &c, Some(&v(4)), None),
            matmul.bind(&gpu, 3, 5, 4, &a, &b, &c, None, None),
            matmul.bind(&gpu, 3, 5, 4, &a, &b, &c, Some(&bias), Some(&c)),
            matmul.bind(&gpu, 0, 5, 4, &a, &b, &c, Some(&bias), None),
        ] {
            match e {
                Err(GpuError::Shape { kernel, reason }) => {
                    assert!(kernel.starts_with("matmul"), "{kernel}: {reason}")
                }
                other => panic!("expected a shape error, got {other:?}"),
            }
        }
    }
}

#[test]
fn cpu_layouts_are_explicit_transposes() {
    // TN and NT equal NN on explicitly transposed inputs, bit for bit (same summation order).
    let mut rng = Lcg(5);
    for &(m, n, k) in &[(1, 1, 1), (3, 17, 5), (17, 4, 33), (8, 9, 10)] {
        let a = rng.vec(m * k, -1.0, 1.0); // M×K
        let b = rng.vec(k * n, -1.0, 1.0); // K×N
        let nn = cpu::matmul(Layout::NN, m, n, k, &a, &b);
        let at = cpu::transpose(m, k, &a); // K×M
        let bt = cpu::transpose(k, n, &b); // N×K
        assert_eq!(cpu::matmul(Layout::TN, m, n, k, &at, &b), nn);
        assert_eq!(cpu::matmul(Layout::NT, m, n, k, &a, &bt), nn);
        // And NN itself against the textbook triple loop.
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                assert_eq!(nn[i * n + j], s);
            }
        }
    }
    // The epilogue on a hand-checked element: relu(2·3 + (−1)·4 + 0.5) = 2.5, plus old C 1.
    let cfg = MatmulConfig {
        bias: true,
        act: Activation::Relu,
        accumulate: true,
        ..MatmulConfig::new(Layout::NN)
    };
    let f = cpu::fused(
        &cfg,
        1,
        1,
        2,
        &[2.0f32, -1.0],
        &[3.0, 4.0],
        Some(&[0.5]),
        None,
        Some(&[1.0]),
    );
    assert_eq!((f.c[0], f.pre[0]), (3.5, 2.5));
}

/// The weight-gradient pass with the bias gradient fused in: C = AᵀB and aux = Σ_k B[k, ·] (a
/// virtual row of ones in op(A)), overwriting and accumulating. M sits on both sides of the
/// kernels' row tiles (32 and 64), so the virtual row M falls inside a partial tile and in a tile
/// of its own. Each column sum has K terms: bound γ_K·Σ_k|B[k, n]| (+ u·|aux| when accumulating).
#[test]
fn weight_gradient_writes_the_bias_gradient() {
    let shapes = [
        (31, 33, 65),
        (32, 7, 129),
        (64, 40, 36),
        (127, 3, 5),
        (1, 1, 1),
        (36, 20, 33),
        (32, 8, 5),
        (28, 12, 128),
    ];
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            for accumulate in [false, true] {
                let cfg = MatmulConfig {
                    accumulate,
                    column_sums: true,
                    ..MatmulConfig::new(Layout::TN)
                };
                let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
                for (j, &(m, n, k)) in shapes.iter().enumerate() {
                    if !variant.fits(cfg.layout, m as u32, n as u32, k as u32) {
                        continue;
                    }
                    let mut rng = Lcg(40 + j as u64);
                    let a = rng.vec(k * m, -1.0, 1.0);
                    let mut b = rng.vec(k * n, -1.0, 1.0);
                    b[0] = 1e3;
                    let c_old = rng.vec(m * n, -1.0, 1.0);
                    let sums_old = rng.vec(n, -1.0, 1.0);
                    let (av, bv) = (gpu.upload("a", &a).unwrap(), gpu.upload("b", &b).unwrap());
                    let cv = gpu.upload("c", &c_old).unwrap();
                    let sv = gpu.upload("sums", &sums_old).unwrap();
                    let d = matmul
                        .bind(
                            &gpu,
                            m as u32,
                            n as u32,
                            k as u32,
                            &av,
                            &bv,
                            &cv,
                            None,
                            Some(&sv),
                        )
                        .unwrap();
                    gpu.run(&[&d]).unwrap();
                    let name = format!(
                        "{} {m}x{n}x{k} accumulate={accumulate} on {}",
                        variant.name(),
                        gpu.info.name
                    );
                    let old = |v: f32| if accumulate { v as f64 } else { 0.0 };
                    let mut want = cpu::matmul(Layout::TN, m, n, k, &a, &b);
                    want.iter_mut().zip(&c_old).for_each(|(w, &o)| *w += old(o));
                    let scale = cpu::matmul_abs(Layout::TN, m, n, k, &a, &b);
                    let got: Vec<f32> = gpu.read(&cv).unwrap();
                    assert_close(&format!("{name}: weights"), &got, &want, |i| {
                        gamma(k) * scale[i] + U32 * want[i].abs() + 1e-30
                    });
                    let b = &b;
                    let col = |c: usize| (0..k).map(move |r| b[r * n + c] as f64);
                    let want: Vec<f64> = (0..n)
                        .map(|c| col(c).sum::<f64>() + old(sums_old[c]))
                        .collect();
                    let abs: Vec<f64> = (0..n).map(|c| col(c).map(f64::abs).sum()).collect();
                    let got: Vec<f32> = gpu.read(&sv).unwrap();
                    assert_close(&format!("{name}: column sums"), &got, &want, |i| {
                        gamma(k) * abs[i] + U32 * want[i].abs() + 1e-30
                    });
                }
            }
        }
    }
}

#[test]
fn column_sums_need_a_plain_product() {
    let gpu = all_gpus().remove(0);
    let cfg = MatmulConfig {
        bias: true,
        column_sums: true,
        ..MatmulConfig::new(Layout::TN)
    };
    let err = Matmul::new(&gpu, cfg, None).expect_err("must fail");
    assert!(
        err.to_string().contains("only for products without bias"),
        "{err}"
    );
    let plain = MatmulConfig {
        column_sums: true,
        ..MatmulConfig::new(Layout::TN)
    };
    let mm = Matmul::new(&gpu, plain, None).unwrap();
    let v = gpu.zeros("v", 64).unwrap();
    let err = mm
        .bind(&gpu, 4, 4, 4, &v, &v, &v, None, None)
        .expect_err("must fail");
    assert!(err.to_string().contains("pass `aux`"), "{err}");
}

/// Two heads as one product: operands stored as column blocks (NaN between them), in each
/// layout with the blocks a training step uses, plus every operand blocked at once; a block width
/// of 20 (the model's latent: the vec4 kernel runs too) and of 3.
#[test]
fn column_blocks_match_the_dense_product() {
    let nn = MatmulConfig {
        bias: true,
        act: Activation::Tanh,
        store_pre: true,
        blocked: Blocked::new(true, true, true),
        ..MatmulConfig::new(Layout::NN)
    };
    let tn = MatmulConfig {
        accumulate: true,
        blocked: Blocked::new(true, true, true),
        ..MatmulConfig::new(Layout::TN)
    };
    let nt = MatmulConfig {
        grad_act: Some(Activation::Relu),
        accumulate: true,
        blocked: Blocked::new(true, true, false),
        ..MatmulConfig::new(Layout::NT)
    };
    let heads = MatmulConfig {
        bias: true,
        blocked: Blocked::new(false, true, true),
        ..MatmulConfig::new(Layout::NN)
    };
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            for cfg in [nn, tn, nt, heads] {
                let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
                for (width, free) in [(20, 37), (3, 13)] {
                    // Every blocked operand two blocks wide; the other dimensions odd.
                    let two = 2 * width;
                    let (m, n, k) = match (cfg.layout, cfg.blocked.a) {
                        (Layout::NN, true) => (free, two, two),
                        (Layout::NN, false) => (free, two, free + 7),
                        (Layout::TN, _) => (two, two, free),
                        (Layout::NT, _) => (free, free + 3, two),
                    };
                    let stride = |rows: usize| (rows * width + 8) as u32;
                    let blocks = ColumnBlocks {
                        width: width as u32,
                        a: stride(if cfg.layout.trans_a() { k } else { m }),
                        b: stride(if cfg.layout.trans_b() { n } else { k }),
                        c: stride(m),
                        vector: stride(1),
                    };
                    let dims = (m as u32, n as u32, k as u32);
                    if !variant.fits_blocks(cfg.layout, dims.0, dims.1, dims.2, Some(&blocks)) {
                        continue;
                    }
                    let case = Case::random(&cfg, m, n, k, 60 + width as u64);
                    check_blocked(&gpu, &matmul, &case, "column blocks", Some(width));
                }
            }
        }
    }
}

/// The heads' weight gradient: dW of both heads and their bias gradients (column sums) in one TN
/// pass, each written to its own block.
#[test]
fn blocked_weight_gradient_writes_each_heads_bias_gradient() {
    let cfg = MatmulConfig {
        column_sums: true,
        blocked: Blocked::new(false, true, true),
        ..MatmulConfig::new(Layout::TN)
    };
    let (m, k, width) = (36, 33, 20);
    let n = 2 * width;
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
            let mut rng = Lcg(77);
            let a = rng.vec(k * m, -1.0, 1.0);
            let b = rng.vec(k * n, -1.0, 1.0);
            let (bs, cs, vs) = (k * width + 8, m * width + 8, width + 8);
            let blocks = ColumnBlocks {
                width: width as u32,
                b: bs as u32,
                c: cs as u32,
                vector: vs as u32,
                ..Default::default()
            };
            let av = gpu.upload("a", &a).unwrap();
            let bv = gpu.upload("b", &scatter(&b, k, n, width, bs)).unwrap();
            let cv = gpu
                .upload("c", &scatter(&vec![0.0; m * n], m, n, width, cs))
                .unwrap();
            let sv = gpu
                .upload("sums", &scatter(&vec![0.0; n], 1, n, width, vs))
                .unwrap();
            let d = matmul
                .bind_blocked(
                    &gpu,
                    (m as u32, n as u32, k as u32),
                    [&av, &bv, &cv],
                    None,
                    Some(&sv),
                    Some(&blocks),
                )
                .unwrap();
            gpu.run(&[&d]).unwrap();
            let name = format!("{} on {}", variant.name(), gpu.info.name);
            let want = cpu::matmul(Layout::TN, m, n, k, &a, &b);
            let scale = cpu::matmul_abs(Layout::TN, m, n, k, &a, &b);
            let got = gather(&gpu.read(&cv).unwrap(), m, n, width, cs);
            assert_close(&format!("{name}: weights"), &got, &want, |i| {
                gamma(k) * scale[i] + 1e-30
            });
            let b = &b;
            let col = |c: usize| (0..k).map(move |r| b[r * n + c] as f64);
            let want: Vec<f64> = (0..n).map(|c| col(c).sum()).collect();
            let abs: Vec<f64> = (0..n).map(|c| col(c).map(f64::abs).sum()).collect();
            let got = gather(&gpu.read(&sv).unwrap(), 1, n, width, vs);
            assert_close(&format!("{name}: column sums"), &got, &want, |i| {
                gamma(k) * abs[i] + 1e-30
            });
        }
    }
}

#[test]
fn bad_column_blocks_are_typed_errors() {
    let gpu = all_gpus().remove(0);
    let cfg = MatmulConfig {
        blocked: Blocked::new(false, true, false),
        ..MatmulConfig::new(Layout::NN)
    };
    let mm = Matmul::new(&gpu, cfg, Some(MatmulVariant::Tiled)).unwrap();
    let v = gpu.zeros("v", 4096).unwrap();
    let dims = (4, 8, 4);
    let bind = |blocks: Option<&ColumnBlocks>| {
        mm.bind_blocked(&gpu, dims, [&v, &v, &v], None, None, blocks)
            .expect_err("must fail")
            .to_string()
    };
    assert!(bind(None).contains("pass them"));
    // 8 columns in blocks of 3; blocks of 4 that overlap (stride 8 < 4 rows · 4).
    for (width, stride) in [(3, 64), (4, 8)] {
        let b = ColumnBlocks {
            width,
            b: stride,
            ..Default::default()
        };
        assert!(bind(Some(&b)).contains("do not tile"), "{}", bind(Some(&b)));
    }
    let plain = Matmul::new(&gpu, MatmulConfig::new(Layout::NN), None).unwrap();
    let e = plain
        .bind_blocked(
            &gpu,
            dims,
            [&v, &v, &v],
            None,
            None,
            Some(&ColumnBlocks::default()),
        )
        .expect_err("must fail");
    assert!(e.to_string().contains("no blocked operand"), "{e}");
}

/// The reparameterization's backward in the epilogue of the product forming dz: dμ += dz and
/// dlogσ² += dz·ε·exp(logσ²/2)/2, against the reference in f64, with logσ² from −30 to 30.
/// Tolerance: dz as a K-term product (γ_K·|A||B|), scaled by s = ε·exp(logσ²/2)/2 whose exp
/// carries (8 + 4|x|)·u relative error (as tests/activation.rs), three more roundings of the
/// product, and one of each sum.
#[test]
fn reparam_epilogue_matches_the_sample_backward() {
    let cfg = MatmulConfig {
        accumulate: true,
        reparam: true,
        ..MatmulConfig::new(Layout::NT)
    };
    let (m, n, k) = (37, 20, 44);
    for gpu in all_gpus() {
        for variant in MatmulVariant::available(&gpu) {
            let matmul = Matmul::new(&gpu, cfg, Some(variant)).unwrap();
            let mut rng = Lcg(91);
            let a = rng.vec(m * k, -1.0, 1.0);
            let b = rng.vec(n * k, -1.0, 1.0);
            let eps = rng.vec(m * n, -3.0, 3.0);
            let mut logvar = rng.vec(m * n, -4.0, 4.0);
            logvar[0] = -30.0;
            logvar[1] = 30.0;
            logvar[2] = 0.0;
            let dmu_old = rng.vec(m * n, -1.0, 1.0);
            let dlv_old = rng.vec(m * n, -1.0, 1.0);
            let up = |name, v: &[f32]| gpu.upload(name, v).unwrap();
            let (av, bv) = (up("a", &a), up("b", &b));
            let (dmu, dlv) = (up("dmu", &dmu_old), up("dlogvar", &dlv_old));
            let (ev, lv) = (up("eps", &eps), up("logvar", &logvar));
            let d = matmul
                .bind_reparam(
                    &gpu,
                    (m as u32, n as u32, k as u32),
                    [&av, &bv],
                    [&dmu, &dlv],
                    [&ev, &lv],
                    None,
                )
                .unwrap();
            gpu.run(&[&d]).unwrap();
            let name = format!("reparam {} on {}", variant.name(), gpu.info.name);
            let dz = cpu::matmul(Layout::NT, m, n, k, &a, &b);
            let dz_err: Vec<f64> = cpu::matmul_abs(Layout::NT, m, n, k, &a, &b)
                .iter()
                .map(|s| gamma(k) * s + 1e-30)
                .collect();
            let want: Vec<f64> = (0..m * n).map(|i| dmu_old[i] as f64 + dz[i]).collect();
            let got: Vec<f32> = gpu.read(&dmu).unwrap();
            assert_close(&format!("{name}: dmu"), &got, &want, |i| {
                dz_err[i] + U32 * want[i].abs()
            });
            let scale = |i: usize| eps[i] as f64 * 0.5 * (0.5 * logvar[i] as f64).exp();
            let want: Vec<f64> = (0..m * n)
                .map(|i| dlv_old[i] as f64 + dz[i] * scale(i))
                .collect();
            let got: Vec<f32> = gpu.read(&dlv).unwrap();
            assert_close(&format!("{name}: dlogvar"), &got, &want, |i| {
                let x = (0.5 * logvar[i] as f64).abs();
                let prod = (dz[i] * scale(i)).abs();
                scale(i).abs() * dz_err[i] + (11.0 + 4.0 * x) * U32 * prod + U32 * want[i].abs()
            });
        }
    }
}

#[test]
fn reparam_needs_an_accumulating_product() {
    let gpu = all_gpus().remove(0);
    let cfg = MatmulConfig {
        reparam: true,
        ..MatmulConfig::new(Layout::NT)
    };
    let err = Matmul::new(&gpu, cfg, None).expect_err("must fail");
    assert!(err.to_string().contains("accumulate"), "{err}");
}
