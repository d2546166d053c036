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
        let layers = cfg.layers();
        let (l, d) = (cfg.latent, cfg.input);
        let drawn = rows * samples as usize;
        let scratch = |name: &str, len: usize| gpu.zeros(name, len as u64);
        let param = |name: &str| tensor(params, layout, name);
        let mut dispatches = Vec::new();
        let hidden = |act: Activation| MatmulConfig {
            bias: true,
            act,
            store_pre: true,
            ..MatmulConfig::new(Layout::NN)
        };
        let linear = MatmulConfig {
            bias: true,
            ..MatmulConfig::new(Layout::NN)
        };
        // act(input·W + b) for each layer of a stack, on `n` rows.
        let stack = |mm: &mut Matmuls,
                     layers: &[Dense],
                     input: &View,
                     n: usize,
                     dispatches: &mut Vec<Dispatch>| {
            let mut bufs: Vec<LayerBuffers> = Vec::new();
            let mut input = input.clone();
            for layer in layers {
                let buf = LayerBuffers {
                    pre: scratch(&format!("{}.pre", layer.name), n * layer.fan_out)?,
                    out: scratch(&format!("{}.out", layer.name), n * layer.fan_out)?,
                };
                dispatches.push(mm.bind(
                    hidden(layer.act),
                    (n, layer.fan_out, layer.fan_in),
                    &input,
                    &param(&layer.weight()),
                    &buf.out,
                    Some(&param(&layer.bias())),
                    Some(&buf.pre),
                )?);
                input = buf.out.clone();
                bufs.push(buf);
            }
            Ok::<_, crate::gpu::GpuError>((bufs, input))
        };
        let (enc, top) = stack(mm, &layers.encoder, x, rows, &mut dispatches)?;
        let (mu, logvar) = (scratch("mu", rows * l)?, scratch("logvar", rows * l)?);
        for (head, out) in [(&layers.mu, &mu), (&layers.logvar, &logvar)] {
            dispatches.push(mm.bind(
                linear,
                (rows, l, head.fan_in),
                &top,
                &param(&head.weight()),
                out,
                Some(&param(&head.bias())),
                None,
            )?);
        }
        let (z, eps) = (scratch("z", drawn * l)?, scratch("eps", drawn * l)?);
        let shape = SampleShape {
            rows: rows as u32,
            cols: l as u32,
            samples,
        };
        dispatches.push(sampler.forward(gpu, shape, 0, &mu, &logvar, &z, &eps)?);
        let (dec, last) = stack(mm, &layers.decoder, &z, drawn, &mut dispatches)?;
        let out = scratch("dec", drawn * d)?;
        let o = &layers.out;
        dispatches.push(mm.bind(
            linear,
            (drawn, d, o.fan_in),
            &last,
            &param(&o.weight()),
            &out,
            Some(&param(&o.bias())),
            None,
        )?);
        Ok(Self {
            enc,
            mu,
            logvar,
            z,
            eps,
            dec,
            out,
            dispatches,
        })
    }
}
