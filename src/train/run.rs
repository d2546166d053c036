//! The training loop: epochs of shuffled batches on the device, the loss read back once per
//! logging interval, test ELBO per epoch, metrics and config written to the run directory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::{DeviceData, TrainGraph};
use crate::data::DataSource;
use crate::gpu::Gpu;
use crate::kernels::adam::AdamConfig;
use crate::model::{VaeConfig, init_params};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub model: VaeConfig,
    pub epochs: usize,
    pub batch: u32,
    pub adam: AdamConfig,
    pub seed: u64,
    pub beta: f64,
    /// Steps over which β rises linearly from 0 (0: no warm-up).
    pub kl_warmup: u64,
    /// Read the loss back every this many steps.
    pub log_every: u64,
    pub out: PathBuf,
    pub progress: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    pub epoch: usize,
    /// Mean negative ELBO per training example over the epoch (with the β in force).
    pub train_loss: f64,
    /// Mean negative ELBO per test example (β = 1), if there is a test set.
    pub test_loss: Option<f64>,
    pub seconds: f64,
    pub samples_per_s: f64,
}

/// Sums of (total, rec, kl, count) accumulated on the device since the last reset.
fn take_running(gpu: &Gpu, graph: &TrainGraph) -> anyhow::Result<[f64; 4]> {
    let v: Vec<f32> = gpu.read(&graph.running)?;
    gpu.write(&graph.running, &[0.0f32; 4]);
    Ok([v[0] as f64, v[1] as f64, v[2] as f64, v[3] as f64])
}

/// Evaluation graphs over a whole dataset: full batches, then one for the remainder.
struct Evaluator {
    graphs: Vec<(TrainGraph, u32)>,
    items: usize,
}

impl Evaluator {
    fn new(
        gpu: &Gpu,
        opts: &TrainOptions,
        data: &DeviceData,
        params: &crate::gpu::View,
    ) -> anyhow::Result<Self> {
        let batch = opts.batch.min(data.items as u32);
        let full = data.items as u32 / batch;
        let rest = data.items as u32 % batch;
        let mut graphs = vec![(
            TrainGraph::new(
                gpu,
                &opts.model,
                batch,
                opts.adam,
                opts.seed ^ 0xe7a1,
                data,
                Some(params),
            )?,
            full,
        )];
        if rest > 0 {
            graphs.push((
                TrainGraph::new(
                    gpu,
                    &opts.model,
                    rest,
                    opts.adam,
                    opts.seed ^ 0xe7a2,
                    data,
                    Some(params),
                )?,
                1,
            ));
        }
        Ok(Self {
            graphs,
            items: data.items,
        })
    }

    /// Mean negative ELBO per example (β = 1), ε drawn from a fixed stream.
    fn loss(&self, gpu: &Gpu) -> anyhow::Result<f64> {
        let mut total = 0.0;
        let mut first = 0u32;
        for (graph, batches) in &self.graphs {
            for i in 0..*batches {
                graph.prepare(gpu, first, i as u64, 0.0, 1.0);
                gpu.submit(&graph.loss_dispatches());
                first += graph.batch;
            }
            total += take_running(gpu, graph)?[0];
        }
        Ok(total / self.items as f64)
    }
}

fn write_config(opts: &TrainOptions, gpu: &Gpu, source: &DataSource) -> anyhow::Result<()> {
    let m = &opts.model;
    let config = serde_json::json!({
        "crate_version": env!("CARGO_PKG_VERSION"),
        "adapter": gpu.describe(),
        "data": source.name,
        "train_items": source.train.len,
        "test_items": source.test.as_ref().map(|t| t.len),
        "input": m.input, "hidden": m.hidden, "latent": m.latent,
        "activation": format!("{:?}", m.act).to_lowercase(),
        "likelihood": format!("{:?}", m.likelihood),
        "epochs": opts.epochs, "batch": opts.batch, "seed": opts.seed,
        "beta": opts.beta, "kl_warmup": opts.kl_warmup, "log_every": opts.log_every,
        "optimizer": {
            "lr": opts.adam.lr, "beta1": opts.adam.beta1, "beta2": opts.adam.beta2, "eps": opts.adam.eps,
            "weight_decay": opts.adam.weight_decay, "decoupled": opts.adam.decoupled, "max_norm": opts.adam.max_norm,
        },
    });
    let path = opts.out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

pub fn train(
    gpu: &Gpu,
    opts: &TrainOptions,
    source: &DataSource,
) -> anyhow::Result<Vec<EpochSummary>> {
    let dim = source.train.dim();
    if dim != opts.model.input {
        bail!(
            "data `{}` has {dim} pixels per item, the model expects {}",
            source.name,
            opts.model.input
        );
    }
    if (source.train.len as u32) < opts.batch {
        bail!(
            "batch {} is larger than the training set ({} items)",
            opts.batch,
            source.train.len
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    write_config(opts, gpu, source)?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .with_context(|| format!("creating {}", metrics_path.display()))?;

    let train_data = DeviceData::upload(gpu, "train pixels", &source.train)?;
    let graph = TrainGraph::new(
        gpu,
        &opts.model,
        opts.batch,
        opts.adam,
        opts.seed,
        &train_data,
        None,
    )?;
    gpu.write(
        &graph.params,
        &init_params(&opts.model, &graph.layout, opts.seed),
    );
    let test = match &source.test {
        Some(t) => {
            let data = DeviceData::upload(gpu, "test pixels", t)?;
            let eval = Evaluator::new(gpu, opts, &data, &graph.params)?;
            Some((data, eval))
        }
        None => None,
    };

    let steps_per_epoch = source.train.len as u64 / opts.batch as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut perm: Vec<u32> = (0..source.train.len as u32).collect();
    let mut step = 0u64;
    let mut summaries = Vec::new();
    let bar = progress_bar(opts, steps_per_epoch);
    for epoch in 1..=opts.epochs {
        let started = Instant::now();
        perm.shuffle(&mut rng);
        graph.set_permutation(gpu, &perm);
        let (mut epoch_total, mut epoch_count) = (0.0, 0.0);
        let mut interval_started = Instant::now();
        for s in 0..steps_per_epoch {
            let beta = if opts.kl_warmup > 0 {
                opts.beta * (step as f64 / opts.kl_warmup as f64).min(1.0)
            } else {
                opts.beta
            };
            graph.prepare(
                gpu,
                (s * opts.batch as u64) as u32,
                step,
                opts.adam.lr,
                beta as f32,
            );
            gpu.submit(&graph.step_dispatches());
            step += 1;
            if step.is_multiple_of(opts.log_every) || s + 1 == steps_per_epoch {
                let [total, rec, kl, count] = take_running(gpu, &graph)?;
                if !total.is_finite() {
                    bail!(
                        "the loss became {total} at step {step} (epoch {epoch}); stopping. Lower --lr or check the data"
                    );
                }
                let rate = count / interval_started.elapsed().as_secs_f64();
                interval_started = Instant::now();
                epoch_total += total;
                epoch_count += count;
                let row = serde_json::json!({"epoch": epoch, "step": step, "loss": total / count, "rec": rec / count, "kl": kl / count, "beta": beta, "samples_per_s": rate});
                writeln!(metrics, "{row}")?;
                if let Some(bar) = &bar {
                    bar.set_message(format!("loss {:.2}  {:.0} samples/s", total / count, rate));
                }
            }
            if let Some(bar) = &bar {
                bar.set_position(s + 1);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let test_loss = test.as_ref().map(|(_, eval)| eval.loss(gpu)).transpose()?;
        let summary = EpochSummary {
            epoch,
            train_loss: epoch_total / epoch_count,
            test_loss,
            seconds,
            samples_per_s: epoch_count / seconds,
        };
        let row = serde_json::json!({"epoch": epoch, "train_loss": summary.train_loss, "test_loss": summary.test_loss, "epoch_seconds": seconds, "samples_per_s": summary.samples_per_s});
        writeln!(metrics, "{row}")?;
        let line = format!(
            "epoch {epoch:>3}: train -ELBO {:.2}  test -ELBO {}  ({:.2} s, {:.0} samples/s)",
            summary.train_loss,
            summary.test_loss.map_or("-".into(), |t| format!("{t:.2}")),
            seconds,
            summary.samples_per_s
        );
        match &bar {
            Some(bar) if !bar.is_hidden() => {
                bar.println(line);
                bar.reset();
            }
            _ => println!("{line}"),
        }
        summaries.push(summary);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(summaries)
}

fn progress_bar(opts: &TrainOptions, steps: u64) -> Option<indicatif::ProgressBar> {
    if !opts.progress {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps);
    let style =
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("valid template");
    bar.set_style(style);
    Some(bar)
}
