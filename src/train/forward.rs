//! The forward pass as recorded dispatches: encoder on `rows` inputs, `samples` reparameterized
//! draws per input, decoder on every draw. The training step uses it with one sample; the
//! importance-sampled evaluation with many.

use std::collections::HashMap;

use crate::gpu::{Dispatch, Gpu, Result, View};
use crate::kernels::Activation;
use crate::kernels::matmul::{Layout, Matmul, MatmulConfig};
use crate::kernels::sample::{SampleShape, Sampler};
use crate::model::{Dense, ParamLayout, VaeConfig};

/// Compiled matmul variants, one per epilogue configuration a graph uses.
pub(crate) struct Matmuls<'g> {
    gpu: &'g Gpu,
    compiled: HashMap<MatmulConfig, Matmul>,
}

impl<'g> Matmuls<'g> {
    pub(crate) fn new(gpu: &'g Gpu) -> Self {
        Self {
            gpu,
            compiled: HashMap::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bind(
        &mut self,
        cfg: MatmulConfig,
        (m, n, k): (usize, usize, usize),
        a: &View,
        b: &View,
        c: &View,
        bias: Option<&View>,
        aux: Option<&View>,
    ) -> Result<Dispatch> {
        let gpu = self.gpu;
        let matmul = match self.compiled.entry(cfg) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Matmul::new(gpu, cfg, None)?),
        };
        matmul.bind(gpu, m as u32, n as u32, k as u32, a, b, c, bias, aux)
    }
}

/// One tensor of the flat parameter buffer.
pub(crate) fn tensor(params: &View, layout: &ParamLayout, name: &str) -> View {
    let t = layout.get(name);
    params.slice(t.offset as u64, t.len() as u64)
}

/// A hidden layer's activations: the pre-activation (for the backward) and the output.
pub struct LayerBuffers {
    pub pre: View,
    pub out: View,
}

/// The encoder's buffers for `rows` inputs and its dispatches.
pub struct Encoded {
    /// Hidden layers, [rows, width] each.
    pub enc: Vec<LayerBuffers>,
    /// The posterior, [rows, L].
    pub mu: View,
    pub logvar: View,
    pub dispatches: Vec<Dispatch>,
}

/// The decoder's buffers for `rows` latents and its dispatches.
pub struct Decoded {
    /// Hidden layers, [rows, width] each.
    pub dec: Vec<LayerBuffers>,
    /// Logits (Bernoulli) or means (Gaussian), [rows, D].
    pub out: View,
    pub dispatches: Vec<Dispatch>,
}

/// The forward pass's buffers, and its dispatches in recording order.
pub struct Forward {
    /// Encoder hidden layers, [rows, width] each.
    pub enc: Vec<LayerBuffers>,
    /// The posterior, [rows, L].
    pub mu: View,
    pub logvar: View,
    /// The draws and their noise, [samples·rows, L], row s·rows + r for input r.
    pub z: View,
    pub eps: View,
    /// Decoder hidden layers, [samples·rows, width] each.
    pub dec: Vec<LayerBuffers>,
    /// Logits (Bernoulli) or means (Gaussian), [samples·rows, D].
    pub out: View,
    pub dispatches: Vec<Dispatch>,
}

fn hidden(act: Activation) -> MatmulConfig {
    MatmulConfig {
        bias: true,
        act,
        store_pre: true,
        ..MatmulConfig::new(Layout::NN)
    }
}

fn linear() -> MatmulConfig {
    MatmulConfig {
        bias: true,
        ..MatmulConfig::new(Layout::NN)
    }
}

/// `act(input·W + b)` for each layer of a stack on `rows` rows; returns the layers' buffers and
/// the last output.
#[allow(clippy::too_many_arguments)]
fn stack(
    gpu: &Gpu,
    mm: &mut Matmuls,
    layout: &ParamLayout,
    params: &View,
    layers: &[Dense],
    input: &View,
    rows: usize,
    dispatches: &mut Vec<Dispatch>,
) -> Result<(Vec<LayerBuffers>, View)> {
    let mut bufs = Vec::new();
    let mut input = input.clone();
    for layer in layers {
        let buf = LayerBuffers {
            pre: gpu.zeros(
                &format!("{}.pre", layer.name),
                (rows * layer.fan_out) as u64,
            )?,
            out: gpu.zeros(
                &format!("{}.out", layer.name),
                (rows * layer.fan_out) as u64,
            )?,
        };
        dispatches.push(mm.bind(
            hidden(layer.act),
            (rows, layer.fan_out, layer.fan_in),
            &input,
            &tensor(params, layout, &layer.weight()),
            &buf.out,
            Some(&tensor(params, layout, &layer.bias())),
            Some(&buf.pre),
        )?);
        input = buf.out.clone();
        bufs.push(buf);
    }
    Ok((bufs, input))
}

/// Records the encoder of `cfg` on `x` ([rows, D]).
pub(crate) fn encode(
    gpu: &Gpu,
    mm: &mut Matmuls,
    cfg: &VaeConfig,
    layout: &ParamLayout,
    params: &View,
    x: &View,
    rows: usize,
) -> Result<Encoded> {
    let layers = cfg.layers();
    let l = cfg.latent;
    let mut dispatches = Vec::new();
    let (enc, top) = stack(
        gpu,
        mm,
        layout,
        params,
        &layers.encoder,
        x,
        rows,
        &mut dispatches,
    )?;
    let mu = gpu.zeros("mu", (rows * l) as u64)?;
    let logvar = gpu.zeros("logvar", (rows * l) as u64)?;
    for (head, out) in [(&layers.mu, &mu), (&layers.logvar, &logvar)] {
        dispatches.push(mm.bind(
            linear(),
            (rows, l, head.fan_in),
            &top,
            &tensor(params, layout, &head.weight()),
            out,
            Some(&tensor(params, layout, &head.bias())),
            None,
        )?);
    }
    Ok(Encoded {
        enc,
        mu,
        logvar,
        dispatches,
    })
}

/// Records the decoder of `cfg` on `z` ([rows, L]).
pub(crate) fn decode(
    gpu: &Gpu,
    mm: &mut Matmuls,
    cfg: &VaeConfig,
    layout: &ParamLayout,
    params: &View,
    z: &View,
    rows: usize,
) -> Result<Decoded> {
    let layers = cfg.layers();
    let mut dispatches = Vec::new();
    let (dec, last) = stack(
        gpu,
        mm,
        layout,
        params,
        &layers.decoder,
        z,
        rows,
        &mut dispatches,
    )?;
    let out = gpu.zeros("dec", (rows * cfg.input) as u64)?;
    let o = &layers.out;
    dispatches.push(mm.bind(
        linear(),
        (rows, cfg.input, o.fan_in),
        &last,
        &tensor(params, layout, &o.weight()),
        &out,
        Some(&tensor(params, layout, &o.bias())),
        None,
    )?);
    Ok(Decoded {
        dec,
        out,
        dispatches,
    })
}

impl Forward {
    /// Records the forward pass of `cfg` on `x` ([rows, D]) with the parameters in `params`,
    /// drawing ε from `sampler`'s stream 0.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        gpu: &Gpu,
        mm: &mut Matmuls,
        cfg: &VaeConfig,
        layout: &ParamLayout,
        params: &View,
        x: &View,
        rows: usize,
        samples: u32,
        sampler: &Sampler,
    ) -> Result<Self> {
        let l = cfg.latent;
        let drawn = rows * samples as usize;
        let e = encode(gpu, mm, cfg, layout, params, x, rows)?;
        let mut dispatches = e.dispatches;
        let z = gpu.zeros("z", (drawn * l) as u64)?;
        let eps = gpu.zeros("eps", (drawn * l) as u64)?;
        let shape = SampleShape {
            rows: rows as u32,
            cols: l as u32,
            samples,
        };
        dispatches.push(sampler.forward(gpu, shape, 0, &e.mu, &e.logvar, &z, &eps)?);
        let d = decode(gpu, mm, cfg, layout, params, &z, drawn)?;
        dispatches.extend(d.dispatches);
        Ok(Self {
            enc: e.enc,
            mu: e.mu,
            logvar: e.logvar,
            z,
            eps,
            dec: d.dec,
            out: d.out,
            dispatches,
        })
    }
}
