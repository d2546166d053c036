//! 2-D convolution and transposed convolution (forward, data and weight gradients, bias
//! gradients): the f64 reference against central finite differences and against each other (the
//! adjoint identity), and the GPU kernels (the implicit GEMM and every other variant a pass has:
//! direct, columns) against the reference on every adapter, on shapes that fill no tile, edge
//! values, and the Keras example's convolutional VAE. The variants sum the same products in
//! other orders (columns: per tap over channels, then over taps), so the same bounds hold.
//!
//! GPU tolerance, as in tests/matmul.rs: each output element is a sum of T products (and the
//! bias), which f32 forms, in any order and with or without fused multiply-adds, to within
//! `γ_T·Σ|terms|`, `γ_T = T·u/(1 − T·u)`, u = 2⁻²⁴ (Higham §3.1); the implicit GEMM's zero
//! operands (padding, taps no output position uses, the masked K tail) add exact zeros. T per
//! element: forward K = C_in·KH·KW (+1 bias), conv2d data gradient C_out·KH·KW, weight gradient
//! N·H_out·W_out (the positions of the plain-direction output), bias gradient N·H_out·W_out.
//! Σ|terms| is the reference run on |x|, |w|, |dy|, |bias|. Products that flush to zero lose at
//! most 2⁻¹²⁶ each. A fused activation adds its Lipschitz factor (≤ 1.2) and its own error
//! bound `(8 + 4|x|)·u·|y|` (tests/activation.rs); accumulation adds `u·|result|`.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::activation as act_cpu;
use vae_wgpu::cpu::conv::{self as cpu, Grads};
use vae_wgpu::gpu::{Gpu, GpuError, View};
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::conv::{Conv, ConvConfig, ConvOp, ConvShape, ConvVariant};

fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    nu / (1.0 - nu)
}

const FLUSH: f64 = f32::MIN_POSITIVE as f64;

fn abs(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| x.abs()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn forward(s: &ConvShape, t: bool, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    if t {
        cpu::conv_transpose2d(s, x, w, b)
    } else {
        cpu::conv2d(s, x, w, b)
    }
}

fn backward(s: &ConvShape, t: bool, x: &[f64], w: &[f64], dy: &[f64]) -> Grads {
    if t {
        cpu::conv_transpose2d_backward(s, x, w, dy)
    } else {
        cpu::conv2d_backward(s, x, w, dy)
    }
}

/// Products per output element of each pass: (forward, data gradient, weight gradient, bias
/// gradient), per the module docs.
fn terms(s: &ConvShape, t: bool) -> (usize, usize, usize, usize) {
    let (oh, ow) = s.out_hw(t).unwrap();
    let taps = (s.kh * s.kw) as usize;
    let (ci, co, n) = (s.c_in as usize, s.c_out as usize, s.batch as usize);
    let out_sp = (oh * ow) as usize;
    let in_sp = (s.h * s.w) as usize;
    if t {
        // Forward is the conv2d data gradient of the plain-direction conv (C_out = c_in here).
        (ci * taps, co * taps, n * in_sp, n * out_sp)
    } else {
        (ci * taps, co * taps, n * out_sp, n * out_sp)
    }
}

// ---------------------------------------------------------------- CPU

/// Small shapes for the CPU checks: stride 1 and 2 and 3, padding 0 to 2, non-square kernels
/// and images, output_pad 0 and 1 (the transposed shapes).
fn cpu_shapes() -> Vec<(ConvShape, bool)> {
    let sh = |n, ci, h, w, co, kh, kw, s, p, op| ConvShape {
        batch: n,
        c_in: ci,
        h,
        w,
        c_out: co,
        kh,
        kw,
        stride: s,
        pad: p,
        output_pad: op,
    };
    vec![
        (sh(2, 2, 5, 4, 3, 3, 2, 2, 1, 0), false),
        (sh(1, 3, 6, 6, 2, 3, 3, 1, 1, 0), false),
        (sh(2, 1, 7, 5, 2, 2, 3, 3, 2, 0), false),
        (sh(2, 2, 3, 4, 3, 3, 2, 2, 1, 1), true),
        (sh(1, 3, 4, 4, 2, 4, 4, 2, 1, 0), true),
        (sh(2, 2, 3, 2, 1, 3, 3, 3, 2, 2), true),
    ]
}

#[test]
fn cpu_gradients_match_finite_differences() {
    // L = Σ G ⊙ Y(x, w, b) with a random G. L is affine in each single coordinate of x, w and b,
    // so the central difference (L(v + h) − L(v − h))/2h has no truncation error at all: what
    // remains is rounding. Each L is formed in f64 with chains of at most T = (products + outputs
    // + 1) roundings, so each is within γ_T(2⁻⁵³)·S of exact, S = Σ|G|·(|w|*|x| + |b|) evaluated
    // at |v| + h (bounding both perturbed points); the difference over 2h: γ_T·S/h. The analytic
    // gradient adds γ_T·(its own Σ|terms|). h = 1e-3: tolerances come out ~1e-9, while a wrong
    // index gives errors of order 1.
    let u = f64::EPSILON / 2.0;
    let h = 1e-3;
    let mut worst = 0.0f64;
    for (i, (s, t)) in cpu_shapes().into_iter().enumerate() {
        let mut rng = Lcg(40 + i as u64);
        let mut v = |n: u64| -> Vec<f64> { (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect() };
        let (x, w, b) = (v(s.input_len()), v(s.weight_len()), v(s.c_out as u64));
        let g = v(s.output_len(t));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&g, &forward(&s, t, x, w, Some(b)));
        let an = backward(&s, t, &x, &w, &g);
        let plus = |v: &[f64]| -> Vec<f64> { v.iter().map(|a| a.abs() + h).collect() };
        let big = dot(
            &abs(&g),
            &forward(&s, t, &plus(&x), &plus(&w), Some(&plus(&b))),
        );
        let an_abs = backward(&s, t, &abs(&x), &abs(&w), &abs(&g));
        let products = s.weight_len() as usize * s.output_len(t) as usize;
        let gam = gamma(products + s.output_len(t) as usize + 1, u);
        let names = ["x", "w", "b"];
        let analytic = [&an.dx, &an.dw, &an.db];
        let scales = [&an_abs.dx, &an_abs.dw, &an_abs.db];
        for which in 0..3 {
            let len = analytic[which].len();
            for k in 0..len {
                let mut vs = [x.clone(), w.clone(), b.clone()];
                vs[which][k] += h;
                let lp = loss(&vs[0], &vs[1], &vs[2]);
                vs[which][k] -= 2.0 * h;
                let lm = loss(&vs[0], &vs[1], &vs[2]);
                let fd = (lp - lm) / (2.0 * h);
                let a = analytic[which][k];
                let tol = gam * (big / h + scales[which][k]);
                worst = worst.max((fd - a).abs() / tol);
                assert!(
                    (fd - a).abs() <= tol,
                    "{s:?} transposed={t}: d/d{}[{k}] analytic {a}, finite difference {fd}, \
                     tol {tol:e}",
                    names[which]
                );
            }
        }
    }
    eprintln!("finite differences: max err/tol {worst:.3e}");
}

#[test]
fn cpu_transposed_conv_is_the_adjoint_of_conv2d() {
    // ⟨conv2d(X), Y⟩ = ⟨X, conv_transpose2d(Y)⟩ for the transposed conv with conv2d's weight,
    // stride and padding and output_pad = (H + 2p − K) mod s (which restores H). Both sides sum
    // the same products x·w·y in different orders, each within γ_T(2⁻⁵³)·Σ|x||w||y| of exact
    // (T = products + outputs + 1), so they differ by at most twice that.
    let u = f64::EPSILON / 2.0;
    let mut worst = 0.0f64;
    let cases: &[[u32; 7]] = &[
        // batch, c_in, H = W, c_out, k, stride, pad
        [2, 3, 7, 5, 3, 2, 1],
        [1, 2, 8, 3, 4, 2, 1],
        [2, 1, 9, 2, 3, 3, 2],
        [1, 2, 6, 2, 1, 1, 0],
        [2, 3, 5, 4, 3, 1, 1],
        [1, 1, 28, 2, 3, 2, 1],
    ];
    for (i, &[n, ci, hw, co, k, s, p]) in cases.iter().enumerate() {
        let conv = ConvShape::square(n, ci, hw, co, k, s, p, 0);
        let (oh, ow) = conv.out_hw(false).unwrap();
        let op = (hw + 2 * p - k) % s;
        let convt = ConvShape {
            batch: n,
            c_in: co,
            h: oh,
            w: ow,
            c_out: ci,
            kh: k,
            kw: k,
            stride: s,
            pad: p,
            output_pad: op,
        };
        assert_eq!(convt.out_hw(true).unwrap(), (hw, hw), "{conv:?}");
        let mut rng = Lcg(70 + i as u64);
        let mut v = |n: u64| -> Vec<f64> { (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect() };
        let (x, w, y) = (
            v(conv.input_len()),
            v(conv.weight_len()),
            v(conv.output_len(false)),
        );
        let lhs = dot(&cpu::conv2d(&conv, &x, &w, None), &y);
        let rhs = dot(&x, &cpu::conv_transpose2d(&convt, &y, &w, None));
        let scale = dot(&cpu::conv2d(&conv, &abs(&x), &abs(&w), None), &abs(&y));
        let products = conv.weight_len() as usize * conv.output_len(false) as usize;
        let tol = 2.0 * gamma(products + x.len() + y.len() + 1, u) * scale;
        worst = worst.max((lhs - rhs).abs() / tol);
        assert!(
            (lhs - rhs).abs() <= tol,
            "{conv:?}: <conv(X), Y> = {lhs}, <X, convT(Y)> = {rhs}, tol {tol:e}"
        );
    }
    eprintln!("adjoint: max err/tol {worst:.3e}");
}

// ---------------------------------------------------------------- GPU

/// `cfg` with `variant` if its pass has that variant.
fn with_variant(cfg: ConvConfig, variant: ConvVariant) -> ConvConfig {
    let variant = if cfg.variants().contains(&variant) {
        variant
    } else {
        ConvVariant::Gemm
    };
    ConvConfig { variant, ..cfg }
}

const VARIANTS: [ConvVariant; 3] = [ConvVariant::Gemm, ConvVariant::Direct, ConvVariant::Columns];

/// The three passes of one direction (conv2d or transposed), compiled once per adapter.
struct Passes {
    fwd: Conv,
    dx: Conv,
    dw: Conv,
}

impl Passes {
    /// `variant` for every pass that has it, the implicit GEMM for the others.
    fn new(gpu: &Gpu, t: bool, variant: ConvVariant) -> Self {
        let c = |op, bias| {
            Conv::new(
                gpu,
                with_variant(
                    ConvConfig {
                        bias,
                        ..ConvConfig::new(t, op)
                    },
                    variant,
                ),
            )
            .unwrap()
        };
        Passes {
            fwd: c(ConvOp::Forward, true),
            dx: c(ConvOp::BackwardData, false),
            dw: c(ConvOp::BackwardWeight, true),
        }
    }
}

/// Host copies of one layer's tensors (f32, as uploaded).
struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

#[derive(Clone, Copy, Debug)]
enum Values {
    /// Uniform in (−1, 1).
    Random,
    /// x, w, bias and dy all zero.
    Zeros,
    /// A third ±1e3, the rest uniform in (−1, 1) (x and dy); w in (−1, 1).
    Big,
}

fn data(s: &ConvShape, t: bool, values: Values, seed: u64) -> Data {
    let mut rng = Lcg(seed);
    let mut v = |n: u64, big: bool| -> Vec<f32> {
        (0..n)
            .map(|_| match values {
                Values::Zeros => 0.0,
                Values::Big if big && rng.next_f64() < 0.33 => {
                    if rng.next_f64() < 0.5 {
                        1e3
                    } else {
                        -1e3
                    }
                }
                _ => rng.uniform(-1.0, 1.0) as f32,
            })
            .collect()
    };
    Data {
        x: v(s.input_len(), true),
        w: v(s.weight_len(), false),
        b: v(s.c_out as u64, true),
        dy: v(s.output_len(t), true),
    }
}

/// Runs one bound pass and reads back its output (and the bias gradient).
fn run(
    gpu: &Gpu,
    conv: &Conv,
    s: &ConvShape,
    inputs: [&[f32]; 2],
    out_len: u64,
    bias: Option<&[f32]>,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let a = gpu.upload("in0", inputs[0]).unwrap();
    let b = gpu.upload("in1", inputs[1]).unwrap();
    // Garbage in the outputs: they must be overwritten.
    let out = gpu.upload("out", &vec![7.0f32; out_len as usize]).unwrap();
    let biasv = bias.map(|v| gpu.upload("bias", v).unwrap());
    let d = conv.bind(gpu, s, [&a, &b], &out, biasv.as_ref()).unwrap();
    gpu.run(&d.dispatches()).unwrap();
    let got = gpu.read::<f32>(&out).unwrap();
    let db = match conv.config().op {
        ConvOp::BackwardWeight => biasv.map(|v| gpu.read::<f32>(&v).unwrap()),
        _ => None,
    };
    (got, db)
}

/// Checks every pass of one layer against the reference; returns the worst err/tol.
fn check_layer(gpu: &Gpu, p: &Passes, s: &ConvShape, t: bool, d: &Data, what: &str) -> f64 {
    let name = format!(
        "{what} {} {s:?} on {} {:?}",
        if t { "convT" } else { "conv" },
        gpu.info.name,
        gpu.info.backend
    );
    let (x, w, b, dy) = (to_f64(&d.x), to_f64(&d.w), to_f64(&d.b), to_f64(&d.dy));
    let (ax, aw, ab, ady) = (abs(&x), abs(&w), abs(&b), abs(&dy));
    let (t_fwd, t_dx, t_dw, t_db) = terms(s, t);
    let mut worst = 0.0f64;

    let want = forward(s, t, &x, &w, Some(&b));
    let scale = forward(s, t, &ax, &aw, Some(&ab));
    let (got, _) = run(gpu, &p.fwd, s, [&d.x, &d.w], s.output_len(t), Some(&d.b));
    let tol = |i: usize| gamma(t_fwd + 1, U32) * scale[i] + t_fwd as f64 * FLUSH;
    worst = worst.max(assert_close(&format!("{name} forward"), &got, &want, tol));

    let want = backward(s, t, &x, &w, &dy);
    let scale = backward(s, t, &ax, &aw, &ady);
    let (got, _) = run(gpu, &p.dx, s, [&d.dy, &d.w], s.input_len(), None);
    let tol = |i: usize| gamma(t_dx, U32) * scale.dx[i] + t_dx as f64 * FLUSH;
    worst = worst.max(assert_close(&format!("{name} dx"), &got, &want.dx, tol));

    let (got, db) = run(gpu, &p.dw, s, [&d.x, &d.dy], s.weight_len(), Some(&d.b));
    let tol = |i: usize| gamma(t_dw, U32) * scale.dw[i] + t_dw as f64 * FLUSH;
    worst = worst.max(assert_close(&format!("{name} dw"), &got, &want.dw, tol));
    let tol = |i: usize| gamma(t_db, U32) * scale.db[i];
    worst = worst.max(assert_close(
        &format!("{name} db"),
        &db.unwrap(),
        &want.db,
        tol,
    ));
    worst
}

/// Odd sizes that fill no 64×64 tile and no 16-wide K slice, C_in 1 and 3, C_out 5, kernels
/// 1×1, 3×3, 4×4 and 3×2, strides 1, 2 and 3, padding 0 to 2, images 7×7, 28×28 and 9×6.
fn gpu_shapes() -> Vec<ConvShape> {
    let sh = |n, ci, h, w, co, kh, kw, s, p| ConvShape {
        batch: n,
        c_in: ci,
        h,
        w,
        c_out: co,
        kh,
        kw,
        stride: s,
        pad: p,
        output_pad: 0,
    };
    vec![
        sh(3, 1, 7, 7, 5, 3, 3, 2, 1),
        sh(3, 3, 7, 7, 5, 3, 3, 2, 1),
        sh(3, 3, 28, 28, 5, 3, 3, 2, 1),
        sh(3, 1, 28, 28, 5, 4, 4, 2, 1),
        sh(3, 3, 7, 7, 5, 1, 1, 1, 0),
        sh(3, 3, 7, 7, 5, 3, 3, 1, 1),
        sh(2, 3, 9, 6, 5, 3, 2, 3, 2),
    ]
}

#[test]
fn gpu_matches_cpu_on_odd_shapes_and_edge_values() {
    for gpu in all_gpus() {
        let mut worst = 0.0f64;
        for (t, variant) in [false, true]
            .into_iter()
            .flat_map(|t| VARIANTS.map(|v| (t, v)))
        {
            let p = Passes::new(&gpu, t, variant);
            for (i, s) in gpu_shapes().into_iter().enumerate() {
                // The transposed layer uses the shape as its own (its input is 7×7 or 28×28),
                // with output_pad 1 where the stride allows.
                let s = ConvShape {
                    output_pad: u32::from(t && s.stride > 1),
                    ..s
                };
                let d = data(&s, t, Values::Random, 100 + i as u64);
                worst = worst.max(check_layer(&gpu, &p, &s, t, &d, "random"));
            }
            for (j, values) in [Values::Zeros, Values::Big].into_iter().enumerate() {
                let s = ConvShape {
                    output_pad: u32::from(t),
                    ..gpu_shapes()[1]
                };
                let d = data(&s, t, values, 200 + j as u64);
                worst = worst.max(check_layer(&gpu, &p, &s, t, &d, &format!("{values:?}")));
            }
        }
        eprintln!("{}: worst err/tol {worst:.3}", gpu.info.name);
    }
}

#[test]
fn keras_example_shapes() {
    // keras.io's convolutional VAE for MNIST: encoder 28×28×1 → Conv2D(32, 3, strides 2, "same")
    // → 14×14×32 → Conv2D(64, 3, strides 2, "same") → 7×7×64; decoder 7×7×64 →
    // Conv2DTranspose(64, 3, strides 2, "same") → 14×14 → Conv2DTranspose(32, ...) → 28×28 →
    // Conv2DTranspose(1, 3, "same") → 28×28×1. "same" is padding 1 for a 3×3 kernel, plus
    // output_pad 1 for the stride-2 transposed layers.
    let n = 4;
    let layers = [
        (ConvShape::square(n, 1, 28, 32, 3, 2, 1, 0), false, (14, 14)),
        (ConvShape::square(n, 32, 14, 64, 3, 2, 1, 0), false, (7, 7)),
        (ConvShape::square(n, 64, 7, 64, 3, 2, 1, 1), true, (14, 14)),
        (ConvShape::square(n, 64, 14, 32, 3, 2, 1, 1), true, (28, 28)),
        (ConvShape::square(n, 32, 28, 1, 3, 1, 1, 0), true, (28, 28)),
    ];
    for gpu in all_gpus() {
        let mut worst = 0.0f64;
        for variant in VARIANTS {
            let passes = [
                Passes::new(&gpu, false, variant),
                Passes::new(&gpu, true, variant),
            ];
            for (i, (s, t, hw)) in layers.iter().enumerate() {
                assert_eq!(s.out_hw(*t).unwrap(), *hw, "{s:?}");
                let d = data(s, *t, Values::Random, 300 + i as u64);
                worst = worst.max(check_layer(&gpu, &passes[*t as usize], s, *t, &d, "keras"));
            }
        }
        eprintln!(
            "keras shapes on {}: worst err/tol {worst:.3}",
            gpu.info.name
        );
    }
}

#[test]
fn fused_activation_and_accumulation() {
    // Forward with bias + tanh (conv2d) and bias + ReLU (transposed), and the accumulating data
    // and weight gradients (+ db) added onto what the outputs held.
    for gpu in all_gpus() {
        for (t, act) in [(false, Activation::Tanh), (true, Activation::Relu)] {
            let s = ConvShape {
                output_pad: u32::from(t),
                ..gpu_shapes()[2]
            };
            let d = data(&s, t, Values::Random, 400);
            let (x, w, b, dy) = (to_f64(&d.x), to_f64(&d.w), to_f64(&d.b), to_f64(&d.dy));
            let (t_fwd, t_dx, t_dw, t_db) = terms(&s, t);
            let name = format!("{act:?} t={t} on {}", gpu.info.name);

            let fwd = Conv::new(
                &gpu,
                ConvConfig {
                    bias: true,
                    act,
                    ..ConvConfig::new(t, ConvOp::Forward)
                },
            )
            .unwrap();
            let pre = forward(&s, t, &x, &w, Some(&b));
            let scale = forward(&s, t, &abs(&x), &abs(&w), Some(&abs(&b)));
            let want: Vec<f64> = pre.iter().map(|&p| act_cpu::forward(act, p)).collect();
            let (got, _) = run(&gpu, &fwd, &s, [&d.x, &d.w], s.output_len(t), Some(&d.b));
            let tol = |i: usize| {
                let e = gamma(t_fwd + 1, U32) * scale[i] + t_fwd as f64 * FLUSH;
                let own = if act == Activation::Relu {
                    0.0
                } else {
                    (8.0 + 4.0 * pre[i].abs().min(100.0)) * U32
                };
                1.2 * e + (own + U32) * want[i].abs()
            };
            assert_close(&format!("{name} forward"), &got, &want, tol);

            // Accumulation: outputs start at `old`.
            let acc = |op| {
                Conv::new(
                    &gpu,
                    ConvConfig {
                        bias: op == ConvOp::BackwardWeight,
                        accumulate: true,
                        ..ConvConfig::new(t, op)
                    },
                )
                .unwrap()
            };
            let g = backward(&s, t, &x, &w, &dy);
            let ga = backward(&s, t, &abs(&x), &abs(&w), &abs(&dy));
            let mut rng = Lcg(401);
            let old_dx = rng.vec(d.x.len(), -1.0, 1.0);
            let old_dw = rng.vec(d.w.len(), -1.0, 1.0);
            let old_db = rng.vec(d.b.len(), -1.0, 1.0);
            let up = |n, v: &[f32]| gpu.upload(n, v).unwrap();
            let (xv, wv, dyv) = (up("x", &d.x), up("w", &d.w), up("dy", &d.dy));
            let (dxv, dwv, dbv) = (up("dx", &old_dx), up("dw", &old_dw), up("db", &old_db));
            let kdx = acc(ConvOp::BackwardData);
            let kdw = acc(ConvOp::BackwardWeight);
            let d1 = kdx.bind(&gpu, &s, [&dyv, &wv], &dxv, None).unwrap();
            let d2 = kdw.bind(&gpu, &s, [&xv, &dyv], &dwv, Some(&dbv)).unwrap();
            gpu.run(&[d1.dispatches(), d2.dispatches()].concat())
                .unwrap();
            let read = |v: &View| gpu.read::<f32>(v).unwrap();
            for (what, got, new, sc, old, terms) in [
                ("dx", read(&dxv), &g.dx, &ga.dx, &old_dx, t_dx),
                ("dw", read(&dwv), &g.dw, &ga.dw, &old_dw, t_dw),
                ("db", read(&dbv), &g.db, &ga.db, &old_db, t_db),
            ] {
                let want: Vec<f64> = new.iter().zip(old).map(|(n, &o)| n + o as f64).collect();
                let tol = |i: usize| {
                    gamma(terms, U32) * sc[i] + terms as f64 * FLUSH + U32 * want[i].abs()
                };
                assert_close(&format!("{name} {what} accumulated"), &got, &want, tol);
            }
        }
    }
}

/// NCHW → NHWC (`to_last`) or back, of `n` images of `c` channels and `hw` pixels.
fn permute<T: Copy>(v: &[T], n: usize, c: usize, hw: usize, to_last: bool) -> Vec<T> {
    let mut out = v.to_vec();
    for i in 0..n {
        for ch in 0..c {
            for p in 0..hw {
                let (nchw, nhwc) = ((i * c + ch) * hw + p, (i * hw + p) * c + ch);
                if to_last {
                    out[nhwc] = v[nchw];
                } else {
                    out[nchw] = v[nhwc];
                }
            }
        }
    }
    out
}

#[test]
fn channels_last_stored_pre_activation_and_fused_derivative() {
    // A model's first layer (conv2d reading [N, H, W, C] pixels) and last (transposed conv
    // writing them), with 3 channels: each pass against the NCHW reference on permuted tensors.
    // The forward also stores its pre-activation (compared with the reference's, same tolerance
    // as the plain forward); the data gradient is multiplied by ReLU' at a given pre-activation,
    // which is exact (0 or 1), so its tolerance stays the plain data gradient's.
    for gpu in all_gpus() {
        for (t, variant) in [false, true]
            .into_iter()
            .flat_map(|t| VARIANTS.map(|v| (t, v)))
        {
            let s = if t {
                ConvShape::square(3, 5, 7, 3, 3, 2, 1, 1)
            } else {
                gpu_shapes()[1]
            };
            let (oh, ow) = s.out_hw(t).unwrap();
            let n = s.batch as usize;
            let (in_c, in_hw) = (s.c_in as usize, (s.h * s.w) as usize);
            let (out_c, out_hw) = (s.c_out as usize, (oh * ow) as usize);
            // The image side is conv2d's input or the transposed conv's output.
            let x_last = |v: &[f32]| {
                if t {
                    v.to_vec()
                } else {
                    permute(v, n, in_c, in_hw, true)
                }
            };
            let y_last = |v: &[f32]| {
                if t {
                    permute(v, n, out_c, out_hw, true)
                } else {
                    v.to_vec()
                }
            };
            let y_first = |v: &[f32]| {
                if t {
                    permute(v, n, out_c, out_hw, false)
                } else {
                    v.to_vec()
                }
            };
            let x_first = |v: &[f32]| {
                if t {
                    v.to_vec()
                } else {
                    permute(v, n, in_c, in_hw, false)
                }
            };
            let d = data(&s, t, Values::Random, 500 + t as u64);
            let (x, w, b, dy) = (to_f64(&d.x), to_f64(&d.w), to_f64(&d.b), to_f64(&d.dy));
            let (t_fwd, t_dx, t_dw, t_db) = terms(&s, t);
            let name = format!("channels-last t={t} {variant:?} on {}", gpu.info.name);
            let conv = |cfg: ConvConfig| {
                let cfg = with_variant(
                    ConvConfig {
                        channels_last: true,
                        ..cfg
                    },
                    variant,
                );
                Conv::new(&gpu, cfg).unwrap()
            };
            let up = |label, v: &[f32]| gpu.upload(label, v).unwrap();
            let read = |v: &View| gpu.read::<f32>(v).unwrap();

            // Forward + bias + ReLU, storing the pre-activation.
            let fwd = conv(ConvConfig {
                bias: true,
                act: Activation::Relu,
                store_pre: true,
                ..ConvConfig::new(t, ConvOp::Forward)
            });
            let (xv, wv, bv) = (up("x", &x_last(&d.x)), up("w", &d.w), up("b", &d.b));
            let out_len = s.output_len(t) as usize;
            let (yv, prev) = (up("y", &vec![7.0; out_len]), up("pre", &vec![7.0; out_len]));
            let dis = fwd
                .bind_aux(&gpu, &s, [&xv, &wv], &yv, Some(&bv), Some(&prev))
                .unwrap();
            gpu.run(&dis.dispatches()).unwrap();
            let pre = forward(&s, t, &x, &w, Some(&b));
            let scale = forward(&s, t, &abs(&x), &abs(&w), Some(&abs(&b)));
            let relu: Vec<f64> = pre.iter().map(|&p| p.max(0.0)).collect();
            let tol = |i: usize| gamma(t_fwd + 1, U32) * scale[i] + t_fwd as f64 * FLUSH;
            assert_close(&format!("{name} pre"), &y_first(&read(&prev)), &pre, tol);
            assert_close(&format!("{name} forward"), &y_first(&read(&yv)), &relu, tol);

            // Data gradient times ReLU' at a pre-activation of dx's shape.
            let dx_fused = conv(ConvConfig {
                grad_act: Some(Activation::Relu),
                ..ConvConfig::new(t, ConvOp::BackwardData)
            });
            let below: Vec<f32> = Lcg(502).vec(d.x.len(), -1.0, 1.0);
            let dyv = up("dy", &y_last(&d.dy));
            let (dxv, belowv) = (
                up("dx", &vec![7.0; d.x.len()]),
                up("below", &x_last(&below)),
            );
            let dis = dx_fused
                .bind_aux(&gpu, &s, [&dyv, &wv], &dxv, None, Some(&belowv))
                .unwrap();
            gpu.run(&dis.dispatches()).unwrap();
            let g = backward(&s, t, &x, &w, &dy);
            let ga = backward(&s, t, &abs(&x), &abs(&w), &abs(&dy));
            let want: Vec<f64> =
                g.dx.iter()
                    .zip(&below)
                    .map(|(v, &p)| if p > 0.0 { *v } else { 0.0 })
                    .collect();
            let tol = |i: usize| gamma(t_dx, U32) * ga.dx[i] + t_dx as f64 * FLUSH;
            assert_close(
                &format!("{name} dx*relu'"),
                &x_first(&read(&dxv)),
                &want,
                tol,
            );

            // Weight and bias gradients from channels-last tensors.
            let dw = conv(ConvConfig {
                bias: true,
                ..ConvConfig::new(t, ConvOp::BackwardWeight)
            });
            let (dwv, dbv) = (
                up("dw", &vec![7.0; d.w.len()]),
                up("db", &vec![7.0; d.b.len()]),
            );
            let dis = dw.bind(&gpu, &s, [&xv, &dyv], &dwv, Some(&dbv)).unwrap();
            gpu.run(&dis.dispatches()).unwrap();
            let tol = |i: usize| gamma(t_dw, U32) * ga.dw[i] + t_dw as f64 * FLUSH;
            assert_close(&format!("{name} dw"), &read(&dwv), &g.dw, tol);
            let tol = |i: usize| gamma(t_db, U32) * ga.db[i];
            assert_close(&format!("{name} db"), &read(&dbv), &g.db, tol);
        }
    }
}

#[test]
fn impossible_shapes_and_bad_bindings_are_typed_errors() {
    let base = ConvShape::square(2, 3, 7, 5, 3, 2, 1, 0);
    let bad = |s: ConvShape, t: bool, needle: &str| {
        let e = s.out_hw(t).unwrap_err();
        assert!(e.contains(needle), "{s:?}: {e}");
    };
    bad(
        ConvShape { kh: 10, ..base },
        false,
        "larger than the padded input",
    );
    bad(ConvShape { c_in: 0, ..base }, false, "c_in = 0");
    bad(ConvShape { stride: 0, ..base }, false, "stride = 0");
    bad(
        ConvShape {
            output_pad: 1,
            ..base
        },
        false,
        "transposed",
    );
    bad(
        ConvShape {
            output_pad: 2,
            ..base
        },
        true,
        "smaller than the stride",
    );
    // (1 − 1)·1 − 2·1 + 1 = −1.
    bad(
        ConvShape::square(1, 1, 1, 1, 1, 1, 1, 0),
        true,
        "output size -1 < 1",
    );
    for gpu in all_gpus() {
        let fwd = Conv::new(
            &gpu,
            ConvConfig {
                bias: true,
                ..ConvConfig::new(false, ConvOp::Forward)
            },
        )
        .unwrap();
        let z = |n: u64| gpu.zeros("v", n).unwrap();
        let (x, w, y, b) = (
            z(base.input_len()),
            z(base.weight_len()),
            z(base.output_len(false)),
            z(5),
        );
        let reason = |r: Result<_, GpuError>| match r {
            Err(GpuError::Shape { reason, .. }) => reason,
            Err(e) => panic!("not a shape error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        fwd.bind(&gpu, &base, [&x, &w], &y, Some(&b)).unwrap();
        let short = z(base.weight_len() - 1);
        let r = reason(fwd.bind(&gpu, &base, [&x, &short], &y, Some(&b)));
        assert!(r.contains("`w`"), "{r}");
        let r = reason(fwd.bind(&gpu, &base, [&x, &w], &y, None));
        assert!(r.contains("bias"), "{r}");
        let r = reason(fwd.bind(&gpu, &base, [&x, &w], &x, Some(&b)));
        assert!(r.contains("shares a buffer"), "{r}");
        let r = reason(fwd.bind(&gpu, &ConvShape { kh: 10, ..base }, [&x, &w], &y, Some(&b)));
        assert!(r.contains("larger"), "{r}");
        let act_dx = Conv::new(
            &gpu,
            ConvConfig {
                act: Activation::Relu,
                ..ConvConfig::new(false, ConvOp::BackwardData)
            },
        );
        assert!(matches!(act_dx, Err(GpuError::Shape { .. })));
        // The forward im2col GEMM has no other variant; the weight gradient no columns one.
        for (t, op, variant) in [
            (false, ConvOp::Forward, ConvVariant::Direct),
            (true, ConvOp::BackwardData, ConvVariant::Columns),
            (false, ConvOp::BackwardWeight, ConvVariant::Columns),
        ] {
            let e = Conv::new(
                &gpu,
                ConvConfig {
                    variant,
                    ..ConvConfig::new(t, op)
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains(variant.name()), "{e}");
        }
    }
}
