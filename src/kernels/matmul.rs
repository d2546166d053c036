//! Wrapper for `shaders/matmul.wgsl` and `shaders/matmul_subgroup.wgsl` (with its operand readers
//! `subgroup_texels*.wgsl`): `C = op(A)·op(B)` in
//! row-major f32 with a fused epilogue.
//!
//! One [`Matmul`] per [`MatmulConfig`] (layout + epilogue): the config becomes WGSL override
//! constants, so each instance holds its own compiled pipelines, and [`Matmul::bind`] turns
//! buffers and a shape into a reusable [`Dispatch`].
//!
//! Per element `(m, n)` of C, with `s = Σ_k op(A)[m,k]·op(B)[k,n]`:
//!
//! ```text
//! pre = s + bias[n]                      (bias)
//! aux[m,n] = pre                         (store_pre)
//! v = act(pre)                           (act; Identity = none)
//! v = v * grad_act'(aux[m,n])            (grad_act; aux holds a pre-activation)
//! C[m,n] = C[m,n] + v  or  C[m,n] = v    (accumulate)
//! aux[n] (+)= Σ_k op(B)[k,n]             (column_sums: the bias gradient beside dW = Aᵀ·dY)
//! ```
//!
//! Two kernels compute the same thing: [`MatmulVariant::Tiled`], portable shared-memory tiling,
//! and [`MatmulVariant::Subgroup`], the software-adapter fast path (one 8-lane subgroup per
//! workgroup, `subgroupBroadcast`, a 32×64 tile in registers, A and B read from `r32float` textures
//! that each dispatch first copies them into), and [`MatmulVariant::SubgroupVec4`], the same
//! kernel reading four elements per image load where the shape allows. [`MatmulVariant::auto`] is
//! the subgroup kernel on software adapters with subgroups of at least 8 lanes, else the tiled
//! one ([`MatmulVariant::auto_for`]: its vec4 form where the shape fits); the training and
//! evaluation graphs instead time every available variant once per adapter and shape and keep
//! the fastest ([`Gpu::tuned`], cached on disk).

use bytemuck::{Pod, Zeroable};

use super::{Activation, check_len, compose};
use crate::gpu::{Binding, Dispatch, Gpu, GpuError, Kernel, Result, Slot, View};

/// How A and B are stored (row-major). `C` is always M×N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `C = A·B`, A stored M×K, B stored K×N (forward).
    NN,
    /// `C = Aᵀ·B`, A stored K×M, B stored K×N (weight gradient `Xᵀ·dY`).
    TN,
    /// `C = A·Bᵀ`, A stored M×K, B stored N×K (data gradient `dY·Wᵀ`).
    NT,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Self::NN, Self::TN, Self::NT];

    pub fn trans_a(self) -> bool {
        self == Self::TN
    }

    pub fn trans_b(self) -> bool {
        self == Self::NT
    }
}

/// Which kernel computes the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Shared-memory tiled, register-blocked (64×64 tile, 4×4 per invocation). Runs anywhere.
    Tiled,
    /// One 8-lane subgroup per workgroup, 32×64 tile in registers, no workgroup memory, operands
    /// copied into textures (image loads are far cheaper than storage loads on lavapipe): fast on
    /// software adapters. Needs [`Gpu::has_subgroups`].
    Subgroup,
    /// The subgroup kernel reading `rgba32float` textures, four elements per image load: a
    /// quarter of the loads. Needs the operands' contiguous dimensions to be multiples of 4
    /// ([`MatmulVariant::fits`]).
    SubgroupVec4,
}

impl MatmulVariant {
    pub const ALL: [MatmulVariant; 3] = [Self::Tiled, Self::Subgroup, Self::SubgroupVec4];

    /// The kernel [`Matmul::new`] uses when none is forced.
    pub fn auto(gpu: &Gpu) -> Self {
        if gpu.has_subgroups() && gpu.is_software() {
            Self::Subgroup
        } else {
            Self::Tiled
        }
    }

    /// The kernel for an m×n×k product in `layout`: [`MatmulVariant::auto`], or its vec4 form
    /// where the shape fits it (a quarter of the image loads, ~1.2-1.9× faster on lavapipe).
    pub fn auto_for(gpu: &Gpu, layout: Layout, m: u32, n: u32, k: u32) -> Self {
        let auto = Self::auto(gpu);
        if auto == Self::Subgroup && Self::SubgroupVec4.fits(layout, m, n, k) {
            Self::SubgroupVec4
        } else {
            auto
        }
    }

    /// The variants this adapter can run.
    pub fn available(gpu: &Gpu) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|v| *v == Self::Tiled || gpu.has_subgroups())
            .collect()
    }

    /// Whether this variant computes an m×n×k product in `layout`: the vec4 kernel reads whole
    /// texels along each operand's rows, so those must be multiples of 4 (NN: K and N; TN: M and
    /// N; NT: K).
    pub fn fits(self, layout: Layout, m: u32, n: u32, k: u32) -> bool {
        self.fits_blocks(layout, m, n, k, None)
    }

    /// As [`MatmulVariant::fits`], with the column blocks of a blocked product: for the vec4
    /// kernel, no texel may straddle two blocks (width and strides multiples of 4).
    pub fn fits_blocks(
        self,
        layout: Layout,
        m: u32,
        n: u32,
        k: u32,
        blocks: Option<&ColumnBlocks>,
    ) -> bool {
        let whole = |b: &ColumnBlocks| {
            [b.width, b.a, b.b, b.c, b.vector]
                .iter()
                .all(|v| v.is_multiple_of(4))
        };
        self != Self::SubgroupVec4
            || blocks.is_none_or(whole)
                && match layout {
                    Layout::NN => k.is_multiple_of(4) && n.is_multiple_of(4),
                    Layout::TN => m.is_multiple_of(4) && n.is_multiple_of(4),
                    Layout::NT => k.is_multiple_of(4),
                }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tiled => "tiled",
            Self::Subgroup => "subgroup",
            Self::SubgroupVec4 => "subgroup.vec4",
        }
    }
}

/// Layout and fused epilogue of one matmul; see the module docs for the exact semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulConfig {
    pub layout: Layout,
    /// Add `bias[n]` (one value per column of C).
    pub bias: bool,
    /// Applied after the bias. `Identity` for none.
    pub act: Activation,
    /// Write the pre-activation (after the bias) to `aux`.
    pub store_pre: bool,
    /// Multiply by `derivative(g, aux[m,n])`, `aux` holding a pre-activation: the backward
    /// fusion `dX = (dY·Wᵀ) ⊙ act'(pre)`. Excludes `store_pre`.
    pub grad_act: Option<Activation>,
    /// `C += result` instead of `C = result`.
    pub accumulate: bool,
    /// Also write the column sums of op(B) to `aux` (n elements; added with `accumulate`):
    /// with [`Layout::TN`] the bias gradient, formed in the weight-gradient pass as a virtual
    /// row of ones in op(A). Only for plain products (no bias, activation or `aux` use).
    pub column_sums: bool,
    /// Operands stored as column blocks ([`ColumnBlocks`], given at bind time).
    pub blocked: Blocked,
    /// The product is dz for z = μ + exp(logσ²/2)·ε: C += dz (dμ) and
    /// aux += dz·ε·exp(logσ²/2)/2 (dlogσ²), ε and logσ² bound by [`Matmul::bind_reparam`].
    /// Needs `accumulate` and nothing else that uses `aux`.
    pub reparam: bool,
}

/// Which operands' stored columns come in blocks: two heads on one input run as one product
/// although their weights, biases, outputs and gradients lie apart. With `c`, `aux` (when m×n)
/// is laid out as C and the bias or column sums as blocks of the per-column vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Blocked {
    pub a: bool,
    pub b: bool,
    pub c: bool,
}

impl Blocked {
    pub const fn new(a: bool, b: bool, c: bool) -> Self {
        Self { a, b, c }
    }

    fn any(&self) -> bool {
        self.a || self.b || self.c
    }
}

/// The column blocks of [`Blocked`] operands: a stored row-major matrix `ld` columns wide (`ld`
/// a multiple of `width`) whose block j, its columns `j·width ..`, is a row-major rows×width
/// matrix at element `j·stride` of the bound view. `vector` spaces the blocks of the bias or
/// column sums (blocked with C).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ColumnBlocks {
    pub width: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub vector: u32,
}

impl MatmulConfig {
    /// A plain product in `layout`: no bias, no activation, overwrite C.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            bias: false,
            act: Activation::Identity,
            store_pre: false,
            grad_act: None,
            accumulate: false,
            column_sums: false,
            blocked: Blocked::default(),
            reparam: false,
        }
    }

    /// Short form for labels and messages, e.g. `NN+bias+relu+pre`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?}", self.layout);
        if self.bias {
            s += "+bias";
        }
        if self.act != Activation::Identity {
            s += &format!("+{:?}", self.act).to_lowercase();
        }
        if self.store_pre {
            s += "+pre";
        }
        if let Some(g) = self.grad_act {
            s += &format!("*d{:?}", g).to_lowercase();
        }
        if self.accumulate {
            s += "+=";
        }
        if self.column_sums {
            s += "+colsums";
        }
        if self.reparam {
            s += "+reparam";
        }
        if self.blocked.any() {
            let Blocked { a, b, c } = self.blocked;
            let names = [(a, "a"), (b, "b"), (c, "c")];
            let which: String = names.iter().filter(|(f, _)| *f).map(|(_, n)| *n).collect();
            s += &format!("+blocks({which})");
        }
        s
    }

    /// Length of `aux`, if the config uses it: laid out as C (`c_len`) or as the per-column
    /// vector (`vector_len`, the column sums).
    fn aux_len(&self, c_len: u64, vector_len: u64) -> Option<u64> {
        if self.column_sums {
            Some(vector_len)
        } else if self.store_pre || self.grad_act.is_some() || self.reparam {
            Some(c_len)
        } else {
            None
        }
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        vec![
            ("TRANS_A", flag(self.layout.trans_a())),
            ("TRANS_B", flag(self.layout.trans_b())),
            ("HAS_BIAS", flag(self.bias)),
            ("ACT", self.act.id() as f64),
            ("STORE_PRE", flag(self.store_pre)),
            ("HAS_GRAD", flag(self.grad_act.is_some())),
            (
                "GRAD_ACT",
                self.grad_act.unwrap_or(Activation::Identity).id() as f64,
            ),
            ("ACCUMULATE", flag(self.accumulate)),
            ("COLUMN_SUMS", flag(self.column_sums)),
            ("BLOCKED_A", flag(self.blocked.a)),
            ("BLOCKED_B", flag(self.blocked.b)),
            ("BLOCKED_C", flag(self.blocked.c)),
            ("REPARAM", flag(self.reparam)),
        ]
    }
}

/// Rows × columns of C per workgroup.
const TILED_TILE: (u32, u32) = (64, 64);
const SUBGROUP_TILE: (u32, u32) = (32, 64);

/// The tiled kernel: params, A, B, C, bias, aux, and the reparameterization's ε and logσ².
const TILED_SLOTS: &[Slot] = &[
    Slot::Uniform,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::Read,
    Slot::ReadWrite,
    Slot::Read,
    Slot::Read,
];

/// A variant's bindings: the tiled kernel's, then for the subgroup kernels A and B copied into
/// textures (A and B stay bound unread).
fn slots(variant: MatmulVariant) -> Vec<Slot> {
    let texture = match variant {
        MatmulVariant::Tiled => return TILED_SLOTS.to_vec(),
        MatmulVariant::Subgroup => Slot::ReadTexture,
        MatmulVariant::SubgroupVec4 => Slot::ReadTexture4,
    };
    [TILED_SLOTS, &[texture; 2]].concat()
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    tiles_n: u32,
    tiles: u32,
    /// log2 of the row widths of the A and B textures (subgroup kernel).
    a_shift: u32,
    b_shift: u32,
    block: u32,
    a_stride: u32,
    b_stride: u32,
    c_stride: u32,
    v_stride: u32,
    _pad: [u32; 3],
}

/// One matmul configuration with its compiled pipeline.
pub struct Matmul {
    cfg: MatmulConfig,
    variant: MatmulVariant,
    label: String,
    kernel: Kernel,
    /// Rows × columns of C per workgroup.
    tile: (u32, u32),
}

impl std::fmt::Debug for Matmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Matmul({}, {:?})", self.label, self.cfg)
    }
}

impl Matmul {
    /// Compiles `cfg` for `variant`, or for [`MatmulVariant::auto`] when `None`.
    pub fn new(gpu: &Gpu, cfg: MatmulConfig, variant: Option<MatmulVariant>) -> Result<Self> {
        Self::with_source(gpu, cfg, variant, None, None)
    }

    /// Development hook: as [`Matmul::new`], with the variant's WGSL file replaced by `source`
    /// (composed with common.wgsl) whose workgroups cover `tile` (rows × columns of C), for trying
    /// kernel changes without rebuilding (`VAE_BENCH_*_SRC` in `benches/kernels.rs`).
    #[doc(hidden)]
    pub fn with_source(
        gpu: &Gpu,
        cfg: MatmulConfig,
        variant: Option<MatmulVariant>,
        source: Option<&str>,
        tile: Option<(u32, u32)>,
    ) -> Result<Self> {
        let variant = variant.unwrap_or_else(|| MatmulVariant::auto(gpu));
        let label = format!("matmul.{}.{}", variant.name(), cfg.describe());
        if cfg.store_pre && cfg.grad_act.is_some() {
            return Err(GpuError::Shape {
                kernel: label,
                reason: "store_pre and grad_act both use `aux`; choose one".into(),
            });
        }
        let plain = !cfg.bias
            && cfg.act == Activation::Identity
            && !cfg.store_pre
            && cfg.grad_act.is_none();
        if cfg.column_sums && !plain {
            return Err(GpuError::Shape {
                kernel: label,
                reason: "column sums go to `aux`: only for products without bias, activation \
                         or pre-activation"
                    .into(),
            });
        }
        let aux_users = usize::from(cfg.store_pre)
            + usize::from(cfg.grad_act.is_some())
            + usize::from(cfg.column_sums);
        if cfg.reparam && (!cfg.accumulate || aux_users > 0 || cfg.blocked.c) {
            return Err(GpuError::Shape {
                kernel: label,
                reason: "the reparameterization's backward adds into C and `aux`: it needs \
                         `accumulate` and excludes other uses of `aux` and blocks of C"
                    .into(),
            });
        }
        if variant != MatmulVariant::Tiled && !gpu.has_subgroups() {
            return Err(GpuError::Shape {
                kernel: label,
                reason: format!(
                    "the subgroup kernel needs Features::SUBGROUP with >= 8 lanes; {} has {}",
                    gpu.info.name,
                    if gpu.features.contains(wgpu::Features::SUBGROUP) {
                        format!("subgroups of {} lanes", gpu.info.subgroup_min_size)
                    } else {
                        "no subgroup support".to_string()
                    }
                ),
            });
        }
        let family = match variant {
            MatmulVariant::Tiled => "matmul.wgsl",
            MatmulVariant::Subgroup => "subgroup_texels.wgsl",
            MatmulVariant::SubgroupVec4 => "subgroup_texels_vec4.wgsl",
        };
        let source = match source {
            Some(s) => super::compose_with(family, s),
            None => compose(family),
        };
        let kernel = gpu.kernel(&label, &source, "main", &slots(variant), &cfg.constants())?;
        Ok(Self {
            cfg,
            variant,
            label,
            kernel,
            tile: tile.unwrap_or(match variant {
                MatmulVariant::Tiled => TILED_TILE,
                MatmulVariant::Subgroup | MatmulVariant::SubgroupVec4 => SUBGROUP_TILE,
            }),
        })
    }

    pub fn config(&self) -> &MatmulConfig {
        &self.cfg
    }

    pub fn variant(&self) -> MatmulVariant {
        self.variant
    }

    /// The elements each operand's view must hold, checking the column blocks of a blocked
    /// config: every blocked matrix's width a multiple of the block width, and blocks that do
    /// not overlap.
    fn operand_lens(
        &self,
        (m, n, k): (u64, u64, u64),
        blocks: Option<&ColumnBlocks>,
    ) -> Result<OperandLens> {
        let blocked = self.cfg.blocked;
        let blocks = match (blocked.any(), blocks) {
            (true, Some(b)) => *b,
            (false, None) => ColumnBlocks::default(),
            (true, None) => {
                return Err(self.shape_error("the config has column blocks: pass them".into()));
            }
            (false, Some(_)) => {
                return Err(self.shape_error(
                    "column blocks given, but the config has no blocked operand".into(),
                ));
            }
        };
        let width = blocks.width as u64;
        // A stored rows×ld matrix, blocked at `stride` or dense.
        let len = |what: &str, rows: u64, ld: u64, on: bool, stride: u32| -> Result<u64> {
            if !on {
                return Ok(rows * ld);
            }
            let stride = stride as u64;
            if width == 0 || !ld.is_multiple_of(width) || stride < rows * width {
                return Err(self.shape_error(format!(
                    "{what}: {ld} columns in blocks of {width} at a stride of {stride} elements \
                     ({rows} rows) do not tile"
                )));
            }
            Ok((ld / width - 1) * stride + rows * width)
        };
        let lay = self.cfg.layout;
        let (a_rows, a_ld) = if lay.trans_a() { (k, m) } else { (m, k) };
        let (b_rows, b_ld) = if lay.trans_b() { (n, k) } else { (k, n) };
        Ok(OperandLens {
            a: len("a", a_rows, a_ld, blocked.a, blocks.a)?,
            b: len("b", b_rows, b_ld, blocked.b, blocks.b)?,
            c: len("c", m, n, blocked.c, blocks.c)?,
            vector: len("bias / column sums", 1, n, blocked.c, blocks.vector)?,
        })
    }

    fn shape_error(&self, reason: String) -> GpuError {
        GpuError::Shape {
            kernel: self.label.clone(),
            reason,
        }
    }

    /// Binds `C (m×n) = op(A)·op(B)` with inner dimension `k`, any sizes >= 1.
    ///
    /// `a` holds m·k elements (M×K, or K×M for [`Layout::TN`]), `b` k·n (K×N, or N×K for
    /// [`Layout::NT`]), `c` m·n. `bias` (n elements) is required iff the config has a bias,
    /// `aux` (m·n) iff it stores the pre-activation or multiplies by its derivative. Views may be
    /// longer than needed; only the leading elements are bound.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        &self,
        gpu: &Gpu,
        m: u32,
        n: u32,
        k: u32,
        a: &View,
        b: &View,
        c: &View,
        bias: Option<&View>,
        aux: Option<&View>,
    ) -> Result<Dispatch> {
        self.bind_blocked(gpu, (m, n, k), [a, b, c], bias, aux, None)
    }

    /// As [`Matmul::bind`], for a config with [`Blocked`] operands laid out as `blocks` says;
    /// each blocked view spans from its first block to the end of its last.
    pub fn bind_blocked(
        &self,
        gpu: &Gpu,
        dims: (u32, u32, u32),
        abc: [&View; 3],
        bias: Option<&View>,
        aux: Option<&View>,
        blocks: Option<&ColumnBlocks>,
    ) -> Result<Dispatch> {
        self.bind_all(gpu, dims, abc, (bias, aux), blocks, None)
    }

    /// Binds a [`MatmulConfig::reparam`] product: `dz = op(A)·op(B)` (m×n) pushed through
    /// z = μ + exp(logσ²/2)·ε into `dmu` (C) and `dlogvar` (aux), with `eps` and `logvar`
    /// (m×n each) from the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_reparam(
        &self,
        gpu: &Gpu,
        dims: (u32, u32, u32),
        [a, b]: [&View; 2],
        [dmu, dlogvar]: [&View; 2],
        [eps, logvar]: [&View; 2],
        blocks: Option<&ColumnBlocks>,
    ) -> Result<Dispatch> {
        self.bind_all(
            gpu,
            dims,
            [a, b, dmu],
            (None, Some(dlogvar)),
            blocks,
            Some([eps, logvar]),
        )
    }

    fn bind_all(
        &self,
        gpu: &Gpu,
        (m, n, k): (u32, u32, u32),
        [a, b, c]: [&View; 3],
        (bias, aux): (Option<&View>, Option<&View>),
        blocks: Option<&ColumnBlocks>,
        reparam: Option<[&View; 2]>,
    ) -> Result<Dispatch> {
        if m == 0 || n == 0 || k == 0 {
            return Err(self.shape_error(format!("empty product m={m} n={n} k={k}")));
        }
        let (m64, n64, k64) = (m as u64, n as u64, k as u64);
        for (what, len) in [("m*k", m64 * k64), ("k*n", k64 * n64), ("m*n", m64 * n64)] {
            if len > u32::MAX as u64 {
                return Err(self.shape_error(format!("{what} = {len} overflows 32-bit indices")));
            }
        }
        let lens = self.operand_lens((m64, n64, k64), blocks)?;
        if !self.variant.fits_blocks(
            self.cfg.layout,
            m,
            n,
            k,
            blocks.filter(|_| self.cfg.blocked.any()),
        ) {
            return Err(self.shape_error(format!(
                "the vec4 kernel needs whole texels along the operands' rows and column blocks; \
                 m={m} n={n} k={k} in {:?} (blocks {blocks:?}) do not fit",
                self.cfg.layout
            )));
        }
        check_len(&self.label, "a", a, lens.a)?;
        check_len(&self.label, "b", b, lens.b)?;
        check_len(&self.label, "c", c, lens.c)?;
        let bias = match (self.cfg.bias, bias) {
            (true, Some(v)) => {
                check_len(&self.label, "bias", v, lens.vector)?;
                Some(v.slice(0, lens.vector))
            }
            (true, None) => {
                return Err(self.shape_error("the config adds a bias: pass `bias`".into()));
            }
            (false, Some(_)) => {
                return Err(self.shape_error("`bias` given, but the config has no bias".into()));
            }
            (false, None) => None,
        };
        let aux = match (self.cfg.aux_len(lens.c, lens.vector), aux) {
            (Some(len), Some(v)) => {
                check_len(&self.label, "aux", v, len)?;
                Some(v.slice(0, len))
            }
            (Some(_), None) => {
                return Err(self.shape_error(
                    "the config stores or reads the pre-activation or writes column sums: \
                     pass `aux`"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(self.shape_error("`aux` given, but the config does not use it".into()));
            }
            (None, None) => None,
        };
        let reparam = match (self.cfg.reparam, reparam) {
            (true, Some(views)) => {
                for (name, v) in [("eps", views[0]), ("logvar", views[1])] {
                    check_len(&self.label, name, v, lens.c)?;
                }
                Some(views.map(|v| v.slice(0, lens.c)))
            }
            (true, None) => {
                return Err(self.shape_error("the reparam config needs ε and logσ²".into()));
            }
            (false, Some(_)) => {
                return Err(self.shape_error("ε and logσ² given to a plain product".into()));
            }
            (false, None) => None,
        };
        let blocks = blocks.copied().unwrap_or_default();
        let a = a.slice(0, lens.a);
        let b = b.slice(0, lens.b);
        let c = c.slice(0, lens.c);

        let (tm, tn) = self.tile;
        let tiles_n = n.div_ceil(tn);
        // The column sums are row m of the computed product.
        let rows = m + self.cfg.column_sums as u32;
        let tiles = rows.div_ceil(tm) as u64 * tiles_n as u64;
        if tiles > u32::MAX as u64 {
            return Err(self.shape_error(format!("{tiles} workgroups overflow the grid")));
        }
        let copies = match self.variant {
            MatmulVariant::Tiled => Vec::new(),
            MatmulVariant::Subgroup | MatmulVariant::SubgroupVec4 => {
                let vec4 = self.variant == MatmulVariant::SubgroupVec4;
                vec![
                    gpu.texel_copy_as(&format!("{}.a", self.label), &a, vec4)?,
                    gpu.texel_copy_as(&format!("{}.b", self.label), &b, vec4)?,
                ]
            }
        };
        let shift = |i: usize| copies.get(i).map_or(0, |t| t.shift());
        let params = gpu.uniform(
            &self.label,
            &Params {
                m,
                n,
                k,
                tiles_n,
                tiles: tiles as u32,
                a_shift: shift(0),
                b_shift: shift(1),
                block: blocks.width,
                a_stride: blocks.a,
                b_stride: blocks.b,
                c_stride: blocks.c,
                v_stride: blocks.vector,
                _pad: [0; 3],
            },
        );
        let views: Vec<wgpu::TextureView> = copies
            .iter()
            .map(|t| t.texture.create_view(&Default::default()))
            .collect();
        let mut bindings = vec![
            Binding::Uniform(&params),
            Binding::Storage(&a),
            Binding::Storage(&b),
            Binding::Storage(&c),
            optional(&bias),
            aux.as_ref().map_or(Binding::Unused, Binding::Storage),
        ];
        match &reparam {
            Some([eps, logvar]) => {
                bindings.extend([Binding::Storage(eps), Binding::Storage(logvar)])
            }
            None => bindings.extend([Binding::Unused, Binding::Unused]),
        }
        bindings.extend(views.iter().map(Binding::Texture));
        let mut dispatch = gpu.dispatch(&self.kernel, &bindings, gpu.grid_1d(tiles as u32))?;
        dispatch.copies = copies;
        Ok(dispatch)
    }
}

/// Elements each operand of one product spans (see [`Matmul::operand_lens`]).
struct OperandLens {
    a: u64,
    b: u64,
    c: u64,
    vector: u64,
}

fn optional(v: &Option<View>) -> Binding<'_> {
    v.as_ref().map_or(Binding::Unused, Binding::Storage)
}

/// Floating-point operations of one `m×k · k×n` product (a multiply-add counts 2).
pub fn flops(m: u32, n: u32, k: u32) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}
