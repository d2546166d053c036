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
use super::graph::SharedState;
use super::{DeviceData, StepInputs, TrainGraph, TrainSettings};
use crate::data::DataSource;
use crate::eval::pictures::EpochPictures;
use crate::gpu::{AsyncReader, Gpu, StepBatch, Wait};
use crate::kernels::elbo::Running;
use crate::model::{ParamLayout, init_params};

/// A run: its settings, where it writes, and how it may be stopped early.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub out: PathBuf,
    pub progress: bool,
    /// Stop, with a checkpoint, once this many optimizer steps have been done in all.
    pub max_steps: Option<u64>,
    /// Set (by a signal handler) to stop after the current submit, with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Optimizer steps recorded into one submit (at least 1; a submit never crosses a logging
    /// point, the end of an epoch or `max_steps`). The result is the same whatever the value.
    pub steps_per_submit: u32,
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

/// A dataset's worth of batches: `full` batches of the main graph, then one smaller batch for
/// the remainder, so every item is used each epoch (PyTorch's `drop_last=False`). The graphs
/// share parameters, optimizer state and loss sums.
struct EpochGraphs {
    main: TrainGraph,
    tail: Option<TrainGraph>,
    full: u64,
}

impl EpochGraphs {
    fn new(
        gpu: &Gpu,
        s: &TrainSettings,
        seed: u64,
        data: &DeviceData,
        state: Option<&SharedState>,
    ) -> anyhow::Result<Self> {
        let batch = s.batch.min(data.items as u32);
        let opts = |batch| s.graph_options(batch, seed);
        let main = TrainGraph::new(gpu, &s.model, &opts(batch), data, state)?;
        let rest = data.items as u32 % batch;
        let tail = match rest {
            0 => None,
            _ => Some(TrainGraph::new(
                gpu,
                &s.model,
                &opts(rest),
                data,
                Some(&main.state()),
            )?),
        };
        Ok(Self {
            main,
            tail,
            full: (data.items as u32 / batch) as u64,
        })
    }

    fn steps(&self) -> u64 {
        self.full + self.tail.is_some() as u64
    }

    /// The graph of step `i` of an epoch and the index of its first row in the permutation.
    fn step(&self, i: u64) -> (&TrainGraph, u32) {
        let first = (i * self.main.batch as u64) as u32;
        match &self.tail {
            Some(tail) if i >= self.full => (tail, first),
            _ => (&self.main, first),
        }
    }

    fn set_permutation(&self, gpu: &Gpu, perm: &[u32]) {
        self.main.set_permutation(gpu, perm);
        if let Some(tail) = &self.tail {
            tail.set_permutation(gpu, perm);
        }
    }
}

/// The test ELBO: forward passes over the whole test set in order, on the training parameters.
pub struct Evaluator {
    graphs: EpochGraphs,
    items: usize,
}

impl Evaluator {
    pub fn new(
        gpu: &Gpu,
        s: &TrainSettings,
        data: &DeviceData,
        train: &SharedState,
    ) -> anyhow::Result<Self> {
        let state = train.with_own_running(gpu)?;
        Ok(Self {
            graphs: EpochGraphs::new(gpu, s, s.seed ^ 0xe7a1, data, Some(&state))?,
            items: data.items,
        })
    }

    /// Mean negative ELBO per example (β = 1), ε drawn from a fixed stream, the pixels (when
    /// binarizing) from one fixed draw apart from every training draw.
    fn loss(&self, gpu: &Gpu) -> anyhow::Result<f64> {
        Ok(self.sums(gpu)?.total / self.items as f64)
    }

    /// The summed negative ELBO, reconstruction and KL terms over the dataset (β = 1).
    pub fn sums(&self, gpu: &Gpu) -> anyhow::Result<Running> {
        for i in 0..self.graphs.steps() {
            let (graph, first) = self.graphs.step(i);
            let inputs = StepInputs {
                first,
                step: i,
                lr: 0.0,
                beta: 1.0,
                draw: u32::MAX,
            };
            graph.prepare(gpu, &inputs);
            gpu.submit(&graph.loss_dispatches());
        }
        Ok(self.graphs.main.take_running(gpu)?)
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

/// What a loss readback covers, carried with the asynchronous request.
struct LogTag {
    epoch: usize,
    /// Global step count at the logging point.
    step: u64,
    /// Global step count at the previous logging point (the sums cover the steps after it).
    interval_first: u64,
    beta: f64,
    /// Samples this process submitted in the interval (for the rate).
    samples: u64,
}

/// The state of one run: the device graphs, where the loop stands, and the loss readbacks in
/// flight.
struct Trainer<'a> {
    gpu: &'a Gpu,
    settings: TrainSettings,
    opts: &'a TrainOptions,
    graphs: EpochGraphs,
    progress: Progress,
    /// Where the last good checkpoint stands, for messages.
    saved: Option<Progress>,
    metrics: std::fs::File,
    reader: AsyncReader<LogTag>,
    /// When the last readback arrived: the device's pace, not the host's.
    last_arrival: Instant,
    bar: Option<indicatif::ProgressBar>,
    step_batch: StepBatch,
}

impl Trainer<'_> {
    fn checkpoint_path(&self) -> PathBuf {
        self.opts.out.join(checkpoint::FILE)
    }

    fn state(&self) -> &TrainGraph {
        &self.graphs.main
    }

    /// Reads the state back and writes it atomically, refusing to replace a good checkpoint
    /// with non-finite values. The loss sums not yet logged go into the checkpoint too.
    fn save(&mut self) -> anyhow::Result<()> {
        let gpu = self.gpu;
        let g = self.state();
        let running: Vec<f32> = gpu.read(&g.running)?;
        let ckpt = Checkpoint {
            settings: self.settings.clone(),
            progress: Progress {
                running: running.try_into().expect("RUNNING_LEN values"),
                ..self.progress
            },
            params: gpu.read(&g.params)?,
            exp_avg: gpu.read(&g.m1)?,
            exp_avg_sq: gpu.read(&g.m2)?,
        };
        for (what, flat) in [
            ("parameters", &ckpt.params),
            ("Adam moments", &ckpt.exp_avg),
            ("Adam moments", &ckpt.exp_avg_sq),
        ] {
            let bad = nonfinite_tensors(&g.layout, flat);
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
        self.saved = Some(ckpt.progress);
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
        let g = self.state();
        let mut found = Vec::new();
        for (what, view) in [("parameters", &g.params), ("gradients", &g.grads)] {
            if let Ok(flat) = gpu.read::<f32>(view) {
                let bad = nonfinite_tensors(&g.layout, &flat);
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

    /// Asks for the loss sums up to now (zeroing them on the device), without waiting.
    fn request_log(&mut self, tag: LogTag) {
        self.reader.request(self.gpu, tag, true);
    }

    /// Logs the readbacks that have arrived, blocking as `wait` says.
    fn drain(&mut self, wait: Wait) -> anyhow::Result<()> {
        if let Err(e) = self.gpu.check_faults("training") {
            bail!("{e}; stopping. {}", self.kept());
        }
        let arrived = self.reader.poll(self.gpu, wait)?;
        if arrived.is_empty() {
            return Ok(());
        }
        // Readbacks that arrive together share the time since the last arrival: their intervals'
        // average rate (per arrival, the second of two would seem to take no time at all).
        let now = Instant::now();
        let samples: u64 = arrived.iter().map(|(tag, _)| tag.samples).sum();
        let rate = samples as f64 / (now - self.last_arrival).as_secs_f64();
        self.last_arrival = now;
        for (tag, raw) in arrived {
            self.absorb(tag, &raw, rate)?;
        }
        Ok(())
    }

    fn absorb(&mut self, tag: LogTag, raw: &[f32], rate: f64) -> anyhow::Result<()> {
        let r = Running::from_raw(raw);
        if let Some(k) = r.first_nonfinite {
            return Err(self.diverged(tag.interval_first + k + 1, tag.epoch));
        }
        if !r.total.is_finite() {
            return Err(self.diverged(tag.step, tag.epoch));
        }
        self.progress.epoch_loss_sum += r.total;
        self.progress.epoch_count += r.count;
        let loss = r.total / r.count;
        let row = serde_json::json!({"epoch": tag.epoch, "step": tag.step, "loss": loss,
            "rec": r.rec / r.count, "kl": r.kl / r.count, "beta": tag.beta,
            "samples_per_s": rate});
        writeln!(self.metrics, "{row}").context("writing metrics.jsonl")?;
        if let Some(bar) = &self.bar {
            bar.set_message(format!("loss {loss:.2}  {rate:.0} samples/s"));
        }
        Ok(())
    }

    fn stop_requested(&self) -> bool {
        self.opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst))
            || self.opts.max_steps.is_some_and(|m| self.progress.step >= m)
    }

    fn stopped(self, epochs: Vec<EpochSummary>) -> TrainReport {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        TrainReport {
            epochs,
            finish: Finish::Stopped {
                step: self.progress.step,
            },
        }
    }

    /// Prints a line above the progress bar (or plainly without one).
    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => println!("{line}"),
        }
    }
}

/// Trains (or, with `resume`, continues) a run. `source` must be the data named by
/// `settings.data` (and `settings.test_data`).
///
/// The host runs at most two logging intervals ahead of the device: each logging point queues an
/// asynchronous copy of the loss sums and then waits only for the previous one, so the device is
/// never idle waiting for the host to read a loss.
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
    let graphs = EpochGraphs::new(gpu, s, s.seed, &train_data, None)?;
    let g = &graphs.main;
    let progress = match &resume {
        Some(c) => {
            gpu.write(&g.params, &c.params);
            gpu.write(&g.m1, &c.exp_avg);
            gpu.write(&g.m2, &c.exp_avg_sq);
            gpu.write(&g.running, &c.progress.running);
            c.progress
        }
        None => {
            gpu.write(&g.params, &init_params(&s.model, &g.layout, s.seed));
            Progress::default()
        }
    };
    let test = match &source.test {
        Some(t) => {
            let data = DeviceData::upload(gpu, "test pixels", t)?;
            let eval = Evaluator::new(gpu, s, &data, &g.state())?;
            Some((data, eval))
        }
        None => None,
    };
    let item_shape = &source.train.item_shape;
    let pictures = match &test {
        Some((data, _)) => EpochPictures::new(gpu, &s.model, &g.params, data, item_shape, s.seed)?,
        None => EpochPictures::new(gpu, &s.model, &g.params, &train_data, item_shape, s.seed)?,
    };
    let steps_per_epoch = graphs.steps();
    let reader = AsyncReader::new(&g.running);
    let mut t = Trainer {
        gpu,
        settings: s.clone(),
        opts,
        graphs,
        progress,
        saved: resume.as_ref().map(|c| c.progress),
        metrics,
        reader,
        last_arrival: Instant::now(),
        bar: progress_bar(opts, steps_per_epoch),
        step_batch: StepBatch::new(),
    };

    let mut summaries = Vec::new();
    for epoch in t.progress.epochs_done + 1..=s.epochs {
        let started = Instant::now();
        t.last_arrival = started;
        let draw = s.binarize.draw(epoch).unwrap_or(0);
        t.graphs
            .set_permutation(gpu, &epoch_permutation(s.seed, epoch, source.train.len));
        let first_step = t.progress.steps_into_epoch;
        // The sums on the device cover the steps since the last logging point, which is before
        // `first_step` when resuming mid-interval.
        let mut interval_first = t.progress.step - (t.progress.step % s.log_every).min(first_step);
        let (mut interval_samples, mut epoch_samples) = (0u64, 0u64);
        let mut stopped = false;
        if let Some(bar) = &t.bar {
            bar.set_position(first_step);
        }
        let mut i = first_step;
        while i < steps_per_epoch {
            // One submit: up to `steps_per_submit` steps of one graph, ending at a logging
            // point, the epoch's end or `max_steps` at the latest.
            let (graph, _) = t.graphs.step(i);
            let mut chunk = Vec::new();
            let mut beta = 0.0;
            loop {
                let (g, first) = t.graphs.step(i);
                if !std::ptr::eq(g, graph) {
                    break;
                }
                beta = s.beta_at(t.progress.step);
                chunk.push(StepInputs {
                    first,
                    step: t.progress.step,
                    lr: s.lr_at(epoch),
                    beta: beta as f32,
                    draw,
                });
                t.progress.step += 1;
                i += 1;
                let boundary = t.progress.step.is_multiple_of(s.log_every)
                    || i == steps_per_epoch
                    || t.opts.max_steps.is_some_and(|m| t.progress.step >= m);
                if boundary || chunk.len() >= t.opts.steps_per_submit.max(1) as usize {
                    break;
                }
            }
            if let [one] = chunk.as_slice() {
                graph.prepare(gpu, one);
                gpu.submit(&graph.step_dispatches());
            } else {
                graph.submit_steps(gpu, &mut t.step_batch, &chunk);
            }
            let samples = chunk.len() as u64 * graph.batch as u64;
            interval_samples += samples;
            epoch_samples += samples;
            t.progress.steps_into_epoch = i;
            stopped = t.stop_requested();
            let epoch_end = i == steps_per_epoch;
            if t.progress.step.is_multiple_of(s.log_every) || epoch_end {
                t.request_log(LogTag {
                    epoch,
                    step: t.progress.step,
                    interval_first,
                    beta,
                    samples: interval_samples,
                });
                interval_first = t.progress.step;
                interval_samples = 0;
                let wait = if t.reader.in_flight() > 1 {
                    Wait::Oldest
                } else {
                    Wait::No
                };
                t.drain(wait)?;
            }
            if let Some(bar) = &t.bar {
                bar.set_position(i);
            }
            if stopped && !epoch_end {
                t.drain(Wait::All)?;
                t.save()?;
                return Ok(t.stopped(summaries));
            }
        }
        t.drain(Wait::All)?;
        let seconds = started.elapsed().as_secs_f64();
        let test_loss = test.as_ref().map(|(_, eval)| eval.loss(gpu)).transpose()?;
        let summary = EpochSummary {
            epoch,
            train_loss: t.progress.epoch_loss_sum / t.progress.epoch_count,
            test_loss,
            seconds,
            samples_per_s: epoch_samples as f64 / seconds,
        };
        t.progress = Progress {
            epochs_done: epoch,
            steps_into_epoch: 0,
            step: t.progress.step,
            ..Progress::default()
        };
        t.save()?;
        if let Some(p) = &pictures {
            p.write(gpu, &opts.out)
                .map_err(|e| anyhow::anyhow!("writing the epoch's pictures: {e}"))?;
        }
        let (buffers, buffer_bytes) = gpu.buffer_usage();
        let row = serde_json::json!({"epoch": epoch, "step": t.progress.step,
            "train_loss": summary.train_loss, "test_loss": summary.test_loss,
            "epoch_seconds": seconds, "samples_per_s": summary.samples_per_s,
            "host_rss_bytes": host_rss_bytes(), "device_buffers": buffers,
            "device_buffer_bytes": buffer_bytes});
        writeln!(t.metrics, "{row}").context("writing metrics.jsonl")?;
        let loss = s.loss_name();
        t.println(&format!(
            "epoch {epoch:>3}: train {loss} {:.2}  test {loss} {}  ({:.2} s, {:.0} samples/s)",
            summary.train_loss,
            summary.test_loss.map_or("-".into(), |t| format!("{t:.2}")),
            seconds,
            summary.samples_per_s
        ));
        if let Some(bar) = &t.bar {
            bar.reset();
        }
        summaries.push(summary);
        if stopped && epoch < s.epochs {
            return Ok(t.stopped(summaries));
        }
    }
    if let Some(bar) = t.bar {
        bar.finish_and_clear();
    }
    Ok(TrainReport {
        epochs: summaries,
        finish: Finish::Completed,
    })
}

/// This process's resident memory (Linux; `None` elsewhere), logged per epoch so a leak shows.
fn host_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
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
