//! Column sums and two-pass (squared) sums against the f64 reference.

mod common;

use common::{Lcg, U32, all_gpus, assert_close, to_f64};
use vae_wgpu::cpu::reduce as cpu;
use vae_wgpu::kernels::reduce::{ReduceKernels, SumOf};

/// Recursive summation of n terms has error at most γ_n Σ|x_i| with γ_n = n u / (1 - n u)
/// (Higham, Accuracy and Stability, §4.2); n is the length of the longest chain of additions an
/// element goes through in the kernel, not the number of elements.
fn gamma(n: f64) -> f64 {
    n * U32 / (1.0 - n * U32)
}

#[test]
fn column_sums_match_cpu() {
    let mut rng = Lcg(3);
    for gpu in all_gpus() {
        let k = ReduceKernels::new(&gpu).unwrap();
        for (rows, cols) in [(1, 1), (3, 17), (128, 400), (129, 784), (17, 1), (1000, 3)] {
            let mut x = rng.vec(rows * cols, -1.0, 1.0);
            x[0] = 1e6; // one large value among small ones
            let xv = gpu.upload("x", &x).unwrap();
            let init: Vec<f32> = (0..cols).map(|c| c as f32 * 0.5).collect();
            let out = gpu.upload("out", &init).unwrap();
            let x64 = to_f64(&x);
            let abs: Vec<f64> = x64.iter().map(|v| v.abs()).collect();
            let abs_sums = cpu::column_sums(rows, cols, &abs);
            // Plain, then accumulate into what is there.
            for accumulate in [false, true] {
                gpu.run(&[&k
                    .column_sums(&gpu, rows as u32, cols as u32, &xv, &out, accumulate)
                    .unwrap()])
                    .unwrap();
                let got: Vec<f32> = gpu.read(&out).unwrap();
                let mut want = cpu::column_sums(rows, cols, &x64);
                if accumulate {
                    want.iter_mut().for_each(|w| *w *= 2.0);
                }
                let what = format!(
                    "column_sums {rows}x{cols} acc={accumulate} on {}",
                    gpu.describe()
                );
                assert_close(&what, &got, &want, |c| {
                    gamma(rows as f64 + 2.0) * 2.0 * abs_sums[c]
                });
            }
        }
    }
}

#[test]
fn sums_and_sums_of_squares_match_cpu() {
    let mut rng = Lcg(5);
    for gpu in all_gpus() {
        let k = ReduceKernels::new(&gpu).unwrap();
        for len in [1usize, 3, 255, 4097, 652_824, 1_000_003] {
            let mut x = rng.vec(len, -2.0, 2.0);
            x[len / 2] = -3e3;
            x[0] = 0.0;
            let x64 = to_f64(&x);
            let xv = gpu.upload("x", &x).unwrap();
            let out = gpu.zeros("out", 1).unwrap();
            let running = gpu.upload("running", &[10.0f32]).unwrap();
            // Chain: 16 items per invocation, 8 tree levels, ceil(groups/256) in finish, 8 more.
            let groups = len.div_ceil(256 * 16) as f64;
            let chain = 16.0 + 8.0 + (groups / 256.0).ceil() + 8.0 + 1.0;
            for of in [SumOf::Values, SumOf::Squares] {
                let s = k
                    .sum(&gpu, of, len as u32, &xv, &out, Some(&running))
                    .unwrap();
                gpu.run(&s.dispatches()).unwrap();
                let got: Vec<f32> = gpu.read(&out).unwrap();
                let (want, abs) = match of {
                    SumOf::Values => (cpu::sum(&x64), x64.iter().map(|v| v.abs()).sum::<f64>()),
                    SumOf::Squares => (cpu::sum_of_squares(&x64), cpu::sum_of_squares(&x64)),
                };
                // Squaring adds one rounding per term.
                let tol = gamma(chain + 1.0) * abs;
                let what = format!("sum {of:?} len {len} on {}", gpu.describe());
                assert_close(&what, &got, &[want], |_| tol);
            }
            // The running accumulator received both totals.
            let r: Vec<f32> = gpu.read(&running).unwrap();
            let want = 10.0 + cpu::sum(&x64) + cpu::sum_of_squares(&x64);
            let abs = 10.0 + x64.iter().map(|v| v.abs()).sum::<f64>() + cpu::sum_of_squares(&x64);
            assert_close("running accumulator", &r, &[want], |_| {
                gamma(chain + 3.0) * abs
            });
        }
    }
}
