//! Fused Adam/AdamW against the f64 `torch.optim` reference over several steps.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::adam::{self as cpu, AdamState};
use vae_wgpu::cpu::reduce::sum_of_squares;
use vae_wgpu::kernels::adam::{AdamBuffers, AdamConfig, AdamKernel, AdamReads};

const STEPS: usize = 6;

/// Gradients for one step: a sweep plus edge values (0, tiny, huge, mixed signs).
fn grads(rng: &mut Lcg, len: usize, step: usize) -> Vec<f32> {
    let mut g = rng.vec(len, -1.0, 1.0);
    g[0] = 0.0;
    g[1] = 1e-20;
    g[2] = -1e-20;
    g[3] = 1e6;
    g[4] = -1e6;
    g[5] = if step.is_multiple_of(2) { 3.0 } else { -3.0 };
    g
}

fn run_case(cfg: AdamConfig, len: usize) {
    for gpu in all_gpus() {
        for reads in AdamReads::ALL {
            run_variant(&gpu, cfg, reads, len);
        }
    }
}

fn run_variant(gpu: &vae_wgpu::gpu::Gpu, cfg: AdamConfig, reads: AdamReads, len: usize) {
    {
        let mut rng = Lcg(17);
        let mut p = rng.vec(len, -0.5, 0.5);
        p[6] = 0.0;
        p[7] = 1e4;
        let mut p_ref = to_f64(&p);
        let mut state = AdamState::new(len);
        let kernel = AdamKernel::with_reads(gpu, cfg, reads).unwrap();
        let pv = gpu.upload("p", &p).unwrap();
        let gv = gpu.zeros("g", len as u64).unwrap();
        let m1 = gpu.zeros("m1", len as u64).unwrap();
        let m2 = gpu.zeros("m2", len as u64).unwrap();
        let sumsq = gpu.zeros("sumsq", 1).unwrap();
        let bufs = AdamBuffers {
            param: &pv,
            grad: &gv,
            m1: &m1,
            m2: &m2,
        };
        let step = kernel.bind(gpu, len as u64, &bufs, Some(&sumsq)).unwrap();
        // Σ_t |update_t| per element: the rounding of each update is relative to its size.
        let mut moved = vec![0.0f64; len];
        // m1 sums gradients of both signs: its rounding is relative to Σ β1^k (1-β1) |g_k|.
        let mut m1_scale = vec![0.0f64; len];
        for t in 1..=STEPS {
            let g = grads(&mut rng, len, t);
            let g64 = to_f64(&g);
            gpu.write(&gv, &g);
            // Clipping reads the squared norm from the device; here it is written exactly.
            gpu.write(&sumsq, &[sum_of_squares(&g64) as f32]);
            step.prepare(gpu, t as u64, cfg.lr);
            gpu.run(&[&step.dispatch]).unwrap();
            let before = p_ref.clone();
            cpu::step(&cfg, &mut state, &mut p_ref, &g64);
            for (s, (g, p)) in m1_scale.iter_mut().zip(g64.iter().zip(&before)) {
                *s = cfg.beta1 * *s + (1.0 - cfg.beta1) * (g.abs() + cfg.weight_decay * p.abs());
            }
            moved
                .iter_mut()
                .zip(before.iter().zip(&p_ref))
                .for_each(|(m, (b, a))| *m += (a - b).abs());
        }
        // Each step rounds p (1 u relative) and forms the update from ~12 f32 operations,
        // including f32 bias corrections and an f32 sqrt: 16 u of the update's size per step,
        // plus 2 u of |p| per step. The clip scale is formed from an f32 norm: another 4 u.
        let got: Vec<f32> = gpu.read(&pv).unwrap();
        let what = format!(
            "{cfg:?} {reads:?} params after {STEPS} steps on {}",
            gpu.describe()
        );
        assert_close(&what, &got, &p_ref, |i| {
            2.0 * STEPS as f64 * U32 * p_ref[i].abs() + 20.0 * U32 * moved[i] + 1e-30
        });
        // Moments: m1 is a convex combination of the gradients seen, each rounded a few times.
        let got_m1: Vec<f32> = gpu.read(&m1).unwrap();
        let got_m2: Vec<f32> = gpu.read(&m2).unwrap();
        assert_close("m1", &got_m1, &state.m1, |i| {
            8.0 * STEPS as f64 * U32 * m1_scale[i] + 1e-37
        });
        assert_close("m2", &got_m2, &state.m2, |i| {
            8.0 * STEPS as f64 * U32 * state.m2[i].abs() + 1e-37
        });
    }
}

#[test]
fn adam_matches_torch_reference() {
    run_case(AdamConfig::default(), 4 * 263);
}

#[test]
fn adam_with_l2_and_clipping_matches_reference() {
    let cfg = AdamConfig {
        weight_decay: 1e-2,
        max_norm: 5.0,
        ..AdamConfig::default()
    };
    run_case(cfg, 4 * 1001);
}

#[test]
fn adamw_matches_reference() {
    let cfg = AdamConfig {
        lr: 3e-3,
        weight_decay: 0.05,
        decoupled: true,
        ..AdamConfig::default()
    };
    run_case(cfg, 4 * 65);
}

#[test]
fn odd_length_is_rejected_with_a_clear_error() {
    let gpu = all_gpus().remove(0);
    let kernel = AdamKernel::new(&gpu, AdamConfig::default()).unwrap();
    let v = gpu.zeros("v", 7).unwrap();
    let bufs = AdamBuffers {
        param: &v,
        grad: &v,
        m1: &v,
        m2: &v,
    };
    let err = kernel.bind(&gpu, 7, &bufs, None).err().expect("must fail");
    assert!(err.to_string().contains("multiple of 4"), "{err}");
}
