//! The forward pass as recorded dispatches: encoder on `rows` inputs, `samples` reparameterized
//! draws per input, decoder on every draw. The training step uses it with one sample; the
//! importance-sampled evaluation with many.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::gpu::{Dispatch, Gpu, Result, View};
use crate::kernels::Activation;
use crate::kernels::conv::{Conv, ConvConfig, ConvOp, ConvShape, ConvVariant};
use crate::kernels::hierarchy::{HierarchyKernels, StageShape, StageValues};
use crate::kernels::ladder::{LadderInputs, LadderKernels};
use crate::kernels::matmul::{Blocked, ColumnBlocks, Layout, Matmul, MatmulConfig, MatmulVariant};
use crate::kernels::sample::{SampleShape, Sampler};
use crate::model::{ALIGN, ConvLayer, Dense, ParamLayout, StageLayers, VaeConfig};

/// Products smaller than this (multiply-adds) use [`MatmulVariant::auto`] untimed.
const MIN_TUNED_MACS: u64 = 1 << 18;

/// The matmuls a graph uses: each product runs the variant timed fastest for its layout and shape
/// on this adapter ([`Gpu::tuned`]), compiled once per epilogue configuration; and its
/// convolutions (implicit GEMMs), compiled once per configuration.
pub(crate) struct Matmuls<'g> {
    gpu: &'g Gpu,
    compiled: HashMap<(MatmulConfig, MatmulVariant), Matmul>,
    convs: HashMap<ConvConfig, Conv>,
    /// Plain products of each layout and variant, for timing shapes not in the tuning cache.
    timing: HashMap<(Layout, MatmulVariant), Matmul>,
}

impl<'g> Matmuls<'g> {
    pub(crate) fn new(gpu: &'g Gpu) -> Self {
        Self {
            gpu,
            compiled: HashMap::new(),
            convs: HashMap::new(),
            timing: HashMap::new(),
        }
    }

    /// Binds one pass of a convolution (see [`Conv::bind_aux`]) with the variant that times
    /// fastest for this shape on this adapter (timed once, cached with the matmuls').
    pub(crate) fn conv(
        &mut self,
        cfg: ConvConfig,
        shape: &ConvShape,
        inputs: [&View; 2],
        output: &View,
        (bias, aux): (Option<&View>, Option<&View>),
    ) -> Result<Vec<Dispatch>> {
        let gpu = self.gpu;
        let variants = cfg.variants();
        let cfg = if variants.len() > 1 {
            let names: Vec<&str> = variants.iter().map(|v| v.name()).collect();
            // The candidates are part of the key: a new variant is timed, not skipped.
            let key = format!("{} {shape:?} {names:?}", cfg.describe());
            let with = |name: &str| ConvConfig {
                variant: variants
                    .iter()
                    .copied()
                    .find(|v| v.name() == name)
                    .unwrap_or(ConvVariant::Gemm),
                ..cfg
            };
            let chosen = gpu.tuned(&key, &names, |name, give_up| {
                self.compiled_conv(with(name))?.time(gpu, shape, give_up)
            })?;
            with(&chosen)
        } else {
            cfg
        };
        let conv = self.compiled_conv(cfg)?;
        Ok(conv
            .bind_aux(gpu, shape, inputs, output, bias, aux)?
            .dispatches)
    }

    fn compiled_conv(&mut self, cfg: ConvConfig) -> Result<&Conv> {
        Ok(match self.convs.entry(cfg) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Conv::new(self.gpu, cfg)?),
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bind(
        &mut self,
        cfg: MatmulConfig,
        dims: (usize, usize, usize),
        a: &View,
        b: &View,
        c: &View,
        bias: Option<&View>,
        aux: Option<&View>,
    ) -> Result<Dispatch> {
        self.bind_blocked(cfg, dims, [a, b, c], (bias, aux), None)
    }

    /// As [`Matmuls::bind`] for a config with column blocks ([`Matmul::bind_blocked`]). The
    /// variant is the one timed for the plain product of this shape, unless the blocks do not
    /// fit it.
    pub(crate) fn bind_blocked(
        &mut self,
        cfg: MatmulConfig,
        (m, n, k): (usize, usize, usize),
        abc: [&View; 3],
        (bias, aux): (Option<&View>, Option<&View>),
        blocks: Option<&ColumnBlocks>,
    ) -> Result<Dispatch> {
        let gpu = self.gpu;
        let (m, n, k) = (m as u32, n as u32, k as u32);
        let mut variant = self.variant(cfg.layout, m, n, k)?;
        if !variant.fits_blocks(cfg.layout, m, n, k, blocks) {
            variant = MatmulVariant::auto(gpu);
        }
        self.compiled_matmul(cfg, variant)?
            .bind_blocked(gpu, (m, n, k), abc, bias, aux, blocks)
    }

    /// Binds a [`MatmulConfig::reparam`] product ([`Matmul::bind_reparam`]).
    pub(crate) fn bind_reparam(
        &mut self,
        cfg: MatmulConfig,
        (m, n, k): (usize, usize, usize),
        ab: [&View; 2],
        d: [&View; 2],
        sample: [&View; 2],
    ) -> Result<Dispatch> {
        let gpu = self.gpu;
        let (m, n, k) = (m as u32, n as u32, k as u32);
        let variant = self.variant(cfg.layout, m, n, k)?;
        self.compiled_matmul(cfg, variant)?
            .bind_reparam(gpu, (m, n, k), ab, d, sample, None)
    }

    fn compiled_matmul(&mut self, cfg: MatmulConfig, variant: MatmulVariant) -> Result<&Matmul> {
        Ok(match self.compiled.entry((cfg, variant)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(Matmul::new(self.gpu, cfg, Some(variant))?),
        })
    }

    /// The variant for an m×n×k product in `layout`: [`MatmulVariant::auto_for`] unless another
    /// available one times faster.
    fn variant(&mut self, layout: Layout, m: u32, n: u32, k: u32) -> Result<MatmulVariant> {
        let gpu = self.gpu;
        let auto = MatmulVariant::auto_for(gpu, layout, m, n, k);
        let mut candidates = vec![auto];
        candidates.extend(
            MatmulVariant::available(gpu)
                .into_iter()
                .filter(|&v| v != auto && v.fits(layout, m, n, k)),
        );
        // Tiny products cost the dispatch's fixed overhead whatever the kernel: timing them
        // would only measure noise.
        if candidates.len() == 1 || (m as u64 * n as u64 * k as u64) < MIN_TUNED_MACS {
            return Ok(auto);
        }
        let names: Vec<&str> = candidates.iter().map(|v| v.name()).collect();
        let key = format!("matmul {layout:?} {m}x{n}x{k}");
        let chosen = gpu.tuned(&key, &names, |name, give_up| {
            let v = candidates
                .iter()
                .copied()
                .find(|v| v.name() == name)
                .unwrap_or(auto);
            let matmul = match self.timing.entry((layout, v)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(Matmul::new(gpu, MatmulConfig::new(layout), Some(v))?),
            };
            let (m64, n64, k64) = (m as u64, n as u64, k as u64);
            let a = gpu.zeros("tune.a", m64 * k64)?;
            let b = gpu.zeros("tune.b", k64 * n64)?;
            let c = gpu.zeros("tune.c", m64 * n64)?;
            let d = matmul.bind(gpu, m, n, k, &a, &b, &c, None, None)?;
            gpu.time_dispatches(&[&d], give_up)
        })?;
        Ok(candidates
            .into_iter()
            .find(|v| v.name() == chosen)
            .unwrap_or(auto))
    }
}

/// Two heads on one input with equal shapes (a Gaussian's μ and logσ²), as laid out in the flat
/// buffer: run as one product whose weight and bias are blocks `weight_stride` and
/// `bias_stride` elements apart ([`ColumnBlocks`]).
pub(crate) struct HeadPair {
    pub fan_in: usize,
    pub fan_out: usize,
    weight: usize,
    bias: usize,
    pub weight_stride: usize,
    pub bias_stride: usize,
}

impl HeadPair {
    /// `None` unless both heads have one shape and `second`'s tensors follow `first`'s.
    pub fn new(layout: &ParamLayout, first: &Dense, second: &Dense) -> Option<Self> {
        let (w0, w1) = (layout.get(&first.weight()), layout.get(&second.weight()));
        let (b0, b1) = (layout.get(&first.bias()), layout.get(&second.bias()));
        let same = first.fan_in == second.fan_in && first.fan_out == second.fan_out;
        (same && w1.offset > w0.offset && b1.offset > b0.offset).then(|| Self {
            fan_in: first.fan_in,
            fan_out: first.fan_out,
            weight: w0.offset,
            bias: b0.offset,
            weight_stride: w1.offset - w0.offset,
            bias_stride: b1.offset - b0.offset,
        })
    }

    /// Both weights (and what lies between) in `flat`: parameters or gradients.
    pub fn weights(&self, flat: &View) -> View {
        flat.slice(
            self.weight as u64,
            (self.weight_stride + self.fan_in * self.fan_out) as u64,
        )
    }

    /// Both biases (and what lies between) in `flat`.
    pub fn biases(&self, flat: &View) -> View {
        flat.slice(self.bias as u64, (self.bias_stride + self.fan_out) as u64)
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

/// A diagonal Gaussian computed by an MLP: its hidden layers' buffers and the (μ, logσ²) heads,
/// [rows, width] each.
pub struct Gaussian {
    pub hidden: Vec<LayerBuffers>,
    pub mu: View,
    pub logvar: View,
}

/// The encoder's buffers for `rows` inputs and its dispatches.
pub struct Encoded {
    /// Convolution layers, [rows, C·H·W] each.
    pub conv: Vec<LayerBuffers>,
    /// Hidden layers, [rows, width] each.
    pub enc: Vec<LayerBuffers>,
    /// The posterior, [rows, L].
    pub mu: View,
    pub logvar: View,
    pub dispatches: Vec<Dispatch>,
}

/// One stochastic layer above z_1 on the sample rows: q(z | z_below), its draw, and
/// p(z_below | z).
pub struct StageForward {
    pub q: Gaussian,
    /// [rows, L].
    pub eps: View,
    pub z: View,
    pub p: Gaussian,
}

/// The decoder's buffers for `rows` latents and its dispatches.
pub struct Decoded {
    /// Hidden layers, [rows, width] each.
    pub dec: Vec<LayerBuffers>,
    /// With convolutions: the output layer's, then each transposed convolution's but the last.
    pub head: Option<LayerBuffers>,
    pub conv: Vec<LayerBuffers>,
    /// Logits (Bernoulli) or means (Gaussian), [rows, D].
    pub out: View,
    pub dispatches: Vec<Dispatch>,
}

/// The forward pass's buffers, and its dispatches in recording order.
pub struct Forward {
    /// Encoder convolutions, [rows, C·H·W] each.
    pub enc_conv: Vec<LayerBuffers>,
    /// Encoder hidden layers, [rows, width] each.
    pub enc: Vec<LayerBuffers>,
    /// The posterior, [rows, L].
    pub mu: View,
    pub logvar: View,
    /// The draws and their noise, [samples·rows, L], row s·rows + r for input r.
    pub z: View,
    pub eps: View,
    /// Decoder hidden layers, [samples·rows, width] each, and with convolutions the output
    /// layer's and the transposed convolutions' (see [`Decoded`]).
    pub dec: Vec<LayerBuffers>,
    pub dec_head: Option<LayerBuffers>,
    pub dec_conv: Vec<LayerBuffers>,
    /// Logits (Bernoulli) or means (Gaussian), [samples·rows, D].
    pub out: View,
    /// The stochastic layers above z_1 (empty for a one-layer model), on the samples·rows rows,
    /// and the sum of their latent terms per row (`shaders/hierarchy.wgsl`).
    pub stages: Vec<StageForward>,
    pub upper_terms: Option<View>,
    /// With top-down inference: each layer's sampled posterior (see [`LadderForward`]).
    pub ladder: Option<LadderForward>,
    pub dispatches: Vec<Dispatch>,
}

/// A ladder VAE's forward beyond the hierarchy's (`VaeConfig::ladder`). Then the encoder runs on
/// every sample row, `Forward::{mu, logvar}` hold the bottom-up (μ̂_1, logσ̂²_1), and each
/// stage's `q` is the bottom-up Gaussian of its layer (its inference MLP applied to the mean
/// below), its `p` the prior of the layer below from the draw above.
pub struct LadderForward {
    /// Per layer, bottom-up: the posterior that was sampled, [rows, L_l]: the combination of
    /// the bottom-up Gaussian with the prior from above, and the top layer's bottom-up Gaussian.
    pub q_mu: Vec<View>,
    pub q_logvar: Vec<View>,
    /// Zeros, [rows, L_1]: what the importance-weight kernels read as z_1's ε and logσ², since
    /// the ladder's latent terms (z_1's posterior term included) are all in `upper_terms`.
    pub zeros: View,
}

/// A model on the device: its configuration, its parameters and the compiled matmuls that
/// record its layers.
pub(crate) struct Net<'a, 'g> {
    pub gpu: &'a Gpu,
    pub mm: &'a mut Matmuls<'g>,
    pub cfg: &'a VaeConfig,
    pub layout: &'a ParamLayout,
    pub params: &'a View,
}

impl Net<'_, '_> {
    /// Records `out = input·W + b` on `rows` rows; with `pre`, stores that there and applies
    /// the layer's activation into `out`.
    fn dense(
        &mut self,
        layer: &Dense,
        input: &View,
        out: &View,
        rows: usize,
        pre: Option<&View>,
    ) -> Result<Dispatch> {
        let cfg = MatmulConfig {
            bias: true,
            act: if pre.is_some() {
                layer.act
            } else {
                Activation::Identity
            },
            store_pre: pre.is_some(),
            ..MatmulConfig::new(Layout::NN)
        };
        self.mm.bind(
            cfg,
            (rows, layer.fan_out, layer.fan_in),
            input,
            &tensor(self.params, self.layout, &layer.weight()),
            out,
            Some(&tensor(self.params, self.layout, &layer.bias())),
            pre,
        )
    }

    /// Both heads of `pair` on `input` ([rows, fan_in]) into `out`: the first head's [rows, L]
    /// output, then the second's at the next aligned offset (as [`Net::gaussian`] lays them).
    fn heads(
        &mut self,
        pair: &HeadPair,
        input: &View,
        out: &View,
        rows: usize,
    ) -> Result<Dispatch> {
        let l = pair.fan_out;
        let cfg = MatmulConfig {
            bias: true,
            blocked: Blocked::new(false, true, true),
            ..MatmulConfig::new(Layout::NN)
        };
        let out_stride = ((rows * l) as u64).next_multiple_of(ALIGN as u64);
        let blocks = ColumnBlocks {
            width: l as u32,
            b: pair.weight_stride as u32,
            c: out_stride as u32,
            vector: pair.bias_stride as u32,
            ..Default::default()
        };
        self.mm.bind_blocked(
            cfg,
            (rows, 2 * l, pair.fan_in),
            [input, &pair.weights(self.params), out],
            (Some(&pair.biases(self.params)), None),
            Some(&blocks),
        )
    }

    /// The hidden layers of a stack on `rows` rows; returns their buffers and the last output.
    fn stack(
        &mut self,
        layers: &[Dense],
        input: &View,
        rows: usize,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<(Vec<LayerBuffers>, View)> {
        let mut bufs = Vec::new();
        let mut input = input.clone();
        for layer in layers {
            let len = (rows * layer.fan_out) as u64;
            let buf = LayerBuffers {
                pre: self.gpu.zeros(&format!("{}.pre", layer.name), len)?,
                out: self.gpu.zeros(&format!("{}.out", layer.name), len)?,
            };
            dispatches.push(self.dense(layer, &input, &buf.out, rows, Some(&buf.pre))?);
            input = buf.out.clone();
            bufs.push(buf);
        }
        Ok((bufs, input))
    }
}

impl Net<'_, '_> {
    /// Records convolution layers on `rows` rows of `input`: each with its activation, storing
    /// its pre-activation (a layer without one is its own), the last writing `out` when given.
    /// Returns their buffers (but that last layer's) and the last output.
    fn conv_stack(
        &mut self,
        layers: &[ConvLayer],
        input: &View,
        rows: usize,
        out: Option<&View>,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<(Vec<LayerBuffers>, View)> {
        let mut bufs = Vec::new();
        let mut input = input.clone();
        for (i, layer) in layers.iter().enumerate() {
            let cfg = ConvConfig {
                bias: true,
                act: layer.act,
                store_pre: layer.act != Activation::Identity,
                channels_last: layer.channels_last,
                ..ConvConfig::new(layer.transposed, ConvOp::Forward)
            };
            let len = (rows * layer.out_len()) as u64;
            let last_out = out.filter(|_| i + 1 == layers.len());
            let output = match last_out {
                Some(o) => o.clone(),
                None => self.gpu.zeros(&format!("{}.out", layer.name), len)?,
            };
            // Without an activation the output is its own pre-activation (act′ = 1 reads none).
            let pre = if cfg.store_pre {
                Some(self.gpu.zeros(&format!("{}.pre", layer.name), len)?)
            } else {
                last_out.is_none().then(|| output.clone())
            };
            let (w, b) = (
                tensor(self.params, self.layout, &layer.weight()),
                tensor(self.params, self.layout, &layer.bias()),
            );
            dispatches.extend(self.mm.conv(
                cfg,
                &layer.shape(rows),
                [&input, &w],
                &output,
                (Some(&b), pre.as_ref().filter(|_| cfg.store_pre)),
            )?);
            if let Some(pre) = pre {
                bufs.push(LayerBuffers {
                    pre,
                    out: output.clone(),
                });
            }
            input = output;
        }
        Ok((bufs, input))
    }

    /// Records a Gaussian MLP on `input` ([rows, ·]): the hidden stack, then both heads.
    pub(crate) fn gaussian(
        &mut self,
        hidden: &[Dense],
        (mu_head, logvar_head): (&Dense, &Dense),
        input: &View,
        rows: usize,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<Gaussian> {
        let (hidden_bufs, top) = self.stack(hidden, input, rows, dispatches)?;
        // μ and logσ² side by side in one buffer, so one blocked product computes both.
        let len = (rows * mu_head.fan_out) as u64;
        let stride = len.next_multiple_of(ALIGN as u64);
        let heads = self
            .gpu
            .zeros(&format!("{}+logvar.out", mu_head.name), stride + len)?;
        let (mu, logvar) = (heads.slice(0, len), heads.slice(stride, len));
        match HeadPair::new(self.layout, mu_head, logvar_head) {
            Some(pair) => dispatches.push(self.heads(&pair, &top, &heads, rows)?),
            None => {
                for (head, out) in [(mu_head, &mu), (logvar_head, &logvar)] {
                    dispatches.push(self.dense(head, &top, out, rows, None)?);
                }
            }
        }
        Ok(Gaussian {
            hidden: hidden_bufs,
            mu,
            logvar,
        })
    }

    /// Records the encoder q(z_1 | x) on `x` ([rows, D]).
    pub(crate) fn encode(&mut self, x: &View, rows: usize) -> Result<Encoded> {
        let layers = self.cfg.layers();
        let mut dispatches = Vec::new();
        let (conv, flat) = self.conv_stack(&layers.enc_conv, x, rows, None, &mut dispatches)?;
        let q = self.gaussian(
            &layers.encoder,
            (&layers.mu, &layers.logvar),
            &flat,
            rows,
            &mut dispatches,
        )?;
        Ok(Encoded {
            conv,
            enc: q.hidden,
            mu: q.mu,
            logvar: q.logvar,
            dispatches,
        })
    }

    /// Records the stochastic layers above z_1 on `rows` draws `z1` ([rows, L_1]): each stage's
    /// q, a draw from `sampler`'s stream 1 + its index, and p; then their latent terms.
    fn upper(
        &mut self,
        z1: &View,
        rows: usize,
        sampler: &Sampler,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<(Vec<StageForward>, Option<View>)> {
        let layers = self.cfg.layers();
        if layers.upper.is_empty() {
            return Ok((Vec::new(), None));
        }
        let gpu = self.gpu;
        let mut stages: Vec<StageForward> = Vec::new();
        for (j, st) in layers.upper.iter().enumerate() {
            let below = stages.last().map_or(z1, |s| &s.z).clone();
            let q = self.gaussian(
                &st.q_hidden,
                (&st.q_mu, &st.q_logvar),
                &below,
                rows,
                dispatches,
            )?;
            let l = st.q_mu.fan_out;
            let z = gpu.zeros(&format!("z{}", j + 2), (rows * l) as u64)?;
            let eps = gpu.zeros(&format!("eps{}", j + 2), (rows * l) as u64)?;
            let shape = SampleShape {
                rows: rows as u32,
                cols: l as u32,
                samples: 1,
            };
            dispatches.push(sampler.forward(
                gpu,
                shape,
                1 + j as u32,
                &q.mu,
                &q.logvar,
                &z,
                &eps,
            )?);
            let p = self.gaussian(&st.p_hidden, (&st.p_mu, &st.p_logvar), &z, rows, dispatches)?;
            stages.push(StageForward { q, eps, z, p });
        }
        let kernels = HierarchyKernels::new(gpu)?;
        let terms = gpu.zeros("upper_terms", rows as u64)?;
        for (j, st) in stages.iter().enumerate() {
            let below = if j == 0 { z1 } else { &stages[j - 1].z };
            let shape = StageShape {
                rows: rows as u32,
                latent: (st.z.len / rows as u64) as u32,
                below: (below.len / rows as u64) as u32,
                top: j + 1 == stages.len(),
            };
            dispatches.push(kernels.terms(gpu, shape, &st.values(below), &terms, j > 0)?);
        }
        Ok((stages, Some(terms)))
    }

    /// Records ancestral sampling down the hierarchy from `z_top` ([rows, L_top]): each stage's
    /// p(z_below | z), from the top, drawn from `sampler`'s stream of the stage's index, the
    /// last draw written to `z1` ([rows, L_1]). Nothing for a one-layer model.
    pub(crate) fn generate_down(
        &mut self,
        z_top: &View,
        z1: &View,
        rows: usize,
        sampler: &Sampler,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<()> {
        let layers = self.cfg.layers();
        let mut z = z_top.clone();
        for (j, st) in layers.upper.iter().enumerate().rev() {
            let p = self.gaussian(&st.p_hidden, (&st.p_mu, &st.p_logvar), &z, rows, dispatches)?;
            let lb = st.p_mu.fan_out;
            let below = if j == 0 {
                z1.clone()
            } else {
                self.gpu.zeros(&format!("z{}", j + 1), (rows * lb) as u64)?
            };
            let eps = self.gpu.zeros("generate.eps", (rows * lb) as u64)?;
            let shape = SampleShape {
                rows: rows as u32,
                cols: lb as u32,
                samples: 1,
            };
            dispatches
                .push(sampler.forward(self.gpu, shape, j as u32, &p.mu, &p.logvar, &below, &eps)?);
            z = below;
        }
        Ok(())
    }

    /// Records a ladder's bottom-up Gaussians above z_1 on `rows` rows: stage l's inference MLP
    /// on the bottom-up mean of the layer below, starting from z_1's `mu_hat`.
    fn bottom_up(
        &mut self,
        mu_hat: &View,
        rows: usize,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<Vec<Gaussian>> {
        let layers = self.cfg.layers();
        let mut ups: Vec<Gaussian> = Vec::new();
        for st in &layers.upper {
            let below = ups.last().map_or(mu_hat, |q| &q.mu).clone();
            let q = self.gaussian(
                &st.q_hidden,
                (&st.q_mu, &st.q_logvar),
                &below,
                rows,
                dispatches,
            )?;
            ups.push(q);
        }
        Ok(ups)
    }

    /// Records stage `st`'s prior of the layer below from `above`, and that layer's ladder
    /// posterior: the prior combined with the bottom-up `hat` = (μ̂, logσ̂²). Returns (the prior,
    /// μ_q, logσ²_q).
    fn posterior_below(
        &mut self,
        st: &StageLayers,
        kernels: &LadderKernels,
        above: &View,
        (mu_hat, lv_hat): (&View, &View),
        rows: usize,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<(Gaussian, View, View)> {
        let p = self.gaussian(
            &st.p_hidden,
            (&st.p_mu, &st.p_logvar),
            above,
            rows,
            dispatches,
        )?;
        let (mu_q, lv_q) = (
            self.gpu.zeros("ladder.q_mu", mu_hat.len)?,
            self.gpu.zeros("ladder.q_logvar", mu_hat.len)?,
        );
        let inputs = LadderInputs {
            mu_hat,
            lv_hat,
            mu_p: &p.mu,
            lv_p: &p.logvar,
        };
        dispatches.push(kernels.combine(self.gpu, mu_hat.len, &inputs, &mu_q, &lv_q)?);
        Ok((p, mu_q, lv_q))
    }

    /// Records a ladder's posterior mean of z_1 for the encoded `e` ([rows] inputs): the
    /// bottom-up Gaussians, then down the layers with each at its posterior mean (z_L = μ̂_L,
    /// z_l = μ_q,l of the combination with the prior from the mean above). Reconstructions and
    /// latent pictures use it where a one-layer model uses μ.
    pub(crate) fn ladder_mean(
        &mut self,
        e: &Encoded,
        rows: usize,
        dispatches: &mut Vec<Dispatch>,
    ) -> Result<View> {
        let layers = self.cfg.layers();
        let mut hat = vec![(e.mu.clone(), e.logvar.clone())];
        let ups = self.bottom_up(&e.mu, rows, dispatches)?;
        hat.extend(ups.into_iter().map(|q| (q.mu, q.logvar)));
        let kernels = LadderKernels::new(self.gpu)?;
        let mut mean = hat.pop().expect("the top layer's").0;
        for (st, (mu_hat, lv_hat)) in layers.upper.iter().zip(&hat).rev() {
            let (_, mu_q, _) =
                self.posterior_below(st, &kernels, &mean, (mu_hat, lv_hat), rows, dispatches)?;
            mean = mu_q;
        }
        Ok(mean)
    }

    /// Records the decoder on `z` ([rows, L]).
    pub(crate) fn decode(&mut self, z: &View, rows: usize) -> Result<Decoded> {
        let layers = self.cfg.layers();
        let mut dispatches = Vec::new();
        let (dec, last) = self.stack(&layers.decoder, z, rows, &mut dispatches)?;
        let out = self.gpu.zeros("dec", (rows * self.cfg.input) as u64)?;
        if layers.dec_conv.is_empty() {
            dispatches.push(self.dense(&layers.out, &last, &out, rows, None)?);
            return Ok(Decoded {
                dec,
                head: None,
                conv: Vec::new(),
                out,
                dispatches,
            });
        }
        let (mut head, flat) = self.stack(
            std::slice::from_ref(&layers.out),
            &last,
            rows,
            &mut dispatches,
        )?;
        let (conv, _) =
            self.conv_stack(&layers.dec_conv, &flat, rows, Some(&out), &mut dispatches)?;
        Ok(Decoded {
            dec,
            head: head.pop(),
            conv,
            out,
            dispatches,
        })
    }
}

impl Forward {
    /// Records the forward pass of `net` on the batch repeated once per sample, `x_rows`
    /// ([samples·rows, D]; the encoder reads the first copy unless the model is a ladder),
    /// `samples` draws per row from `sampler`'s stream 0 (layer l's from stream l − 1).
    pub(crate) fn build(
        net: &mut Net,
        x_rows: &View,
        rows: usize,
        samples: u32,
        sampler: &Sampler,
    ) -> Result<Self> {
        if net.cfg.ladder {
            return Self::build_ladder(net, x_rows, rows * samples as usize, sampler);
        }
        let gpu = net.gpu;
        let l = net.cfg.latent;
        let drawn = rows * samples as usize;
        let x = x_rows.slice(0, (rows * net.cfg.input) as u64);
        let e = net.encode(&x, rows)?;
        let mut dispatches = e.dispatches;
        let z = gpu.zeros("z", (drawn * l) as u64)?;
        let eps = gpu.zeros("eps", (drawn * l) as u64)?;
        let shape = SampleShape {
            rows: rows as u32,
            cols: l as u32,
            samples,
        };
        dispatches.push(sampler.forward(gpu, shape, 0, &e.mu, &e.logvar, &z, &eps)?);
        let (stages, upper_terms) = net.upper(&z, drawn, sampler, &mut dispatches)?;
        let d = net.decode(&z, drawn)?;
        dispatches.extend(d.dispatches);
        Ok(Self {
            enc_conv: e.conv,
            enc: e.enc,
            mu: e.mu,
            logvar: e.logvar,
            z,
            eps,
            dec: d.dec,
            dec_head: d.head,
            dec_conv: d.conv,
            out: d.out,
            stages,
            upper_terms,
            ladder: None,
            dispatches,
        })
    }

    /// The ladder's forward on `rows` sample rows `x_rows`: bottom-up, then top-down (see
    /// `cpu::ladder::step`, which this follows step for step).
    fn build_ladder(net: &mut Net, x_rows: &View, rows: usize, sampler: &Sampler) -> Result<Self> {
        let gpu = net.gpu;
        let layers = net.cfg.layers();
        let n = layers.upper.len() + 1;
        let e = net.encode(x_rows, rows)?;
        let mut ops = e.dispatches;
        // Bottom-up Gaussians of every layer.
        let ups = net.bottom_up(&e.mu, rows, &mut ops)?;
        let hat = |i: usize| -> (View, View) {
            match i.checked_sub(1) {
                None => (e.mu.clone(), e.logvar.clone()),
                Some(j) => (ups[j].mu.clone(), ups[j].logvar.clone()),
            }
        };
        // Top-down: the prior from above, the combination, the draw.
        let kernels = LadderKernels::new(gpu)?;
        let mut q_mu = vec![None; n];
        let mut q_logvar = vec![None; n];
        let mut z: Vec<Option<View>> = vec![None; n];
        let mut eps: Vec<Option<View>> = vec![None; n];
        let mut priors: Vec<Option<Gaussian>> = (0..n - 1).map(|_| None).collect();
        for i in (0..n).rev() {
            let (mu_hat, lv_hat) = hat(i);
            let width = mu_hat.len / rows as u64;
            let (mu, lv) = if i + 1 == n {
                (mu_hat, lv_hat)
            } else {
                let above = z[i + 1].clone().expect("drawn top-down");
                let hat = (&mu_hat, &lv_hat);
                let (p, mu, lv) =
                    net.posterior_below(&layers.upper[i], &kernels, &above, hat, rows, &mut ops)?;
                priors[i] = Some(p);
                (mu, lv)
            };
            let (zi, ei) = (
                gpu.zeros(&format!("z{}", i + 1), mu.len)?,
                gpu.zeros(&format!("eps{}", i + 1), mu.len)?,
            );
            let shape = SampleShape {
                rows: rows as u32,
                cols: width as u32,
                samples: 1,
            };
            ops.push(sampler.forward(gpu, shape, i as u32, &mu, &lv, &zi, &ei)?);
            (q_mu[i], q_logvar[i], z[i], eps[i]) = (Some(mu), Some(lv), Some(zi), Some(ei));
        }
        let unwrap = |v: Vec<Option<View>>| -> Vec<View> {
            v.into_iter().map(|x| x.expect("every layer")).collect()
        };
        let (q_mu, q_logvar, z, eps) = (unwrap(q_mu), unwrap(q_logvar), unwrap(z), unwrap(eps));
        let stages: Vec<StageForward> = ups
            .into_iter()
            .zip(priors)
            .enumerate()
            .map(|(j, (q, p))| StageForward {
                q,
                eps: eps[j + 1].clone(),
                z: z[j + 1].clone(),
                p: p.expect("a prior below every stage"),
            })
            .collect();
        // Latent terms: z_1's posterior term (a stage with nothing below), then every stage's
        // with the sampled (combined) posterior.
        let hier = HierarchyKernels::new(gpu)?;
        let terms = gpu.zeros("upper_terms", rows as u64)?;
        let nothing = gpu.zeros("ladder.nothing", 1)?;
        let l1 = (z[0].len / rows as u64) as u32;
        let first = StageValues {
            eps: &eps[0],
            q_logvar: &q_logvar[0],
            z: &z[0],
            z_below: &nothing,
            p_mu: &nothing,
            p_logvar: &nothing,
        };
        let shape = StageShape {
            rows: rows as u32,
            latent: l1,
            below: 0,
            top: false,
        };
        ops.push(hier.terms(gpu, shape, &first, &terms, false)?);
        for (j, st) in stages.iter().enumerate() {
            let shape = StageShape {
                rows: rows as u32,
                latent: (st.z.len / rows as u64) as u32,
                below: (z[j].len / rows as u64) as u32,
                top: j + 1 == stages.len(),
            };
            let values = StageValues {
                q_logvar: &q_logvar[j + 1],
                ..st.values(&z[j])
            };
            ops.push(hier.terms(gpu, shape, &values, &terms, true)?);
        }
        let d = net.decode(&z[0], rows)?;
        ops.extend(d.dispatches);
        let zeros = gpu.zeros("ladder.zeros", z[0].len)?;
        Ok(Self {
            enc_conv: e.conv,
            enc: e.enc,
            mu: e.mu,
            logvar: e.logvar,
            z: z[0].clone(),
            eps: eps[0].clone(),
            dec: d.dec,
            dec_head: d.head,
            dec_conv: d.conv,
            out: d.out,
            stages,
            upper_terms: Some(terms),
            ladder: Some(LadderForward {
                q_mu,
                q_logvar,
                zeros,
            }),
            dispatches: ops,
        })
    }
}

impl StageForward {
    /// This stage's values for the latent-term kernels, with the layer below it.
    pub fn values<'a>(&'a self, z_below: &'a View) -> StageValues<'a> {
        StageValues {
            eps: &self.eps,
            q_logvar: &self.q.logvar,
            z: &self.z,
            z_below,
            p_mu: &self.p.mu,
            p_logvar: &self.p.logvar,
        }
    }
}
