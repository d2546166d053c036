//! The VAE: its layers (dense, optionally behind convolutions, optionally with further
//! stochastic layers), the flat parameter layout they live in, and PyTorch's initialization.
//!
//! Dense weights are stored `[fan_in, fan_out]` (so the forward pass is `X·W`, the NN matmul),
//! convolution weights as PyTorch's (`[c_out, c_in, k, k]`, transposed `[c_in, c_out, k, k]`),
//! biases `[fan_out]`. All tensors share one flat buffer, each starting on a 64-element boundary
//! so any tensor can be bound on its own (storage offsets must be 256-byte aligned).

use rand::{RngExt, SeedableRng};

use crate::kernels::Activation;
use crate::kernels::conv::ConvShape;
use crate::kernels::elbo::Likelihood;

/// What a user chooses: `--hidden 512,256 --latent 20 --activation relu --likelihood bernoulli`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VaeConfig {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub latent: usize,
    pub act: Activation,
    pub likelihood: Likelihood,
    /// Stochastic layers above the first, bottom-up (a Markov hierarchy; empty: one layer).
    #[serde(default)]
    pub upper: Vec<Stage>,
    /// Convolutions in front of the encoder's dense layers, mirrored behind the decoder's.
    #[serde(default)]
    pub conv: Option<ConvStack>,
    /// Top-down (ladder) inference for a hierarchy: each upper stage's inference MLP runs on
    /// the bottom-up mean of the layer below instead of its draw, and every layer's posterior
    /// but the top's combines that with the prior from above ([`crate::cpu::ladder`]).
    #[serde(default)]
    pub ladder: bool,
}

/// A convolutional encoder (and its mirror, of transposed convolutions, in the decoder): each
/// layer `kernel`×`kernel` with `stride` and "same" padding `(kernel − 1)/2`, the activation
/// after every layer but the decoder's last, which gives the picture's logits or means.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvStack {
    /// The pictures: height, width, channels (pixels stored [H, W, C], as the loaders give them).
    pub image: [usize; 3],
    /// Output channels of each encoder layer, e.g. `[32, 64]`.
    pub channels: Vec<usize>,
    pub kernel: usize,
    pub stride: usize,
}

impl ConvStack {
    fn pad(&self) -> usize {
        (self.kernel - 1) / 2
    }

    /// (channels, height, width) of the encoder's input and each layer's output, or why the
    /// stack cannot run on its pictures.
    pub fn sizes(&self) -> Result<Vec<[usize; 3]>, String> {
        let [h, w, c] = self.image;
        if h == 0 || w == 0 || c == 0 {
            return Err(format!(
                "pictures of {h}x{w}x{c}: every side must be at least 1"
            ));
        }
        if self.kernel == 0 || self.stride == 0 || self.channels.is_empty() {
            return Err("a convolution needs a kernel, a stride and channels of at least 1".into());
        }
        if let Some(c) = self.channels.iter().find(|&&c| c == 0) {
            return Err(format!("{c} channels: every layer needs at least 1"));
        }
        let mut sizes = vec![[c, h, w]];
        for &co in &self.channels {
            let [_, h, w] = *sizes.last().unwrap();
            let out = |side: usize| (side + 2 * self.pad()).checked_sub(self.kernel);
            match (out(h), out(w)) {
                (Some(oh), Some(ow)) => {
                    sizes.push([co, oh / self.stride + 1, ow / self.stride + 1])
                }
                _ => {
                    return Err(format!(
                        "a {k}x{k} kernel does not fit a {h}x{w} feature map (layer {})",
                        sizes.len(),
                        k = self.kernel
                    ));
                }
            }
        }
        Ok(sizes)
    }

    /// `28x28x1-c32-c64`.
    fn describe(&self) -> String {
        let [h, w, c] = self.image;
        let mut s = format!("{h}x{w}x{c}");
        for ch in &self.channels {
            s += &format!("-c{ch}");
        }
        s
    }
}

/// One convolution layer (PyTorch's `Conv2d`, or `ConvTranspose2d` when `transposed`) of a
/// [`ConvStack`], named `enc.conv{i}` or `dec.conv{i}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    pub name: String,
    pub transposed: bool,
    /// Input channels, height, width.
    pub input: [usize; 3],
    /// Output channels, height, width.
    pub output: [usize; 3],
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub output_pad: usize,
    pub act: Activation,
    /// The image side (the encoder's input, the decoder's output) is the data's [H, W, C].
    pub channels_last: bool,
}

impl ConvLayer {
    pub fn weight(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias(&self) -> String {
        format!("{}.bias", self.name)
    }

    /// PyTorch's weight shape.
    pub fn weight_shape(&self) -> Vec<usize> {
        let (ci, co, k) = (self.input[0], self.output[0], self.kernel);
        if self.transposed {
            vec![ci, co, k, k]
        } else {
            vec![co, ci, k, k]
        }
    }

    /// Values per row of the input and of the output.
    pub fn in_len(&self) -> usize {
        self.input.iter().product()
    }
    pub fn out_len(&self) -> usize {
        self.output.iter().product()
    }

    /// The kernels' shape for `batch` rows.
    pub fn shape(&self, batch: usize) -> ConvShape {
        let [c_in, h, w] = self.input;
        ConvShape {
            batch: batch as u32,
            c_in: c_in as u32,
            h: h as u32,
            w: w as u32,
            c_out: self.output[0] as u32,
            kh: self.kernel as u32,
            kw: self.kernel as u32,
            stride: self.stride as u32,
            pad: self.pad as u32,
            output_pad: self.output_pad as u32,
        }
    }

    /// PyTorch's `fan_in` for the initialization bound: the weight's dimension 1 times the taps
    /// (so `c_out·k²` for a transposed convolution, as PyTorch computes it).
    fn fan_in(&self) -> usize {
        self.weight_shape()[1] * self.kernel * self.kernel
    }
}

/// One more stochastic layer z_l of `latent` units: inferred from z_{l−1} through `hidden`
/// deterministic layers, and generating z_{l−1} through the same widths reversed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    pub hidden: Vec<usize>,
    pub latent: usize,
}

/// `100,100:50`: the deterministic widths from the layer below, then the latent units (`:50` for
/// none), as `vae train --stage` takes it.
impl std::str::FromStr for Stage {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (widths, latent) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}`: expected HIDDEN:LATENT, e.g. 100,100:50 or :50"))?;
        let number = |t: &str| -> Result<usize, String> {
            match t.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("`{text}`: `{t}` is not a width of at least 1")),
            }
        };
        let hidden = if widths.trim().is_empty() {
            Vec::new()
        } else {
            widths.split(',').map(number).collect::<Result<_, _>>()?
        };
        Ok(Stage {
            hidden,
            latent: number(latent)?,
        })
    }
}

/// The layers of an upper stage l (named `enc{l}.*` and `dec{l}.*`, l = 2, 3, …).
#[derive(Debug, Clone, PartialEq)]
pub struct StageLayers {
    /// q(z_l | z_{l−1}): z_{l−1} → hidden → (μ, logσ²) of z_l.
    pub q_hidden: Vec<Dense>,
    pub q_mu: Dense,
    pub q_logvar: Dense,
    /// p(z_{l−1} | z_l): z_l → hidden reversed → (μ, logσ²) of z_{l−1}.
    pub p_hidden: Vec<Dense>,
    pub p_mu: Dense,
    pub p_logvar: Dense,
}

/// One dense layer `y = act(x·W + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub name: String,
    pub fan_in: usize,
    pub fan_out: usize,
    pub act: Activation,
}

impl Dense {
    pub fn weight(&self) -> String {
        format!("{}.weight", self.name)
    }
    pub fn bias(&self) -> String {
        format!("{}.bias", self.name)
    }
}

/// The dense layers, in forward order.
#[derive(Debug, Clone, PartialEq)]
pub struct Layers {
    /// input → hidden[0] → … → hidden[n-1], all with the activation.
    pub encoder: Vec<Dense>,
    pub mu: Dense,
    pub logvar: Dense,
    /// latent → hidden[n-1] → … → hidden[0], all with the activation.
    pub decoder: Vec<Dense>,
    /// hidden[0] → input, no activation (logits or means); with convolutions, → the first
    /// transposed convolution's input, with the activation.
    pub out: Dense,
    /// The stochastic layers above z_1, bottom-up.
    pub upper: Vec<StageLayers>,
    /// Convolutions before `encoder` and after `out` (which then has the activation).
    pub enc_conv: Vec<ConvLayer>,
    pub dec_conv: Vec<ConvLayer>,
}

/// `dims[0] → dims[1] → …`, each with `act`, named `{prefix}.{i}`.
fn chain(prefix: &str, dims: &[usize], act: Activation) -> Vec<Dense> {
    dims.windows(2)
        .enumerate()
        .map(|(i, w)| Dense {
            name: format!("{prefix}.{i}"),
            fan_in: w[0],
            fan_out: w[1],
            act,
        })
        .collect()
}

fn head(name: String, fan_in: usize, fan_out: usize) -> Dense {
    Dense {
        name,
        fan_in,
        fan_out,
        act: Activation::Identity,
    }
}

impl VaeConfig {
    /// The layers. Panics on a [`ConvStack`] whose [`ConvStack::sizes`] is an error: check
    /// that with [`VaeConfig::check`] where a configuration comes from outside.
    pub fn layers(&self) -> Layers {
        let dense = |name: String, fan_in, fan_out, act| Dense {
            name,
            fan_in,
            fan_out,
            act,
        };
        let (enc_conv, dec_conv) = self.conv_layers();
        let flat = enc_conv.last().map_or(self.input, ConvLayer::out_len);
        let (out_act, out_len) = if enc_conv.is_empty() {
            (Activation::Identity, self.input)
        } else {
            (self.act, flat)
        };
        let mut enc_dims = vec![flat];
        enc_dims.extend(&self.hidden);
        let encoder = enc_dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| dense(format!("enc.{i}"), w[0], w[1], self.act))
            .collect();
        let top = *enc_dims.last().unwrap();
        let mut dec_dims = vec![self.latent];
        dec_dims.extend(self.hidden.iter().rev());
        let decoder = dec_dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| dense(format!("dec.{i}"), w[0], w[1], self.act))
            .collect();
        Layers {
            encoder,
            mu: dense("enc.mu".into(), top, self.latent, Activation::Identity),
            logvar: dense("enc.logvar".into(), top, self.latent, Activation::Identity),
            decoder,
            out: dense(
                "dec.out".into(),
                *dec_dims.last().unwrap(),
                out_len,
                out_act,
            ),
            upper: self.stage_layers(),
            enc_conv,
            dec_conv,
        }
    }

    /// The encoder's convolutions and their mirror in the decoder (empty without a stack).
    fn conv_layers(&self) -> (Vec<ConvLayer>, Vec<ConvLayer>) {
        let Some(stack) = &self.conv else {
            return (Vec::new(), Vec::new());
        };
        let sizes = stack.sizes().expect("a checked convolution stack");
        let n = stack.channels.len();
        let layer = |name: String, transposed, input: [usize; 3], output: [usize; 3], edge| {
            // The transposed convolution's natural output side, (in − 1)·s + k − 2p, and what
            // is missing to the encoder's side it mirrors ([`VaeConfig::check`]).
            let natural = (input[1] - 1) * stack.stride + stack.kernel - 2 * stack.pad();
            ConvLayer {
                name,
                transposed,
                input,
                output,
                kernel: stack.kernel,
                stride: stack.stride,
                pad: stack.pad(),
                output_pad: if transposed { output[1] - natural } else { 0 },
                act: if transposed && edge {
                    Activation::Identity
                } else {
                    self.act
                },
                channels_last: edge,
            }
        };
        let enc = (0..n)
            .map(|i| {
                layer(
                    format!("enc.conv{i}"),
                    false,
                    sizes[i],
                    sizes[i + 1],
                    i == 0,
                )
            })
            .collect();
        let dec = (0..n)
            .rev()
            .map(|i| {
                layer(
                    format!("dec.conv{}", n - 1 - i),
                    true,
                    sizes[i + 1],
                    sizes[i],
                    i == 0,
                )
            })
            .collect();
        (enc, dec)
    }

    /// Whether the layers can be built: the convolutions fit their pictures, whose pixels are
    /// the input, and a transposed convolution can give back each side the encoder reduced.
    pub fn check(&self) -> Result<(), String> {
        if self.ladder && self.upper.is_empty() {
            return Err(
                "ladder inference needs a hierarchy (a stage above the first layer)".into(),
            );
        }
        let Some(stack) = &self.conv else {
            return Ok(());
        };
        let sizes = stack.sizes()?;
        let [h, w, c] = stack.image;
        if h * w * c != self.input {
            return Err(format!(
                "pictures of {h}x{w}x{c} have {} pixels, the data's items {}",
                h * w * c,
                self.input
            ));
        }
        for pair in sizes.windows(2) {
            // output_pad for height and width: one value, less than the stride.
            let pads = [1, 2].map(|i| {
                let natural = (pair[1][i] - 1) * stack.stride + stack.kernel - 2 * stack.pad();
                pair[0][i].checked_sub(natural)
            });
            let fits = matches!(pads, [Some(a), Some(b)] if a == b && a < stack.stride);
            if !fits {
                let ([_, h, w], [_, sh, sw]) = (pair[0], pair[1]);
                return Err(format!(
                    "a transposed convolution (kernel {}, stride {}) cannot map {sh}x{sw} back \
                     to {h}x{w} (use an odd kernel, or pictures whose sides reduce alike)",
                    stack.kernel, stack.stride
                ));
            }
        }
        Ok(())
    }

    fn stage_layers(&self) -> Vec<StageLayers> {
        let mut below = self.latent;
        self.upper
            .iter()
            .enumerate()
            .map(|(i, st)| {
                let l = i + 2;
                let mut q_dims = vec![below];
                q_dims.extend(&st.hidden);
                let mut p_dims = vec![st.latent];
                p_dims.extend(st.hidden.iter().rev());
                let (q_top, p_top) = (*q_dims.last().unwrap(), *p_dims.last().unwrap());
                let layers = StageLayers {
                    q_hidden: chain(&format!("enc{l}"), &q_dims, self.act),
                    q_mu: head(format!("enc{l}.mu"), q_top, st.latent),
                    q_logvar: head(format!("enc{l}.logvar"), q_top, st.latent),
                    p_hidden: chain(&format!("dec{l}"), &p_dims, self.act),
                    p_mu: head(format!("dec{l}.mu"), p_top, below),
                    p_logvar: head(format!("dec{l}.logvar"), p_top, below),
                };
                below = st.latent;
                layers
            })
            .collect()
    }

    /// The inference path's widths, `784-400-20`, with every stage: `784-200-200-100-100-100-50`.
    pub fn dims(&self) -> String {
        if let Some(stack) = &self.conv {
            let flat = self.layers().out.fan_out;
            let rest = VaeConfig {
                input: flat,
                conv: None,
                ladder: false,
                ..self.clone()
            };
            return format!("{}-{}", stack.describe(), rest.dims());
        }
        let mut dims = vec![self.input];
        dims.extend(&self.hidden);
        dims.push(self.latent);
        for st in &self.upper {
            dims.extend(&st.hidden);
            dims.push(st.latent);
        }
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        dims.join("-")
    }

    /// Latent units of every stochastic layer, bottom-up.
    pub fn latents(&self) -> Vec<usize> {
        std::iter::once(self.latent)
            .chain(self.upper.iter().map(|s| s.latent))
            .collect()
    }
}

impl StageLayers {
    pub fn all(&self) -> Vec<&Dense> {
        self.q_hidden
            .iter()
            .chain([&self.q_mu, &self.q_logvar])
            .chain(&self.p_hidden)
            .chain([&self.p_mu, &self.p_logvar])
            .collect()
    }
}

impl Layers {
    pub fn all(&self) -> Vec<&Dense> {
        self.encoder
            .iter()
            .chain([&self.mu, &self.logvar])
            .chain(&self.decoder)
            .chain([&self.out])
            .chain(self.upper.iter().flat_map(StageLayers::all))
            .collect()
    }
}

/// A named tensor inside the flat buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Offset alignment of every tensor, in elements (256 bytes).
pub const ALIGN: usize = 64;

/// The flat layout: tensors in a fixed order, `len` padded to a multiple of `ALIGN`.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    pub tensors: Vec<TensorSpec>,
    pub len: usize,
}

/// The shared per-pixel log-variance of a Gaussian decoder with a learned variance.
pub const DEC_LOGVAR: &str = "dec.logvar";

impl ParamLayout {
    pub fn new(cfg: &VaeConfig) -> Self {
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut push = |name: String, shape: Vec<usize>| {
            let len: usize = shape.iter().product();
            tensors.push(TensorSpec {
                name,
                shape,
                offset,
            });
            offset += len.next_multiple_of(ALIGN);
        };
        let layers = cfg.layers();
        for d in layers.all() {
            push(d.weight(), vec![d.fan_in, d.fan_out]);
            push(d.bias(), vec![d.fan_out]);
        }
        for c in layers.enc_conv.iter().chain(&layers.dec_conv) {
            push(c.weight(), c.weight_shape());
            push(c.bias(), vec![c.output[0]]);
        }
        if cfg.likelihood.learns_variance() {
            push(DEC_LOGVAR.into(), vec![cfg.input]);
        }
        Self {
            tensors,
            len: offset,
        }
    }

    pub fn get(&self, name: &str) -> &TensorSpec {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// Number of trainable values (without alignment padding).
    pub fn count(&self) -> usize {
        self.tensors.iter().map(TensorSpec::len).sum()
    }
}

/// PyTorch's `nn.Linear` and `nn.Conv2d` initialization: weights Kaiming-uniform with a = √5 and
/// biases uniform, both in ±1/√fan_in. The decoder log-variance starts at 0 (σ = 1). Padding
/// stays 0.
pub fn init_params(cfg: &VaeConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut flat = vec![0.0f32; layout.len];
    let layers = cfg.layers();
    let dense = layers
        .all()
        .into_iter()
        .map(|d| (d.fan_in, d.weight(), d.bias()));
    let conv = (layers.enc_conv.iter().chain(&layers.dec_conv))
        .map(|c| (c.fan_in(), c.weight(), c.bias()));
    for (fan_in, weight, bias) in dense.chain(conv) {
        let bound = 1.0 / (fan_in as f64).sqrt();
        for name in [weight, bias] {
            let t = layout.get(&name);
            for v in &mut flat[t.offset..t.offset + t.len()] {
                *v = rng.random_range(-bound..bound) as f32;
            }
        }
    }
    flat
}
