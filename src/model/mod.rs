//! The MLP VAE: its layers, the flat parameter layout they live in, and PyTorch's initialization.
//!
//! Weights are stored `[fan_in, fan_out]` (so the forward pass is `X·W`, the NN matmul), biases
//! `[fan_out]`. All tensors share one flat buffer, each starting on a 64-element boundary so any
//! tensor can be bound on its own (storage offsets must be 256-byte aligned).

use rand::{RngExt, SeedableRng};

use crate::kernels::Activation;
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
    /// hidden[0] → input, no activation (logits or means).
    pub out: Dense,
    /// The stochastic layers above z_1, bottom-up.
    pub upper: Vec<StageLayers>,
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
    pub fn layers(&self) -> Layers {
        let dense = |name: String, fan_in, fan_out, act| Dense {
            name,
            fan_in,
            fan_out,
            act,
        };
        let mut enc_dims = vec![self.input];
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
                self.input,
                Activation::Identity,
            ),
            upper: self.stage_layers(),
        }
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
        for d in cfg.layers().all() {
            push(d.weight(), vec![d.fan_in, d.fan_out]);
            push(d.bias(), vec![d.fan_out]);
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

/// PyTorch's `nn.Linear` initialization: weights Kaiming-uniform with a = √5 and biases uniform,
/// both in ±1/√fan_in. The decoder log-variance starts at 0 (σ = 1). Padding stays 0.
pub fn init_params(cfg: &VaeConfig, layout: &ParamLayout, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut flat = vec![0.0f32; layout.len];
    for d in cfg.layers().all() {
        let bound = 1.0 / (d.fan_in as f64).sqrt();
        for name in [d.weight(), d.bias()] {
            let t = layout.get(&name);
            for v in &mut flat[t.offset..t.offset + t.len()] {
                *v = rng.random_range(-bound..bound) as f32;
            }
        }
    }
    flat
}
