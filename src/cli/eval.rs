//! `vae eval RUN`: the test ELBO and its terms, the importance-sampled log-likelihood, and the
//! latent units a trained model uses, as a table and as JSON (also written to RUN/eval.json).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::DeviceArgs;
use crate::eval::{IwaeGraph, IwaeOptions, LatentStats, LayerStats};
use crate::gpu::Gpu;
use crate::kernels::iwae::Objective;
use crate::train::checkpoint::{self, Checkpoint};
use crate::train::graph::SharedState;
use crate::train::run::Evaluator;
use crate::train::{DeviceData, TrainSettings};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The run directory (its checkpoint.safetensors).
    pub run: PathBuf,
    /// Data to evaluate [default: the run's test data].
    #[arg(long)]
    pub data: Option<String>,
    /// Importance samples per example for log p(x).
    #[arg(long, default_value_t = 5000)]
    pub k: u64,
    /// Evaluate only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Examples per batch of the importance-sampling pass.
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
    /// Samples per submit (memory: batch × chunk rows of the decoder).
    #[arg(long, default_value_t = 128)]
    pub chunk: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    if args.k == 0 || args.batch == 0 || args.chunk == 0 || args.limit == Some(0) {
        bail!("--k, --batch, --chunk and --limit must be at least 1");
    }
    let ckpt = Checkpoint::load(&args.run.join(checkpoint::FILE))?;
    let s: &TrainSettings = &ckpt.settings;
    let (name, mut set) = super::run_data(args.data.as_deref(), s, true)?;
    if let Some(n) = args.limit {
        set = set.select(&(0..n.min(set.len)).collect::<Vec<_>>());
    }
    let gpu = Gpu::new(&args.device.request())?;
    let data = DeviceData::upload(&gpu, "eval pixels", &set)?;
    let state = SharedState::new(&gpu, &ckpt.layout())?;
    gpu.write(&state.params, &ckpt.params);

    // The ELBO as in training's per-epoch test figure (one ε per example, β = 1), whatever
    // objective the run was trained with.
    let settings = TrainSettings {
        batch: s.batch.min(set.len as u32),
        objective: Objective::Elbo,
        samples: 1,
        ..s.clone()
    };
    let sums = Evaluator::new(&gpu, &settings, &data, &state)?.sums(&gpu)?;
    let n = set.len as f64;

    let batch = args.batch.min(set.len as u32);
    let graph = IwaeGraph::new(
        &gpu,
        &s.model,
        &state.params,
        &data,
        IwaeOptions {
            batch,
            chunk: args.chunk.min(args.k as u32),
            seed: args.seed,
            binarize_seed: s.binarize_seed(),
        },
    )?;
    let items: Vec<u32> = (0..set.len as u32).collect();
    // On stderr, so it never mixes with --json's output; k = 5000 over a test set can take an
    // hour on a software adapter.
    let bar = indicatif::ProgressBar::new(set.len as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "log p(x) {bar:30} {pos}/{len} examples, {elapsed} elapsed, ~{eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut log_px, mut mu, mut logvar) = (Vec::new(), Vec::new(), Vec::new());
    let latents = s.model.latents();
    let mut layer_kl = vec![Vec::new(); latents.len()];
    let mut layer_mean = vec![Vec::new(); latents.len()];
    for (i, group) in items.chunks(batch as usize).enumerate() {
        let r = graph.run(&gpu, group, args.k, i as u32)?;
        log_px.extend(r.log_px);
        mu.extend(r.mu);
        logvar.extend(r.logvar);
        for (l, layer) in r.layers.into_iter().enumerate() {
            layer_kl[l].extend(layer.kl);
            layer_mean[l].extend(layer.q_mean);
        }
        bar.inc(group.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(i) = log_px.iter().position(|v| !v.is_finite()) {
        bail!("log p(x) of example {i} is not finite: the model or data is broken");
    }
    let mean = log_px.iter().sum::<f64>() / n;
    let var = log_px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let stats = LatentStats::new(&mu, &logvar, s.model.latent);
    // One layer: the analytic KL per unit. A hierarchy: per layer, a one-sample estimate of
    // E_q[log q(z_l|·) − log p(z_l|·)] and the active units of E_q[z_l|x].
    let layers: Vec<LayerStats> = if latents.len() == 1 {
        vec![LayerStats {
            latent: s.model.latent,
            kl: stats.kl_per_dim.iter().sum(),
            active_units: stats.active_units(),
            posterior_mean_variance: stats.mean_variance.clone(),
        }]
    } else {
        (0..latents.len())
            .map(|l| LayerStats::new(&layer_kl[l], &layer_mean[l], latents[l]))
            .collect()
    };
    let mut report = serde_json::json!({
        "run": args.run, "model": checkpoint::describe(s), "data": name, "examples": set.len,
        "elbo": -sums.total / n, "reconstruction_nll": sums.rec / n, "kl": sums.kl / n,
        "log_px": mean, "log_px_std_error": (var / n).sqrt(), "k": args.k,
        "latent": s.model.latent, "layers": layers,
    });
    if latents.len() == 1 {
        report["active_units"] = stats.active_units().into();
        report["kl_per_dim"] = serde_json::json!(stats.kl_per_dim);
        report["posterior_mean_variance"] = serde_json::json!(stats.mean_variance);
    }
    let path = args.run.join("eval.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "model          {} ({})",
        checkpoint::describe(s),
        args.run.display()
    );
    println!(
        "data           {name}: {} examples, on {}",
        set.len,
        gpu.describe()
    );
    println!(
        "test ELBO      {:.2} nats  (reconstruction −log p(x|z) {:.2}, KL {:.2})",
        -sums.total / n,
        sums.rec / n,
        sums.kl / n
    );
    println!(
        "log p(x)       {mean:.2} ± {:.2} nats  (importance sampled, k = {}; NLL {:.2})",
        (var / n).sqrt(),
        args.k,
        -mean
    );
    if latents.len() == 1 {
        println!(
            "active units   {} of {}  (Cov_x E_q[z_d] > 0.01)",
            stats.active_units(),
            s.model.latent
        );
        let kl: Vec<String> = stats.kl_per_dim.iter().map(|k| format!("{k:.2}")).collect();
        println!("KL per dim     {}", kl.join(" "));
    } else {
        for (l, layer) in layers.iter().enumerate() {
            println!(
                "layer {}        KL {:.2} nats, {} of {} units active  (Cov_x E_q[z_d] > 0.01)",
                l + 1,
                layer.kl,
                layer.active_units,
                layer.latent
            );
        }
    }
    println!("written        {}", path.display());
    Ok(())
}
