//! `vae sample | reconstruct | interpolate | traverse RUN`: PNG grids of what a trained model
//! generates, written into the run directory (or `--out`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::DeviceArgs;
use crate::cpu::philox::StreamPos;
use crate::cpu::sample::normals;
use crate::data::Dataset;
use crate::eval::pictures::{Codec, ImageShape, slerp, write_grid};
use crate::eval::plots::{Curve, Panel, first_two_components, line_panels, scatter};
use crate::gpu::Gpu;
use crate::train::DeviceData;
use crate::train::checkpoint::{self, Checkpoint};

/// Rows the codec handles per submit.
const CODEC_ROWS: usize = 256;

/// What every picture command shares: the run, the data its items come from, the device.
#[derive(Args, Debug, Clone)]
pub struct PictureArgs {
    /// The run directory (its checkpoint.safetensors).
    pub run: PathBuf,
    /// Where items come from [default: the run's test data].
    #[arg(long)]
    pub data: Option<String>,
    /// The PNG to write [default: a file in the run directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub common: PictureArgs,
    /// Number of samples z ~ N(0, I), decoded to pixel means (in a hierarchy the top layer's z,
    /// walked down by ancestral sampling).
    #[arg(long, default_value_t = 64)]
    pub n: usize,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub common: PictureArgs,
    /// Number of items: originals in one row, their reconstructions (decoded means) below.
    #[arg(long, default_value_t = 32)]
    pub n: usize,
}

#[derive(Args, Debug)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub common: PictureArgs,
    #[arg(long, default_value_t = 0)]
    pub from: u32,
    #[arg(long, default_value_t = 1)]
    pub to: u32,
    /// Points along the path, ends included.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
}

#[derive(Args, Debug)]
pub struct TraverseArgs {
    #[command(flatten)]
    pub common: PictureArgs,
    /// Only this latent dimension [default: one row per dimension].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Each dimension varies over [−range, range] around the item's posterior mean.
    #[arg(long, default_value_t = 3.0)]
    pub range: f32,
    #[arg(long, default_value_t = 11)]
    pub steps: usize,
    /// The item whose posterior mean is the centre.
    #[arg(long, default_value_t = 0)]
    pub item: u32,
}

struct Loaded {
    ckpt: Checkpoint,
    set: Dataset,
    gpu: Gpu,
    codec: Codec,
    shape: ImageShape,
}

fn load(args: &PictureArgs) -> anyhow::Result<Loaded> {
    let ckpt = Checkpoint::load(&args.run.join(checkpoint::FILE))?;
    let s = &ckpt.settings;
    let (_, set) = super::run_data(args.data.as_deref(), s, false)?;
    let Some(shape) = ImageShape::of(&set.item_shape, s.model.input) else {
        bail!("{}", ImageShape::refusal(&set.item_shape, s.model.input));
    };
    let gpu = Gpu::new(&args.device.request())?;
    let data = DeviceData::upload(&gpu, "picture pixels", &set)?;
    let params = gpu.upload("params", &ckpt.params)?;
    let codec = Codec::new(&gpu, &s.model, &params, &data, CODEC_ROWS)?;
    Ok(Loaded {
        ckpt,
        set,
        gpu,
        codec,
        shape,
    })
}

impl Loaded {
    fn check_item(&self, item: u32) -> anyhow::Result<()> {
        if item as usize >= self.set.len {
            bail!(
                "item {item} is out of range: the data has {} items",
                self.set.len
            );
        }
        Ok(())
    }

    /// Decodes any number of latents, `CODEC_ROWS` at a time.
    fn decode_all(&self, z: &[f32]) -> anyhow::Result<Vec<f32>> {
        let l = self.ckpt.settings.model.latent;
        let mut out = Vec::new();
        for part in z.chunks(CODEC_ROWS * l) {
            out.extend(self.codec.decode(&self.gpu, part)?);
        }
        Ok(out)
    }

    fn write(
        &self,
        args: &PictureArgs,
        default: &str,
        images: &[f32],
        cols: usize,
    ) -> anyhow::Result<()> {
        let path = args.out.clone().unwrap_or_else(|| args.run.join(default));
        let (w, h) = write_grid(&path, images, self.shape, cols)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({w}×{h})", path.display());
        Ok(())
    }
}

fn check_count(n: usize, what: &str) -> anyhow::Result<()> {
    if n == 0 || n > 4096 {
        bail!("{what} must be between 1 and 4096");
    }
    Ok(())
}

pub fn sample(args: &SampleArgs) -> anyhow::Result<()> {
    check_count(args.n, "--n")?;
    let m = load(&args.common)?;
    let l = m.codec.top_latent();
    let pos = StreamPos {
        seed: args.common.seed,
        step: 0,
        stream: 0x5a4d,
    };
    let z: Vec<f32> = normals(&pos, args.n * l)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mut images = Vec::with_capacity(args.n * m.ckpt.settings.model.input);
    for (step, part) in z.chunks(CODEC_ROWS * l).enumerate() {
        images.extend(
            m.codec
                .generate(&m.gpu, part, args.common.seed, step as u32)?,
        );
    }
    let cols = (args.n as f64).sqrt().ceil() as usize;
    m.write(&args.common, "samples.png", &images, cols)
}

pub fn reconstruct(args: &ReconstructArgs) -> anyhow::Result<()> {
    check_count(args.n, "--n")?;
    let m = load(&args.common)?;
    let n = args.n.min(m.set.len).min(CODEC_ROWS);
    let items: Vec<u32> = (0..n as u32).collect();
    let mu = m.codec.encode(&m.gpu, &items)?;
    let recon = m.codec.decode(&m.gpu, &mu)?;
    let originals = m.codec.originals(&m.gpu, &items)?;
    // Rows of up to 16: originals, then their reconstructions.
    let cols = n.min(16);
    let d = m.ckpt.settings.model.input;
    let mut grid = Vec::new();
    for start in (0..n).step_by(cols) {
        let end = (start + cols).min(n);
        for src in [&originals, &recon] {
            grid.extend(&src[start * d..end * d]);
            grid.extend(std::iter::repeat_n(0.0, (cols - (end - start)) * d));
        }
    }
    m.write(&args.common, "reconstructions.png", &grid, cols)
}

pub fn interpolate(args: &InterpolateArgs) -> anyhow::Result<()> {
    if args.steps < 2 || args.steps > 64 {
        bail!("--steps must be between 2 and 64");
    }
    let m = load(&args.common)?;
    m.check_item(args.from)?;
    m.check_item(args.to)?;
    let l = m.ckpt.settings.model.latent;
    let mu = m.codec.encode(&m.gpu, &[args.from, args.to])?;
    let (a, b) = mu.split_at(l);
    let ts: Vec<f32> = (0..args.steps)
        .map(|i| i as f32 / (args.steps - 1) as f32)
        .collect();
    // Two rows: linear, then spherical interpolation.
    let mut z = Vec::new();
    for t in &ts {
        z.extend(a.iter().zip(b).map(|(x, y)| x + t * (y - x)));
    }
    for &t in &ts {
        z.extend(slerp(a, b, t));
    }
    let images = m.decode_all(&z)?;
    m.write(&args.common, "interpolation.png", &images, args.steps)
}

pub fn traverse(args: &TraverseArgs) -> anyhow::Result<()> {
    if args.steps < 2 || args.steps > 64 || !(args.range > 0.0 && args.range.is_finite()) {
        bail!("--steps must be between 2 and 64 and --range positive");
    }
    let m = load(&args.common)?;
    m.check_item(args.item)?;
    let l = m.ckpt.settings.model.latent;
    let dims: Vec<usize> = match args.dim {
        Some(d) if d >= l => bail!("--dim {d} is out of range: the latent has {l} dimensions"),
        Some(d) => vec![d],
        None => (0..l).collect(),
    };
    let centre = m.codec.encode(&m.gpu, &[args.item])?;
    let mut z = Vec::new();
    for &d in &dims {
        for i in 0..args.steps {
            let v = -args.range + 2.0 * args.range * i as f32 / (args.steps - 1) as f32;
            let mut row = centre.clone();
            row[d] = centre[d] + v;
            z.extend(row);
        }
    }
    let images = m.decode_all(&z)?;
    m.write(&args.common, "traversal.png", &images, args.steps)
}

#[derive(Args, Debug)]
pub struct LatentArgs {
    #[command(flatten)]
    pub common: PictureArgs,
    /// Plot at most this many items.
    #[arg(long, default_value_t = 5000)]
    pub limit: usize,
}

/// Posterior means of the data coloured by label: the two latent dimensions themselves when
/// the latent is 2-D, else the first two principal components.
pub fn latent(args: &LatentArgs) -> anyhow::Result<()> {
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let m = load(&args.common)?;
    let Some(labels) = m.set.labels.clone() else {
        bail!("the data has no labels to colour the points by");
    };
    let l = m.ckpt.settings.model.latent;
    let n = args.limit.min(m.set.len);
    let items: Vec<u32> = (0..n as u32).collect();
    let mut mu = Vec::new();
    for part in items.chunks(CODEC_ROWS) {
        mu.extend(m.codec.encode(&m.gpu, part)?);
    }
    let points = first_two_components(&mu, l);
    let (title, axes) = if l <= 2 {
        ("posterior means", ("z1", "z2"))
    } else {
        (
            "posterior means, first two principal components",
            ("PC 1", "PC 2"),
        )
    };
    let path = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| args.common.run.join("latent.png"));
    scatter(&path, &points, &labels[..n], title, axes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("wrote {} ({n} items)", path.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The run directory (its metrics.jsonl).
    pub run: PathBuf,
    /// The PNG to write [default: RUN/curves.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Loss curves from a run's metrics: train and test −ELBO per epoch; the reconstruction and KL
/// terms per logging interval.
pub fn plot(args: &PlotArgs) -> anyhow::Result<()> {
    let path = args.run.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    let series = |filter: &str, x: &str, y: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.get(filter).is_some())
            .filter_map(|r| Some((r[x].as_f64()?, r[y].as_f64()?)))
            .collect()
    };
    let curve = |name: &str, points| Curve {
        name: name.into(),
        points,
    };
    let epochs = vec![
        curve("train −ELBO", series("train_loss", "epoch", "train_loss")),
        curve("test −ELBO", series("test_loss", "epoch", "test_loss")),
    ];
    let terms = vec![
        curve("reconstruction", series("rec", "step", "rec")),
        curve("KL", series("kl", "step", "kl")),
    ];
    let panels: Vec<Panel> = [
        ("−ELBO per epoch (nats)", "epoch", epochs),
        ("loss terms per logging interval (nats)", "step", terms),
    ]
    .into_iter()
    .map(|(title, x, curves)| Panel {
        title: title.into(),
        x_label: x.into(),
        y_label: "nats".into(),
        curves: curves
            .into_iter()
            .filter(|c| !c.points.is_empty())
            .collect(),
    })
    .filter(|p| !p.curves.is_empty())
    .collect();
    if panels.is_empty() {
        bail!(
            "{}: no finished logging interval or epoch to plot",
            path.display()
        );
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.run.join("curves.png"));
    line_panels(&out, &panels).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
