//! One VAE training step in f64 — forward, loss, backward — composed from the reference kernels
//! exactly as `train::graph` composes the GPU ones. Given the same parameters, batch and ε, the
//! two must agree to rounding.

use crate::cpu::conv::{self, permute_channels};
use crate::cpu::{activation, elbo, iwae, matmul::matmul, reduce::column_sums, sample};
use crate::kernels::Activation;
use crate::kernels::iwae::Objective;
use crate::kernels::matmul::Layout;
use crate::model::{ConvLayer, DEC_LOGVAR, Dense, Layers, ParamLayout, VaeConfig};

/// The loss terms (sums over the batch) and the gradient of `Σ_b rec_b + β kl_b`.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub total: f64,
    pub rec: f64,
    pub kl: f64,
    /// Flat, in the parameter layout (padding 0).
    pub grads: Vec<f64>,
}

fn tensor<'a>(layout: &ParamLayout, flat: &'a [f64], name: &str) -> &'a [f64] {
    let t = layout.get(name);
    &flat[t.offset..t.offset + t.len()]
}

/// `act(x·W + b)` for a batch; returns (pre-activation, output).
pub(crate) fn dense_forward(
    d: &Dense,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut pre = matmul(
        Layout::NN,
        batch,
        d.fan_out,
        d.fan_in,
        x,
        tensor(layout, p, &d.weight()),
    );
    let b = tensor(layout, p, &d.bias());
    for (i, v) in pre.iter_mut().enumerate() {
        *v += b[i % d.fan_out];
    }
    let out = pre.iter().map(|&v| activation::forward(d.act, v)).collect();
    (pre, out)
}

/// Writes dW = xᵀ·dpre and db = Σ_rows dpre into `grads`; returns dx = dpre·Wᵀ.
pub(crate) fn dense_backward(
    d: &Dense,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    dpre: &[f64],
    batch: usize,
    grads: &mut [f64],
) -> Vec<f64> {
    let dw = matmul(Layout::TN, d.fan_in, d.fan_out, batch, x, dpre);
    let db = column_sums(batch, d.fan_out, dpre);
    for (name, g) in [(d.weight(), dw), (d.bias(), db)] {
        let t = layout.get(&name);
        grads[t.offset..t.offset + t.len()].copy_from_slice(&g);
    }
    matmul(
        Layout::NT,
        batch,
        d.fan_in,
        d.fan_out,
        dpre,
        tensor(layout, p, &d.weight()),
    )
}

/// dpre = dy ⊙ act'(pre).
fn through_activation(act: Activation, dy: &[f64], pre: &[f64]) -> Vec<f64> {
    dy.iter()
        .zip(pre)
        .map(|(g, &x)| g * activation::derivative(act, x))
        .collect()
}

/// A layer of a chain: dense or convolutional.
pub(crate) trait Layer {
    fn act(&self) -> Activation;
    /// `act(layer(x))` on `rows` rows: (pre-activation, output).
    fn forward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        rows: usize,
    ) -> (Vec<f64>, Vec<f64>);
    /// Writes the parameter gradients into `grads`; returns the input's gradient.
    fn backward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        dpre: &[f64],
        rows: usize,
        grads: &mut [f64],
    ) -> Vec<f64>;
}

impl Layer for Dense {
    fn act(&self) -> Activation {
        self.act
    }
    fn forward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        rows: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        dense_forward(self, layout, p, x, rows)
    }
    fn backward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        dpre: &[f64],
        rows: usize,
        grads: &mut [f64],
    ) -> Vec<f64> {
        dense_backward(self, layout, p, x, dpre, rows, grads)
    }
}

/// A convolution's image side (input of a conv2d, output of a transposed one) between the data's
/// [H, W, C] and the NCHW the reference computes in; other tensors pass unchanged.
fn image_side(c: &ConvLayer, v: &[f64], rows: usize, to_last: bool) -> Vec<f64> {
    let [ch, h, w] = if c.transposed { c.output } else { c.input };
    if c.channels_last {
        permute_channels(v, rows, ch, h * w, to_last)
    } else {
        v.to_vec()
    }
}

impl Layer for ConvLayer {
    fn act(&self) -> Activation {
        self.act
    }
    fn forward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        rows: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let shape = self.shape(rows);
        let (w, b) = (
            tensor(layout, p, &self.weight()),
            tensor(layout, p, &self.bias()),
        );
        let pre = if self.transposed {
            let y = conv::conv_transpose2d(&shape, x, w, Some(b));
            image_side(self, &y, rows, true)
        } else {
            conv::conv2d(&shape, &image_side(self, x, rows, false), w, Some(b))
        };
        let out = pre
            .iter()
            .map(|&v| activation::forward(self.act, v))
            .collect();
        (pre, out)
    }
    fn backward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        dpre: &[f64],
        rows: usize,
        grads: &mut [f64],
    ) -> Vec<f64> {
        let shape = self.shape(rows);
        let w = tensor(layout, p, &self.weight());
        let g = if self.transposed {
            let dy = image_side(self, dpre, rows, false);
            conv::conv_transpose2d_backward(&shape, x, w, &dy)
        } else {
            conv::conv2d_backward(&shape, &image_side(self, x, rows, false), w, dpre)
        };
        for (name, v) in [(self.weight(), &g.dw), (self.bias(), &g.db)] {
            let t = layout.get(&name);
            grads[t.offset..t.offset + t.len()].copy_from_slice(v);
        }
        if self.transposed {
            g.dx
        } else {
            image_side(self, &g.dx, rows, true)
        }
    }
}

/// A chain of dense layers run forward: `ins[0]` the input, `ins[i + 1]` layer i's output.
pub(crate) struct Chain {
    pub ins: Vec<Vec<f64>>,
    pub pres: Vec<Vec<f64>>,
}

pub(crate) fn chain_forward<L: Layer>(
    layers: &[L],
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    rows: usize,
) -> Chain {
    let mut c = Chain {
        ins: vec![x.to_vec()],
        pres: Vec::new(),
    };
    for d in layers {
        let (pre, out) = d.forward(layout, p, c.ins.last().unwrap(), rows);
        c.pres.push(pre);
        c.ins.push(out);
    }
    c
}

/// Gradient with respect to the chain's input, given it with respect to its output.
pub(crate) fn chain_backward<L: Layer>(
    layers: &[L],
    layout: &ParamLayout,
    p: &[f64],
    c: &Chain,
    mut dy: Vec<f64>,
    rows: usize,
    grads: &mut [f64],
) -> Vec<f64> {
    for (i, d) in layers.iter().enumerate().rev() {
        let dpre = through_activation(d.act(), &dy, &c.pres[i]);
        dy = d.backward(layout, p, &c.ins[i], &dpre, rows, grads);
    }
    dy
}

/// The encoder's deterministic trunk run forward: its convolutions, then its dense layers.
pub(crate) struct Trunk {
    conv: Chain,
    dense: Chain,
}

impl Trunk {
    pub(crate) fn forward(
        layers: &Layers,
        layout: &ParamLayout,
        p: &[f64],
        x: &[f64],
        rows: usize,
    ) -> Self {
        let conv = chain_forward(&layers.enc_conv, layout, p, x, rows);
        let dense = chain_forward(&layers.encoder, layout, p, conv.ins.last().unwrap(), rows);
        Self { conv, dense }
    }

    /// The trunk's output, which the heads read.
    pub(crate) fn top(&self) -> &[f64] {
        self.dense.ins.last().unwrap()
    }

    /// The parameter gradients from the gradient with respect to [`Trunk::top`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        layers: &Layers,
        layout: &ParamLayout,
        p: &[f64],
        d_top: Vec<f64>,
        rows: usize,
        grads: &mut [f64],
    ) {
        let d = chain_backward(&layers.encoder, layout, p, &self.dense, d_top, rows, grads);
        chain_backward(&layers.enc_conv, layout, p, &self.conv, d, rows, grads);
    }
}

/// The decoder run forward: its dense layers with the output layer, then its transposed
/// convolutions.
pub(crate) struct Generator {
    dense: Chain,
    conv: Chain,
}

fn dense_decoder(layers: &Layers) -> Vec<Dense> {
    layers
        .decoder
        .iter()
        .chain([&layers.out])
        .cloned()
        .collect()
}

impl Generator {
    pub(crate) fn forward(
        layers: &Layers,
        layout: &ParamLayout,
        p: &[f64],
        z: &[f64],
        rows: usize,
    ) -> Self {
        let dense = chain_forward(&dense_decoder(layers), layout, p, z, rows);
        let conv = chain_forward(&layers.dec_conv, layout, p, dense.ins.last().unwrap(), rows);
        Self { dense, conv }
    }

    /// The logits or means, [rows, D].
    pub(crate) fn out(&self) -> &[f64] {
        self.conv.ins.last().unwrap()
    }

    /// The parameter gradients from `d_out`; returns the latents' gradient.
    pub(crate) fn backward(
        &self,
        layers: &Layers,
        layout: &ParamLayout,
        p: &[f64],
        d_out: Vec<f64>,
        rows: usize,
        grads: &mut [f64],
    ) -> Vec<f64> {
        let d = chain_backward(&layers.dec_conv, layout, p, &self.conv, d_out, rows, grads);
        chain_backward(
            &dense_decoder(layers),
            layout,
            p,
            &self.dense,
            d,
            rows,
            grads,
        )
    }
}

/// (μ, logσ²) heads on `input`, and their backward summed into the input's gradient.
pub(crate) struct Heads<'a> {
    pub mu: &'a Dense,
    pub logvar: &'a Dense,
}

impl Heads<'_> {
    pub(crate) fn forward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        input: &[f64],
        rows: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        (
            dense_forward(self.mu, layout, p, input, rows).0,
            dense_forward(self.logvar, layout, p, input, rows).0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        layout: &ParamLayout,
        p: &[f64],
        input: &[f64],
        (dmu, dlogvar): (&[f64], &[f64]),
        rows: usize,
        grads: &mut [f64],
    ) -> Vec<f64> {
        let a = dense_backward(self.mu, layout, p, input, dmu, rows, grads);
        let b = dense_backward(self.logvar, layout, p, input, dlogvar, rows, grads);
        a.iter().zip(&b).map(|(x, y)| x + y).collect()
    }
}

/// The reconstruction terms of `rows` decoder outputs `dec`, row r against input `x[r mod B]`
/// (the K samples of each input), with their unweighted gradients; the KL slots are unused.
pub(crate) fn sample_row_reconstruction(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    dec: &[f64],
    rows: usize,
) -> elbo::Output {
    let dec_logvar: Vec<f64> = if cfg.likelihood.learns_variance() {
        tensor(layout, p, DEC_LOGVAR).to_vec()
    } else {
        Vec::new()
    };
    let x_rep: Vec<f64> = x.iter().copied().cycle().take(rows * cfg.input).collect();
    let none = vec![0.0; rows * cfg.latent];
    let dims = elbo::Dims {
        batch: rows,
        dim: cfg.input,
        latent: cfg.latent,
    };
    let inputs = elbo::Inputs {
        x: &x_rep,
        dec,
        dec_logvar: &dec_logvar,
        mu: &none,
        logvar: &none,
    };
    elbo::elbo(cfg.likelihood, 1.0, 1.0, dims, &inputs)
}

/// Scales row r of the decoder-output gradients by `weights[r]` and writes the decoder
/// log-variance gradient (a learned variance) into `grads`.
pub(crate) fn weigh_reconstruction(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    loss: &mut elbo::Output,
    weights: &[f64],
    grads: &mut [f64],
) {
    for g in [&mut loss.d_dec, &mut loss.d_dec_logvar] {
        for (r, row) in g.chunks_mut(cfg.input).enumerate() {
            row.iter_mut().for_each(|v| *v *= weights[r]);
        }
    }
    if cfg.likelihood.learns_variance() {
        let t = layout.get(DEC_LOGVAR);
        let g = column_sums(weights.len(), cfg.input, &loss.d_dec_logvar);
        grads[t.offset..t.offset + t.len()].copy_from_slice(&g);
    }
}

/// The posterior (μ, logσ²), [B, L] each, of a batch `x` [B, D].
pub fn encode(cfg: &VaeConfig, layout: &ParamLayout, p: &[f64], x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let layers = cfg.layers();
    let batch = x.len() / cfg.input;
    let trunk = Trunk::forward(&layers, layout, p, x, batch);
    let heads = Heads {
        mu: &layers.mu,
        logvar: &layers.logvar,
    };
    heads.forward(layout, p, trunk.top(), batch)
}

/// The decoder output (logits or means), [R, D], for latents `z` [R, L].
pub fn decode(cfg: &VaeConfig, layout: &ParamLayout, p: &[f64], z: &[f64]) -> Vec<f64> {
    let layers = cfg.layers();
    let rows = z.len() / cfg.latent;
    Generator::forward(&layers, layout, p, z, rows)
        .out()
        .to_vec()
}

/// Loss and gradient for one batch `x` [B, D] with noise `eps` [B, L].
pub fn step(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    beta: f64,
) -> StepResult {
    step_k(cfg, layout, p, x, eps, Objective::Elbo, beta)
}

/// Loss and gradient of `objective` for one batch `x` [B, D] with K samples per example:
/// noise `eps` [K·B, L], sample row s·B + b for example b (K = 1: [`step`]).
pub fn step_k(
    cfg: &VaeConfig,
    layout: &ParamLayout,
    p: &[f64],
    x: &[f64],
    eps: &[f64],
    objective: Objective,
    beta: f64,
) -> StepResult {
    let layers = cfg.layers();
    let batch = x.len() / cfg.input;
    let rows = eps.len() / cfg.latent;
    // Forward, keeping every layer's input and pre-activation.
    let trunk = Trunk::forward(&layers, layout, p, x, batch);
    let heads = Heads {
        mu: &layers.mu,
        logvar: &layers.logvar,
    };
    let (mu, logvar) = heads.forward(layout, p, trunk.top(), batch);
    let z = sample::reparam_forward(&mu, &logvar, eps);
    let dec = Generator::forward(&layers, layout, p, &z, rows);
    let mut loss = sample_row_reconstruction(cfg, layout, p, x, dec.out(), rows);
    let terms = iwae::train_terms(objective, beta, batch, &loss.rec, &z, eps, &mu, &logvar);

    // Backward.
    let mut grads = vec![0.0; layout.len];
    weigh_reconstruction(cfg, layout, &mut loss, &terms.weights, &mut grads);
    let d_dec = std::mem::take(&mut loss.d_dec);
    let mut dz = dec.backward(&layers, layout, p, d_dec, rows, &mut grads);
    dz.iter_mut().zip(&terms.dz).for_each(|(g, t)| *g += t);
    let (mut dmu, mut dlogvar) = (terms.dmu.clone(), terms.dlogvar.clone());
    sample::reparam_backward(&dz, eps, &logvar, &mut dmu, &mut dlogvar);
    let d_top = heads.backward(layout, p, trunk.top(), (&dmu, &dlogvar), batch, &mut grads);
    trunk.backward(&layers, layout, p, d_top, batch, &mut grads);
    StepResult {
        total: terms.total.iter().sum(),
        rec: terms.rec.iter().sum(),
        kl: terms.kl.iter().sum(),
        grads,
    }
}
