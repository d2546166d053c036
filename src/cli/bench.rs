//! `vae bench`: warm, steady-state training throughput of a model (by default the reference
//! workload: 784-400-20, ReLU, Bernoulli, Adam 1e-3, batch 128) on the shipped data, with the
//! start-up time and what one step costs in dispatches, submits and readbacks.

use std::time::Instant;

use anyhow::bail;
use clap::Args;

use super::DeviceArgs;
use super::train::Preset;
use crate::data::load_source;
use crate::gpu::{Gpu, StepBatch};
use crate::kernels::Activation;
use crate::kernels::adam::AdamConfig;
use crate::kernels::elbo::Likelihood;
use crate::kernels::iwae::Objective;
use crate::model::{VaeConfig, init_params};
use crate::train::run::epoch_permutation;
use crate::train::{Binarize, DeviceData, LrSchedule, StepInputs, TrainGraph, TrainSettings};

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
    /// Benchmark a paper's set-up instead (as `vae train --preset`).
    #[arg(long, value_enum, conflicts_with_all = ["batch", "hidden", "latent"])]
    pub preset: Option<Preset>,
    /// The training objective and its samples per example (as `vae train`).
    #[arg(long, value_enum, default_value_t = Objective::Elbo)]
    pub objective: Objective,
    #[arg(long, default_value_t = 1)]
    pub k: u32,
    /// Untimed steps first (pipelines, caches and clocks settle).
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
    /// Timed steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Steps recorded into one submit (default: as `vae train`, 1 on software adapters, 8 on
    /// others).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps_per_submit: Option<u32>,
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
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    let source = load_source(&args.data)?;
    let gpu = Gpu::new(&args.device.request())?;
    let base = TrainSettings {
        data: args.data.clone(),
        test_data: None,
        model: VaeConfig {
            input: source.train.dim(),
            hidden: args.hidden.clone(),
            latent: args.latent,
            act: Activation::Relu,
            likelihood: Likelihood::Bernoulli,
            upper: Vec::new(),
            conv: None,
            ladder: false,
        },
        epochs: 1,
        batch: args.batch,
        adam: AdamConfig::default(),
        seed: 1,
        beta: 1.0,
        kl_warmup: 0,
        log_every: 1,
        binarize: Binarize::None,
        objective: args.objective,
        samples: args.k,
        lr_schedule: LrSchedule::Constant,
    };
    let settings = match args.preset {
        Some(p) => p.apply(base, 1.0, None),
        None => base,
    };
    let mut model = settings.model.clone();
    super::train::with_pictures(&mut model, &args.data, &source.train.item_shape)?;
    model
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.data))?;
    let batch = settings.batch;
    let items = source.train.len;
    if (items as u64) < batch as u64 {
        bail!("--batch {batch} exceeds the {items} training items");
    }
    let data = DeviceData::upload(&gpu, "train pixels", &source.train)?;
    let opts = settings.graph_options(batch, settings.seed);
    let graph = TrainGraph::new(&gpu, &model, &opts, &data, None)?;
    gpu.write(&graph.params, &init_params(&model, &graph.layout, 1));
    graph.set_permutation(&gpu, &epoch_permutation(1, 1, items));
    let steps_per_epoch = items as u64 / batch as u64;
    let inputs = |i: u64| StepInputs {
        first: ((i % steps_per_epoch) * batch as u64) as u32,
        step: i,
        lr: opts.adam.lr,
        beta: 1.0,
        draw: 0,
    };
    let prepare = |i: u64| graph.prepare(&gpu, &inputs(i));
    let per_submit = args
        .steps_per_submit
        .unwrap_or_else(|| gpu.default_steps_per_submit()) as u64;
    let mut step_batch = StepBatch::new();
    // Steps `from .. to`, `per_submit` to a submit.
    let mut steps = |from: u64, to: u64| {
        let mut i = from;
        while i < to {
            let n = per_submit.min(to - i);
            if n == 1 {
                prepare(i);
                gpu.submit(&graph.step_dispatches());
            } else {
                let chunk: Vec<StepInputs> = (i..i + n).map(inputs).collect();
                graph.submit_steps(&gpu, &mut step_batch, &chunk);
            }
            i += n;
        }
    };
    steps(0, 1);
    gpu.wait("the first step")?;
    let startup = launched.elapsed().as_secs_f64();
    steps(1, 1 + args.warmup);
    gpu.wait("warm-up")?;
    let timed = Instant::now();
    steps(1 + args.warmup, 1 + args.warmup + args.steps);
    gpu.wait("timed steps")?;
    let seconds = timed.elapsed().as_secs_f64();
    // The loss must still be finite: a benchmark of a broken step means nothing.
    let r = graph.take_running(&gpu)?;
    if r.first_nonfinite.is_some() {
        bail!("the loss went NaN/Inf during the benchmark");
    }
    let kernels = profile_kernels(&gpu, &graph, |i| prepare(args.warmup + args.steps + 1 + i))?;
    let ms_per_step = 1e3 * seconds / args.steps as f64;
    let samples_per_s = (args.steps * batch as u64) as f64 / seconds;
    let dispatches = graph.step_dispatches().len();
    let dims = model.dims();
    let report = serde_json::json!({
        "adapter": gpu.describe(),
        "model": dims,
        "preset": args.preset.map(|p| format!("{p:?}")),
        "objective": settings.loss_name(),
        "batch": batch,
        "timed_steps": args.steps,
        "ms_per_step": ms_per_step,
        "samples_per_s": samples_per_s,
        "startup_to_first_step_s": startup,
        "dispatches_per_step": dispatches,
        "steps_per_submit": per_submit,
        "submits_per_step": 1.0 / per_submit as f64,
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
            "workload           {dims} {:?} {:?}, {}, Adam, batch {batch}{}",
            model.act,
            model.likelihood,
            settings.loss_name(),
            args.preset
                .map_or(String::new(), |p| format!(" (preset {p:?})"))
        );
        println!(
            "throughput         {samples_per_s:.0} samples/s, {ms_per_step:.2} ms/step ({} timed steps after {} warm-up)",
            args.steps, args.warmup
        );
        println!("launch→first step  {startup:.2} s");
        println!(
            "per step           {dispatches} dispatches, 1/{per_submit} submit, 0 readbacks ({per_submit} steps per submit)"
        );
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
