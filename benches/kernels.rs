//! Matmul throughput on every adapter and variant, beside the `gemm` crate on the host CPU.
//!
//! `cargo bench --bench kernels [-- --json] [-- --quick]`
//!
//! GPU timings are warm (pipeline compiled and JIT-ed by a first dispatch that is not counted):
//! each sample submits a batch of identical dispatches in one compute pass and waits, sized to
//! take about `SAMPLE_SECS`; the figure is the median of `SAMPLES` such batches, so it includes
//! the per-dispatch fixed cost a training step also pays. The max error is against the f64 CPU
//! reference, absolute and relative to the bound γ_K·(|A||B|)ᵢⱼ the tests assert (≤ 1 passes).
//! gemm runs on the same data with 1 thread and with every thread.
//!
//! Environment, for kernel work:
//! - `VAE_BENCH=substring` keeps the rows whose "shape device kernel" contains it;
//! - `VAE_BENCH_CPU=1` also prints GFLOP per CPU-second of this process, a figure that other load
//!   on the host disturbs far less than wall-clock time;
//! - `VAE_BENCH_TILED_SRC=file.wgsl` / `VAE_BENCH_SUBGROUP_SRC` / `VAE_BENCH_SUBGROUP_VEC4_SRC`
//!   run that file instead of the variant's own (the tiled kernel, or the subgroup kernel's operand
//!   reader; same bindings and overrides), with `VAE_BENCH_TILE=RxC` its rows ×
//!   columns of C per workgroup.

use std::time::Instant;

use vae_wgpu::cpu::matmul as cpu;
use vae_wgpu::gpu::{self, BackendChoice, Gpu, View};
use vae_wgpu::kernels::matmul::{Layout, Matmul, MatmulConfig, MatmulVariant, flops};

const SAMPLES: usize = 5;
const SAMPLE_SECS: f64 = 0.25;
const MAX_BATCH: usize = 50;

struct Shape {
    name: &'static str,
    layout: Layout,
    m: usize,
    n: usize,
    k: usize,
}

const fn shape(name: &'static str, layout: Layout, m: usize, n: usize, k: usize) -> Shape {
    Shape {
        name,
        layout,
        m,
        n,
        k,
    }
}

/// The reference VAE's products at batch 128 (forward, decoder forward, weight gradient, data
/// gradient) and a large square one.
const SHAPES: &[Shape] = &[
    shape("128x784 . 784x400", Layout::NN, 128, 400, 784),
    shape("128x400 . 400x784", Layout::NN, 128, 784, 400),
    shape("(128x784)T . 128x400", Layout::TN, 784, 400, 128),
    shape("(128x400)T . 128x20", Layout::TN, 400, 20, 128),
    shape("128x784 . (400x784)T", Layout::NT, 128, 400, 784),
    shape("1024^3", Layout::NN, 1024, 1024, 1024),
];

struct Data {
    a: Vec<f32>,
    b: Vec<f32>,
    want: Vec<f64>,
    bound: Vec<f64>,
}

fn data(s: &Shape) -> Data {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let a: Vec<f32> = (0..s.m * s.k).map(|_| next()).collect();
    let b: Vec<f32> = (0..s.k * s.n).map(|_| next()).collect();
    let want = cpu::matmul(s.layout, s.m, s.n, s.k, &a, &b);
    let u = f32::EPSILON as f64 / 2.0;
    let gamma = s.k as f64 * u / (1.0 - s.k as f64 * u);
    let bound = cpu::matmul_abs(s.layout, s.m, s.n, s.k, &a, &b)
        .into_iter()
        .map(|x| gamma * x)
        .collect();
    Data { a, b, want, bound }
}

/// (max |err|, max |err| / bound)
fn errors(got: &[f32], d: &Data) -> (f64, f64) {
    got.iter()
        .zip(&d.want)
        .zip(&d.bound)
        .fold((0.0f64, 0.0f64), |(e, r), ((&g, &w), &t)| {
            let err = (g as f64 - w).abs();
            (
                e.max(err),
                r.max(if t > 0.0 {
                    err / t
                } else {
                    err * f64::INFINITY
                }),
            )
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    device: String,
    kernel: String,
    shape: &'static str,
    gflops: f64,
    ms: f64,
    /// (max |err|, max |err| / bound)
    err: (f64, f64),
}

fn bench_gpu(
    gpu: &Gpu,
    variant: MatmulVariant,
    s: &Shape,
    d: &Data,
    secs: f64,
) -> gpu::Result<Row> {
    // VAE_BENCH_TILED_SRC / VAE_BENCH_SUBGROUP_SRC: a WGSL file to try instead of the built-in one.
    let var = format!(
        "VAE_BENCH_{}_SRC",
        variant.name().to_uppercase().replace('.', "_")
    );
    let source = std::env::var(var)
        .ok()
        .map(|p| std::fs::read_to_string(p).expect("shader file"));
    // VAE_BENCH_TILE=RxC: the experimental kernel's tile.
    let tile = std::env::var("VAE_BENCH_TILE").ok().map(|t| {
        let (r, c) = t.split_once('x').expect("VAE_BENCH_TILE=RxC");
        (r.parse().unwrap(), c.parse().unwrap())
    });
    let matmul = Matmul::with_source(
        gpu,
        MatmulConfig::new(s.layout),
        Some(variant),
        source.as_deref(),
        tile,
    )?;
    let a = gpu.upload("a", &d.a)?;
    let b = gpu.upload("b", &d.b)?;
    let c: View = gpu.zeros("c", (s.m * s.n) as u64)?;
    let (m, n, k) = (s.m as u32, s.n as u32, s.k as u32);
    let dispatch = matmul.bind(gpu, m, n, k, &a, &b, &c, None, None)?;
    // Warm: compile and JIT, then one timed dispatch to size the batches.
    gpu.run(&[&dispatch])?;
    let err = errors(&gpu.read::<f32>(&c)?, d);
    let t = Instant::now();
    gpu.run(&[&dispatch])?;
    let one = t.elapsed().as_secs_f64();
    let batch = ((secs / one) as usize).clamp(1, MAX_BATCH);
    let list = vec![&dispatch; batch];
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..SAMPLES {
        let (t, c0) = (Instant::now(), cpu_seconds());
        gpu.submit(&list);
        gpu.wait("bench")?;
        times.push(t.elapsed().as_secs_f64() / batch as f64);
        cpu.push((cpu_seconds() - c0) / batch as f64);
    }
    let per = median(times);
    if std::env::var_os("VAE_BENCH_CPU").is_some() {
        // Throughput per CPU-second of this process: insensitive to other load on the host.
        eprintln!(
            "{} {}: {:.2} GFLOP per CPU-second",
            s.name,
            variant.name(),
            flops(m, n, k) / median(cpu) / 1e9
        );
    }
    Ok(Row {
        device: format!("{} {:?}", short_name(gpu), gpu.info.backend),
        kernel: variant.name().to_string(),
        shape: s.name,
        gflops: flops(m, n, k) / per / 1e9,
        ms: per * 1e3,
        err,
    })
}

/// CPU time of every thread of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

fn short_name(gpu: &Gpu) -> String {
    gpu.info
        .name
        .split(" (")
        .next()
        .unwrap_or(&gpu.info.name)
        .to_string()
}

fn bench_gemm(s: &Shape, d: &Data, threads: usize, secs: f64) -> Row {
    // Row-major strides: element (i, j) at i*rs + j*cs.
    let (m, n, k) = (s.m, s.n, s.k);
    let (a_rs, a_cs) = if s.layout == Layout::TN {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if s.layout == Layout::NT {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let mut c = vec![0f32; m * n];
    let par = if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let run = |c: &mut [f32]| unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            d.a.as_ptr(),
            a_cs,
            a_rs,
            d.b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    };
    run(&mut c);
    let err = errors(&c, d);
    let t = Instant::now();
    run(&mut c);
    let reps = ((secs / t.elapsed().as_secs_f64()) as usize).clamp(1, 200);
    let mut times = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut c);
        }
        times.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    let per = median(times);
    Row {
        device: "host CPU".into(),
        kernel: format!("gemm {threads}T"),
        shape: s.name,
        gflops: flops(m as u32, n as u32, k as u32) / per / 1e9,
        ms: per * 1e3,
        err,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let secs = if args.iter().any(|a| a == "--quick") {
        0.05
    } else {
        SAMPLE_SECS
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let gpus: Vec<Gpu> = gpu::enumerate(BackendChoice::Auto)
        .into_iter()
        .filter_map(|a| match Gpu::from_adapter(a) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("skipping an adapter: {e}");
                None
            }
        })
        .collect();
    if !json {
        for g in &gpus {
            let variants: Vec<_> = MatmulVariant::available(g)
                .iter()
                .map(|v| v.name())
                .collect();
            println!("adapter: {}  variants: {variants:?}", g.describe());
        }
        println!("host CPU: {threads} threads for gemm");
        println!();
        println!(
            "{:<22} {:<22} {:<12} {:>9} {:>10} {:>11} {:>9}",
            "shape", "device", "kernel", "GFLOP/s", "ms", "max |err|", "err/bound"
        );
    }
    // VAE_BENCH=substring keeps only rows whose "shape device kernel" contains it.
    let filter = std::env::var("VAE_BENCH").ok();
    let keep = |s: &str, device: &str, kernel: &str| {
        filter
            .as_ref()
            .is_none_or(|f| format!("{s} {device} {kernel}").contains(f.as_str()))
    };
    for s in SHAPES {
        if !gpus.iter().any(|g| {
            MatmulVariant::available(g).iter().any(|v| {
                keep(
                    s.name,
                    &format!("{} {:?}", short_name(g), g.info.backend),
                    v.name(),
                )
            })
        }) && !keep(s.name, "host CPU", "gemm")
        {
            continue;
        }
        let d = data(s);
        let mut shape_rows = Vec::new();
        for g in &gpus {
            for variant in MatmulVariant::available(g) {
                if !keep(
                    s.name,
                    &format!("{} {:?}", short_name(g), g.info.backend),
                    variant.name(),
                ) {
                    continue;
                }
                match bench_gpu(g, variant, s, &d, secs) {
                    Ok(r) => shape_rows.push(r),
                    Err(e) => eprintln!("{} {} {}: {e}", s.name, short_name(g), variant.name()),
                }
            }
        }
        if keep(s.name, "host CPU", "gemm 1T") {
            shape_rows.push(bench_gemm(s, &d, 1, secs));
        }
        if threads > 1 && keep(s.name, "host CPU", &format!("gemm {threads}T")) {
            shape_rows.push(bench_gemm(s, &d, threads, secs));
        }
        for r in &shape_rows {
            if json {
                let (e, rel) = r.err;
                println!(
                    "{{\"shape\":\"{}\",\"device\":\"{}\",\"kernel\":\"{}\",\"gflops\":{:.3},\"ms\":{:.4},\"max_abs_err\":{:e},\"err_over_bound\":{:.4}}}",
                    r.shape, r.device, r.kernel, r.gflops, r.ms, e, rel
                );
            } else {
                let (e, rel) = r.err;
                println!(
                    "{:<22} {:<22} {:<12} {:>9.2} {:>10.3} {:>11.2e} {:>9.4}",
                    r.shape, r.device, r.kernel, r.gflops, r.ms, e, rel
                );
            }
        }
        if !json {
            println!();
        }
    }
}
