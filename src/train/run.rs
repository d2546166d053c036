//! The training loop: epochs of shuffled batches on the device, the loss read back once per
//! logging interval, test ELBO per epoch, metrics, config and checkpoints in the run directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::checkpoint::{self, Checkpoint, Progress};
use super::{DeviceData, GraphOptions, StepInputs, TrainGraph, TrainSettings};
use crate::data::DataSource;
use crate::gpu::{Gpu, View};
use crate::model::{ParamLayout, init_params};

/// A run: its settings, where it writes, and how it may be stopped early.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub out: PathBuf,
    pub progress: bool,
    /// Stop, with a checkpoint, once this many optimizer steps have been done in all.
    pub max_steps: Option<u64>,
    /// Set (by a signal handler) to stop after the current step, with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
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

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// All epochs done.
    Completed,
    /// Stopped early (signal or `max_steps`) after this many steps, with a checkpoint.
    Stopped { step: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    pub epochs: Vec<EpochSummary>,
    pub finish: Finish,
}

/// Epoch `epoch`'s shuffle: a function of (seed, epoch) alone, so a resumed run draws the same
/// permutations as an uninterrupted one.
pub fn epoch_permutation(seed: u64, epoch: usize, items: usize) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut perm: Vec<u32> = (0..items as u32).collect();
    perm.shuffle(&mut rng);
    perm
}

/// Evaluation graphs over a whole dataset: full batches, then one for the remainder.
struct Evaluator {
    graphs: Vec<(TrainGraph, u32)>,
    items: usize,
    draw: u32,
}

impl Evaluator {
    fn new(gpu: &Gpu, s: &TrainSettings, data: &DeviceData, params: &View) -> anyhow::Result<Self> {
        let batch = s.batch.min(data.items as u32);
        let full = data.items as u32 / batch;
        let rest = data.items as u32 % batch;
        let graph = |batch, salt| {
            let opts = GraphOptions {
                batch,
                adam: s.adam,
                seed: s.seed ^ salt,
                binarize_seed: s.binarize_seed(),
            };
            TrainGraph::new(gpu, &s.model, &opts, data, Some(params))
        };
        let mut graphs = vec![(graph(batch, 0xe7a1)?, full)];
        if rest > 0 {
            graphs.push((graph(rest, 0xe7a2)?, 1));
        }
        Ok(Self {
            graphs,
            items: data.items,
            // One fixed binarization of the test set, apart from every training draw.
            draw: u32::MAX,
        })
    }

    /// Mean negative ELBO per example (β = 1), ε drawn from a fixed stream.
    fn loss(&self, gpu: &Gpu) -> anyhow::Result<f64> {
        let mut total = 0.0;
        let mut first = 0u32;
        for (graph, batches) in &self.graphs {
            for i in 0..*batches {
                let inputs = StepInputs {
                    first,
                    step: i as u64,
                    lr: 0.0,
                    beta: 1.0,
                    draw: self.draw,
                };
                graph.prepare(gpu, &inputs);
                gpu.submit(&graph.loss_dispatches());
                first += graph.batch;
            }
            total += graph.take_running(gpu)?.total;
        }
        Ok(total / self.items as f64)
    }
}

fn write_config(
    s: &TrainSettings,
    out: &Path,
    gpu: &Gpu,
    source: &DataSource,
) -> anyhow::Result<()> {
    let config = serde_json::json!({
        "crate_version": env!("CARGO_PKG_VERSION"),
        "adapter": gpu.describe(),
        "data_name": source.name,
        "train_items": source.train.len,
        "test_items": source.test.as_ref().map(|t| t.len),
        "settings": s,
    });
    let path = out.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// The names of the tensors of `flat` holding NaN or Inf.
fn nonfinite_tensors(layout: &ParamLayout, flat: &[f32]) -> Vec<String> {
    layout
        .tensors
        .iter()
        .filter(|t| {
            flat[t.offset..t.offset + t.len()]
                .iter()
                .any(|v| !v.is_finite())
        })
        .map(|t| t.name.clone())
        .collect()
}

/// `a, b, c and 4 more`.
fn name_list(names: &[String]) -> String {
    let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    match names.len() {
        0..=3 => shown,
        n => format!("{shown} and {} more", n - 3),
    }
}

/// The state of one run: the device graph and where the loop stands.
struct Trainer<'a> {
    gpu: &'a Gpu,
    settings: TrainSettings,
    opts: &'a TrainOptions,
    graph: TrainGraph,
    progress: Progress,
    /// Where the last good checkpoint stands, for messages.
    saved: Option<Progress>,
    metrics: std::fs::File,
}

impl Trainer<'_> {
    fn checkpoint_path(&self) -> PathBuf {
        self.opts.out.join(checkpoint::FILE)
    }

    /// Reads the state back and writes it atomically, refusing to replace a good checkpoint
    /// with non-finite values.
    fn save(&mut self) -> anyhow::Result<()> {
        let gpu = self.gpu;
        let running: Vec<f32> = gpu.read(&self.graph.running)?;
        self.progress.running.copy_from_slice(&running);
        let ckpt = Checkpoint {
            settings: self.settings.clone(),
            progress: self.progress,
            params: gpu.read(&self.graph.params)?,
            exp_avg: gpu.read(&self.graph.m1)?,
            exp_avg_sq: gpu.read(&self.graph.m2)?,
        };
        for (what, flat) in [
            ("parameters", &ckpt.params),
            ("Adam moments", &ckpt.exp_avg),
            ("Adam moments", &ckpt.exp_avg_sq),
        ] {
            let bad = nonfinite_tensors(&self.graph.layout, flat);
            if !bad.is_empty() {
                bail!(
                    "the {what} of {} hold NaN/Inf at step {}; not writing a checkpoint. {}",
                    name_list(&bad),
                    self.progress.step,
                    self.kept()
                );
            }
        }
        ckpt.save(&self.checkpoint_path())?;
        self.saved = Some(self.progress);
        Ok(())
    }

    /// What the user still has, for error messages.
    fn kept(&self) -> String {
        match self.saved {
            Some(p) => format!(
                "The last good checkpoint {} (epoch {}, step {}) is untouched.",
                self.checkpoint_path().display(),
                p.epochs_done,
                p.step
            ),
            None if self.checkpoint_path().exists() => format!(
                "The checkpoint {} (from before this run) was not touched.",
                self.checkpoint_path().display()
            ),
            None => "No checkpoint had been written yet.".into(),
        }
    }

    /// The error for a loss that went NaN/Inf at global step `step` (1-based).
    fn diverged(&self, step: u64, epoch: usize) -> anyhow::Error {
        let gpu = self.gpu;
        let layout = &self.graph.layout;
        let mut found = Vec::new();
        for (what, view) in [
            ("parameters", &self.graph.params),
            ("gradients", &self.graph.grads),
        ] {
            if let Ok(flat) = gpu.read::<f32>(view) {
                let bad = nonfinite_tensors(layout, &flat);
                if !bad.is_empty() {
                    found.push(format!("{what} {}", name_list(&bad)));
                }
            }
        }
        let tensors = if found.is_empty() {
            "no parameter or gradient is non-finite yet, so the loss itself overflowed".into()
        } else {
            format!("non-finite tensors now: {}", found.join("; "))
        };
        anyhow::anyhow!(
            "training diverged: the loss became NaN/Inf at step {step} (epoch {epoch}); stopping \
             ({tensors}). {} Lower --lr, add --max-norm, or check the data.",
            self.kept()
        )
    }

    fn log_row(&mut self, row: serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.metrics, "{row}").context("writing metrics.jsonl")
    }

    fn stop_requested(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
            || self.opts.max_steps.is_some_and(|m| self.progress.step >= m)
    }
}

/// Trains (or, with `resume`, continues) a run. `source` must be the data named by
/// `settings.data` (and `settings.test_data`).
pub fn train(
    gpu: &Gpu,
    settings: &TrainSettings,
    opts: &TrainOptions,
    source: &DataSource,
    resume: Option<Checkpoint>,
) -> anyhow::Result<TrainReport> {
    let s = settings;
    let dim = source.train.dim();
    if dim != s.model.input {
        bail!(
            "data `{}` has {dim} pixels per item, the model expects {}",
            source.name,
            s.model.input
        );
    }
    if (source.train.len as u32) < s.batch {
        bail!(
            "batch {} is larger than the training set ({} items)",
            s.batch,
            source.train.len
        );
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    write_config(s, &opts.out, gpu, source)?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(resume.is_some())
        .write(true)
        .truncate(resume.is_none())
        .open(&metrics_path)
        .with_context(|| format!("opening {}", metrics_path.display()))?;

    let train_data = DeviceData::upload(gpu, "train pixels", &source.train)?;
    let graph_opts = GraphOptions {
        batch: s.batch,
        adam: s.adam,
        seed: s.seed,
        binarize_seed: s.binarize_seed(),
    };
    let graph = TrainGraph::new(gpu, &s.model, &graph_opts, &train_data, None)?;
    let progress = match &resume {
        Some(c) => {
            gpu.write(&graph.params, &c.params);
            gpu.write(&graph.m1, &c.exp_avg);
            gpu.write(&graph.m2, &c.exp_avg_sq);
            gpu.write(&graph.running, &c.progress.running);
            c.progress
        }
        None => {
            gpu.write(&graph.params, &init_params(&s.model, &graph.layout, s.seed));
            Progress::default()
        }
    };
    let test = match &source.test {
        Some(t) => {
            let data = DeviceData::upload(gpu, "test pixels", t)?;
            let eval = Evaluator::new(gpu, s, &data, &graph.params)?;
            Some((data, eval))
        }
        None => None,
    };
    let mut t = Trainer {
        gpu,
        settings: s.clone(),
        opts,
        graph,
        progress,
        saved: resume.as_ref().map(|c| c.progress),
        metrics,
    };

    let steps_per_epoch = source.train.len as u64 / s.batch as u64;
    let mut summaries = Vec::new();
    let bar = progress_bar(opts, steps_per_epoch);
    for epoch in t.progress.epochs_done + 1..=s.epochs {
        let started = Instant::now();
        let draw = s.binarize.draw(epoch).unwrap_or(0);
        t.graph
            .set_permutation(gpu, &epoch_permutation(s.seed, epoch, source.train.len));
        let first_step = t.progress.steps_into_epoch;
        let mut interval_started = Instant::now();
        // The running sums on the device cover the steps since the last logging point, which
        // is before `first_step` when resuming mid-interval; the rate counts timed steps only.
        let mut interval_first = t.progress.step - (t.progress.step % s.log_every).min(first_step);
        let mut timed_from = t.progress.step;
        let mut stopped = false;
        if let Some(bar) = &bar {
            bar.set_position(first_step);
        }
        for i in first_step..steps_per_epoch {
            let beta = s.beta_at(t.progress.step);
            let inputs = StepInputs {
                first: (i * s.batch as u64) as u32,
                step: t.progress.step,
                lr: s.adam.lr,
                beta: beta as f32,
                draw,
            };
            t.graph.prepare(gpu, &inputs);
            gpu.submit(&t.graph.step_dispatches());
            t.progress.step += 1;
            t.progress.steps_into_epoch = i + 1;
            stopped = t.stop_requested();
            let epoch_end = i + 1 == steps_per_epoch;
            if t.progress.step.is_multiple_of(s.log_every) || epoch_end {
                let r = t.graph.take_running(gpu)?;
                if let Some(k) = r.first_nonfinite {
                    return Err(t.diverged(interval_first + k + 1, epoch));
                }
                if !r.total.is_finite() {
                    return Err(t.diverged(t.progress.step, epoch));
                }
                let timed = (t.progress.step - timed_from) * s.batch as u64;
                let rate = timed as f64 / interval_started.elapsed().as_secs_f64();
                interval_started = Instant::now();
                interval_first = t.progress.step;
                timed_from = t.progress.step;
                t.progress.epoch_loss_sum += r.total;
                t.progress.epoch_count += r.count;
                let loss = r.total / r.count;
                t.log_row(serde_json::json!({"epoch": epoch, "step": t.progress.step,
                    "loss": loss, "rec": r.rec / r.count, "kl": r.kl / r.count,
                    "beta": beta, "samples_per_s": rate}))?;
                if let Some(bar) = &bar {
                    bar.set_message(format!("loss {loss:.2}  {rate:.0} samples/s"));
                }
            }
            if let Some(bar) = &bar {
                bar.set_position(i + 1);
            }
            if stopped && !epoch_end {
                t.save()?;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                return Ok(TrainReport {
                    epochs: summaries,
                    finish: Finish::Stopped {
                        step: t.progress.step,
                    },
                });
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let test_loss = test.as_ref().map(|(_, eval)| eval.loss(gpu)).transpose()?;
        let summary = EpochSummary {
            epoch,
            train_loss: t.progress.epoch_loss_sum / t.progress.epoch_count,
            test_loss,
            seconds,
            samples_per_s: ((steps_per_epoch - first_step) * s.batch as u64) as f64 / seconds,
        };
        t.progress = Progress {
            epochs_done: epoch,
            steps_into_epoch: 0,
            step: t.progress.step,
            ..Progress::default()
        };
        t.save()?;
        t.log_row(serde_json::json!({"epoch": epoch, "step": t.progress.step,
            "train_loss": summary.train_loss, "test_loss": summary.test_loss,
            "epoch_seconds": seconds, "samples_per_s": summary.samples_per_s}))?;
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
        if stopped && epoch < s.epochs {
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            return Ok(TrainReport {
                epochs: summaries,
                finish: Finish::Stopped {
                    step: t.progress.step,
                },
            });
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(TrainReport {
        epochs: summaries,
        finish: Finish::Completed,
    })
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
