//! `vae bench`: warm, steady-state training throughput of a model (by default the reference
//! workload: 784-400-20, ReLU, Bernoulli, Adam 1e-3, batch 128) on the shipped data, with the
//! start-up time and what one step costs in dispatches, submits and readbacks.

use crate::kernels::iwae::Objective;
use std::time::Instant;

use anyhow::bail;
use clap::Args;

use super::DeviceArgs;
use crate::data::load_source;
use crate::gpu::Gpu;
use crate::kernels::Activation;
use crate::kernels::adam::AdamConfig;
use crate::kernels::elbo::Likelihood;
use crate::model::{VaeConfig, init_params};
use crate::train::run::epoch_permutation;
use crate::train::{DeviceData, GraphOptions, StepInputs, TrainGraph};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Data to train on (as `vae train --data`).
    #[arg(long, default_value = "mnist5k")]
    pub data: String,
    #[arg(long, default_value_t = 128)]
    pub batch: u32,
    #[arg(long, value_delimiter = ',', default_value = "400")]
    pub hidden: Vec<usize>,
    #[arg(long, default_value_t = 20)]
    pub latent: usize,
    /// Untimed steps first (pipelines, caches and clocks settle).
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Timed steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let launched = Instant::now();
    if args.batch == 0 || args.latent == 0 || args.steps == 0 || args.hidden.contains(&0) {
        bail!("--batch, --latent, --steps and --hidden widths must be at least 1");
    }
    let source = load_source(&args.data)?;
    let gpu = Gpu::new(&args.device.request())?;
    let model = VaeConfig {
        input: source.train.dim(),
        hidden: args.hidden.clone(),
        latent: args.latent,
        act: Activation::Relu,
        likelihood: Likelihood::Bernoulli,
        upper: Vec::new(),
    };
    let items = source.train.len;
    if (items as u64) < args.batch as u64 {
        bail!("--batch {} exceeds the {items} training items", args.batch);
    }
    let data = DeviceData::upload(&gpu, "train pixels", &source.train)?;
    let opts = GraphOptions {
        batch: args.batch,
        adam: AdamConfig::default(),
        seed: 1,
        binarize_seed: None,
        objective: Objective::Elbo,
        samples: 1,
    };
    let graph = TrainGraph::new(&gpu, &model, &opts, &data, None)?;
    gpu.write(&graph.params, &init_params(&model, &graph.layout, 1));
    graph.set_permutation(&gpu, &epoch_permutation(1, 1, items));
    let steps_per_epoch = items as u64 / args.batch as u64;
    let prepare = |i: u64| {
        let inputs = StepInputs {
            first: ((i % steps_per_epoch) * args.batch as u64) as u32,
            step: i,
            lr: opts.adam.lr,
            beta: 1.0,
            draw: 0,
        };
        graph.prepare(&gpu, &inputs);
    };
    let step = |i: u64| {
        prepare(i);
        gpu.submit(&graph.step_dispatches());
    };
    step(0);
    gpu.wait("the first step")?;
    let startup = launched.elapsed().as_secs_f64();
    for i in 1..=args.warmup {
        step(i);
    }
    gpu.wait("warm-up")?;
    let timed = Instant::now();
    for i in 0..args.steps {
        step(args.warmup + 1 + i);
    }
    gpu.wait("timed steps")?;
    let seconds = timed.elapsed().as_secs_f64();
    // The loss must still be finite: a benchmark of a broken step means nothing.
    let r = graph.take_running(&gpu)?;
    if r.first_nonfinite.is_some() {
        bail!("the loss went NaN/Inf during the benchmark");
    }
    let kernels = profile_kernels(&gpu, &graph, |i| prepare(args.warmup + args.steps + 1 + i))?;
    let ms_per_step = 1e3 * seconds / args.steps as f64;
    let samples_per_s = (args.steps * args.batch as u64) as f64 / seconds;
    let dispatches = graph.step_dispatches().len();
    let mut dims = vec![model.input];
    dims.extend(&model.hidden);
    dims.push(model.latent);
    let dims = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("-");
    let report = serde_json::json!({
        "adapter": gpu.describe(),
        "model": dims,
        "batch": args.batch,
        "timed_steps": args.steps,
        "ms_per_step": ms_per_step,
        "samples_per_s": samples_per_s,
        "startup_to_first_step_s": startup,
        "dispatches_per_step": dispatches,
        "submits_per_step": 1,
        "readbacks_per_step": 0,
        "tuning_cache": gpu.tune_cache().path().map(|p| p.display().to_string()),
        "final_mean_loss": r.total / r.count,
        "kernels": kernels.iter().map(|k| serde_json::json!({
            "label": k.label, "dispatches": k.dispatches, "ms_per_step": k.ms,
        })).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("adapter            {}", gpu.describe());
        println!(
            "workload           {dims} ReLU Bernoulli, Adam, batch {}",
            args.batch
        );
        println!(
            "throughput         {samples_per_s:.0} samples/s, {ms_per_step:.2} ms/step ({} timed steps after {} warm-up)",
            args.steps, args.warmup
        );
        println!("launch→first step  {startup:.2} s");
        println!("per step           {dispatches} dispatches, 1 submit, 0 readbacks");
        match gpu.tune_cache().path() {
            Some(p) => println!("kernel choices     timed once, cached in {}", p.display()),
            None => println!("kernel choices     timed at start (VAE_TUNE_CACHE is empty)"),
        }
        if kernels.is_empty() {
            println!("(no per-kernel times: the adapter has no timestamp queries)");
        } else {
            let total: f64 = kernels.iter().map(|k| k.ms).sum();
            println!(
                "\nper kernel (timestamp queries, {PROFILED_STEPS} steps, one pass per dispatch):"
            );
            for k in &kernels {
                println!(
                    "  {:>8.3} ms {:>5.1}%  {:>2}×  {}",
                    k.ms,
                    100.0 * k.ms / total,
                    k.dispatches,
                    k.label
                );
            }
            println!("  {total:>8.3} ms total");
        }
    }
    Ok(())
}

const PROFILED_STEPS: u64 = 5;

/// One kernel's share of a step.
struct KernelTime {
    label: String,
    dispatches: usize,
    /// Mean device milliseconds per step, over all its dispatches in the step.
    ms: f64,
}

/// Device time per kernel label, averaged over a few profiled steps, largest first (empty when
/// the adapter has no timestamp queries).
fn profile_kernels(
    gpu: &Gpu,
    graph: &TrainGraph,
    prepare: impl Fn(u64),
) -> anyhow::Result<Vec<KernelTime>> {
    let dispatches = graph.step_dispatches();
    let mut times: Vec<KernelTime> = Vec::new();
    for i in 0..PROFILED_STEPS {
        prepare(i);
        let Some(seconds) = gpu.profile(&dispatches)? else {
            return Ok(Vec::new());
        };
        for (d, s) in dispatches.iter().zip(seconds) {
            let ms = 1e3 * s / PROFILED_STEPS as f64;
            match times.iter_mut().find(|k| k.label == d.label) {
                Some(k) => {
                    k.ms += ms;
                    k.dispatches += (i == 0) as usize;
                }
                None => times.push(KernelTime {
                    label: d.label.clone(),
                    dispatches: 1,
                    ms,
                }),
            }
        }
    }
    times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(times)
}
