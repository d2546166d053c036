//! One Rust wrapper per `shaders/*.wgsl` family. Each wrapper compiles its pipelines once and
//! hands out [`crate::gpu::Dispatch`]es bound to fixed buffers and shapes.

pub mod activation;
pub mod adam;
pub mod batch;
pub mod conv;
pub mod elbo;
pub mod gauss_kl;
pub mod hierarchy;
pub mod iwae;
pub mod ladder;
pub mod matmul;
pub mod reduce;
pub mod sample;

/// Every shader file, embedded at compile time so the binary runs from any directory.
pub const SHADER_FILES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("../../shaders/common.wgsl")),
    (
        "activation.wgsl",
        include_str!("../../shaders/activation.wgsl"),
    ),
    ("adam.wgsl", include_str!("../../shaders/adam.wgsl")),
    ("batch.wgsl", include_str!("../../shaders/batch.wgsl")),
    ("conv.wgsl", include_str!("../../shaders/conv.wgsl")),
    ("elbo.wgsl", include_str!("../../shaders/elbo.wgsl")),
    ("gauss_kl.wgsl", include_str!("../../shaders/gauss_kl.wgsl")),
    (
        "hierarchy.wgsl",
        include_str!("../../shaders/hierarchy.wgsl"),
    ),
    ("iwae.wgsl", include_str!("../../shaders/iwae.wgsl")),
    ("ladder.wgsl", include_str!("../../shaders/ladder.wgsl")),
    ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl")),
    (
        "matmul_common.wgsl",
        include_str!("../../shaders/matmul_common.wgsl"),
    ),
    (
        "matmul_subgroup.wgsl",
        include_str!("../../shaders/matmul_subgroup.wgsl"),
    ),
    (
        "subgroup_texels.wgsl",
        include_str!("../../shaders/subgroup_texels.wgsl"),
    ),
    (
        "subgroup_texels_vec4.wgsl",
        include_str!("../../shaders/subgroup_texels_vec4.wgsl"),
    ),
    ("random.wgsl", include_str!("../../shaders/random.wgsl")),
    ("reduce.wgsl", include_str!("../../shaders/reduce.wgsl")),
    ("sample.wgsl", include_str!("../../shaders/sample.wgsl")),
    (
        "tiled_gemm.wgsl",
        include_str!("../../shaders/tiled_gemm.wgsl"),
    ),
];

pub fn shader_file(name: &str) -> &'static str {
    SHADER_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no shader file {name}"))
}

/// Shared files prepended to a family, in order: `common.wgsl` for all, the matmul bindings
/// and epilogue for both matmul kernels, the Philox generator for the families that draw.
pub fn preludes(family: &str) -> &'static [&'static str] {
    match family {
        "matmul.wgsl" => &["common.wgsl", "matmul_common.wgsl", "tiled_gemm.wgsl"],
        // The subgroup kernel's families are its operand readers; the kernel itself is shared.
        f if f.starts_with("subgroup_texels") => {
            &["common.wgsl", "matmul_common.wgsl", "matmul_subgroup.wgsl"]
        }
        "conv.wgsl" => &["common.wgsl", "tiled_gemm.wgsl"],
        "sample.wgsl" | "batch.wgsl" => &["common.wgsl", "random.wgsl"],
        _ => &["common.wgsl"],
    }
}

/// A kernel family's full source: its preludes followed by the family's file.
pub fn compose(family: &str) -> String {
    compose_with(family, shader_file(family))
}

/// `family`'s preludes followed by `body` in place of the family's file (for kernel experiments).
pub fn compose_with(family: &str, body: &str) -> String {
    let mut src: Vec<&str> = preludes(family).iter().map(|f| shader_file(f)).collect();
    src.push(body);
    src.join("\n")
}

/// A compiled module as the GPU sees it: which file, which naga capabilities it needs.
pub struct ModuleSpec {
    pub family: &'static str,
    pub needs_subgroups: bool,
}

/// Every module the engine builds; the naga test validates each of them.
pub const MODULES: &[ModuleSpec] = &[
    ModuleSpec {
        family: "activation.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "adam.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "batch.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "conv.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "elbo.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "gauss_kl.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "hierarchy.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "iwae.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "ladder.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "matmul.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "subgroup_texels.wgsl",
        needs_subgroups: true,
    },
    ModuleSpec {
        family: "subgroup_texels_vec4.wgsl",
        needs_subgroups: true,
    },
    ModuleSpec {
        family: "reduce.wgsl",
        needs_subgroups: false,
    },
    ModuleSpec {
        family: "sample.wgsl",
        needs_subgroups: false,
    },
];

/// Activation functions, numbered as in `shaders/common.wgsl`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Identity = 0,
    #[default]
    Relu = 1,
    LeakyRelu = 2,
    Tanh = 3,
    Sigmoid = 4,
    Softplus = 5,
    Elu = 6,
    Gelu = 7,
}

impl Activation {
    pub const ALL: [Activation; 8] = [
        Self::Identity,
        Self::Relu,
        Self::LeakyRelu,
        Self::Tanh,
        Self::Sigmoid,
        Self::Softplus,
        Self::Elu,
        Self::Gelu,
    ];

    pub fn id(self) -> u32 {
        self as u32
    }
}

/// Checks that a view holds at least `need` elements.
pub(crate) fn check_len(
    kernel: &str,
    what: &str,
    view: &crate::gpu::View,
    need: u64,
) -> crate::gpu::Result<()> {
    if view.len < need {
        return Err(crate::gpu::GpuError::Shape {
            kernel: kernel.to_string(),
            reason: format!("`{what}` holds {} elements, needs {need}", view.len),
        });
    }
    Ok(())
}

/// [`check_len`] for each (name, buffer, elements needed) of a dispatch.
pub(crate) fn check_lens(
    kernel: &str,
    buffers: &[(&str, &crate::gpu::View, u64)],
) -> crate::gpu::Result<()> {
    buffers
        .iter()
        .try_for_each(|&(what, view, need)| check_len(kernel, what, view, need))
}

/// Checks a row-reduction kernel's workgroup size (a power of two within the adapter's limits)
/// and that the adapter binds `storage_buffers` storage buffers in one stage.
pub(crate) fn check_row_kernel(
    gpu: &crate::gpu::Gpu,
    kernel: &str,
    workgroup: u32,
    storage_buffers: u32,
) -> crate::gpu::Result<()> {
    if !workgroup.is_power_of_two()
        || workgroup > gpu.limits.max_compute_invocations_per_workgroup
        || workgroup > gpu.limits.max_compute_workgroup_size_x
    {
        return Err(crate::gpu::GpuError::Shape {
            kernel: kernel.into(),
            reason: format!("workgroup size {workgroup} is not a power of two within the limits"),
        });
    }
    let have = gpu.limits.max_storage_buffers_per_shader_stage;
    if have < storage_buffers {
        return Err(crate::gpu::GpuError::AdapterTooSmall {
            adapter: gpu.info.name.clone(),
            what: format!("the {kernel} kernel"),
            limit: "max_storage_buffers_per_shader_stage",
            need: storage_buffers as u64,
            have: have as u64,
        });
    }
    Ok(())
}
