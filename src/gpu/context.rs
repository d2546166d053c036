//! Adapter selection and the device: one `Gpu` per process, created once.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::GpuError;

/// Which graphics API to look for adapters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            Self::Auto => wgpu::Backends::all(),
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Metal => wgpu::Backends::METAL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Gl => wgpu::Backends::GL,
        }
    }
}

/// How the user asked for an adapter (`--backend`, `--adapter`, `--software`).
#[derive(Debug, Clone, Default)]
pub struct AdapterRequest {
    pub backend: BackendChoice,
    /// An index into `vae devices`' list, or a case-insensitive substring of the adapter name.
    pub adapter: Option<String>,
    /// Only software adapters (lavapipe/llvmpipe, WARP, SwiftShader).
    pub software: bool,
}

/// Features the engine uses when present; none is required.
const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// What the kernels need at the very least. Checked against the adapter before the device is made.
pub struct EngineNeeds {
    pub storage_buffers_per_stage: u32,
    pub workgroup_storage_bytes: u32,
    pub invocations_per_workgroup: u32,
}

pub const ENGINE_NEEDS: EngineNeeds = EngineNeeds {
    storage_buffers_per_stage: 10,
    workgroup_storage_bytes: 16 * 1024,
    invocations_per_workgroup: 256,
};

pub fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter on the chosen backends, in a stable order (the order `vae devices` prints).
pub fn enumerate(backend: BackendChoice) -> Vec<wgpu::Adapter> {
    let instance = new_instance(backend.backends());
    pollster::block_on(instance.enumerate_adapters(backend.backends()))
}

pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "swiftshader",
            "warp",
            "microsoft basic render",
        ]
        .iter()
        .any(|s| info.name.to_lowercase().contains(s))
}

/// Adapter preference when the user names none: discrete > integrated > virtual > other > cpu,
/// and Vulkan/Metal/DX12 before GL for the same kind.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (kind, api)
}

pub fn choose_adapter(req: &AdapterRequest) -> Result<wgpu::Adapter, GpuError> {
    let all = enumerate(req.backend);
    if all.is_empty() {
        return Err(GpuError::NoAdapter {
            backends: format!("{:?}", req.backend).to_lowercase(),
        });
    }
    let listing = all
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!("  [{i}] {} ({:?})", info.name, info.backend)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut candidates: Vec<(usize, wgpu::Adapter)> = all.into_iter().enumerate().collect();
    if req.software {
        candidates.retain(|(_, a)| is_software(&a.get_info()));
        if candidates.is_empty() {
            return Err(GpuError::NoSoftwareAdapter { listing });
        }
    }
    if let Some(query) = &req.adapter {
        if let Ok(index) = query.parse::<usize>() {
            candidates.retain(|(i, _)| *i == index);
        } else {
            let q = query.to_lowercase();
            candidates.retain(|(_, a)| a.get_info().name.to_lowercase().contains(&q));
        }
        if candidates.is_empty() {
            return Err(GpuError::AdapterNotFound {
                query: query.clone(),
                listing,
            });
        }
    }
    candidates.sort_by_key(|(i, a)| (rank(&a.get_info()), *i));
    Ok(candidates.swap_remove(0).1)
}

/// The device and queue plus what the engine learned about the adapter.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// A 16-byte buffer bound where a kernel variant does not read an input.
    pub(crate) placeholder: wgpu::Buffer,
    /// The same for unused read-write slots: one buffer may not be both in a dispatch.
    pub(crate) placeholder_rw: wgpu::Buffer,
    /// The first error the device reported outside an error scope (a validation error, out of
    /// memory, or the device lost), recorded instead of wgpu's default panic.
    faults: Arc<Mutex<Option<String>>>,
    /// Kernel variants chosen by timing (see `Gpu::tuned`).
    pub(crate) tune: super::TuneCache,
    /// Every pipeline built on this device, by what defines it (see `Gpu::kernel`): graphs that
    /// use the same kernels (a run's training, tail, test and picture graphs) share them
    /// instead of each compiling and JIT-ing its own.
    pub(crate) kernels: Mutex<std::collections::HashMap<super::kernel::KernelKey, super::Kernel>>,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.describe())
    }
}

impl Gpu {
    pub fn new(req: &AdapterRequest) -> Result<Self, GpuError> {
        Self::from_adapter(choose_adapter(req)?)
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Self, GpuError> {
        let info = adapter.get_info();
        let have = adapter.limits();
        check_needs(&info, &have)?;
        // Ask for everything the adapter offers: the defaults cap storage bindings at 128 MiB and
        // buffers per stage at 8, which real datasets and fused kernels exceed.
        let features = adapter.features() & OPTIONAL_FEATURES;
        let desc = wgpu::DeviceDescriptor {
            label: Some("vae-wgpu"),
            required_features: features,
            required_limits: have.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&desc)).map_err(|e| GpuError::Device {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let faults: Arc<Mutex<Option<String>>> = Arc::default();
        let record = |faults: &Arc<Mutex<Option<String>>>, what: String| {
            let mut slot = faults.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert(what);
        };
        let sink = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| record(&sink, e.to_string())));
        let sink = faults.clone();
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                record(
                    &sink,
                    format!("the device was lost ({reason:?}): {message}"),
                );
            }
        });
        let placeholder = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        let (placeholder, placeholder_rw) =
            (placeholder("placeholder"), placeholder("placeholder.rw"));
        Ok(Self {
            adapter,
            device,
            queue,
            info,
            limits: have,
            features,
            placeholder,
            placeholder_rw,
            faults,
            tune: super::TuneCache::from_env(),
            kernels: Mutex::default(),
        })
    }

    /// The largest buffer a kernel can bind, in bytes.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Live device buffers and their bytes (wgpu's internal counters), for leak checks.
    pub fn buffer_usage(&self) -> (i64, i64) {
        let hal = self.device.get_internal_counters().hal;
        (hal.buffers.read() as i64, hal.buffer_memory.read() as i64)
    }

    /// An error if the device has reported a fault (uncaptured error or device loss) since it
    /// was created. Long jobs check this at every logging point, so a fault stops them with a
    /// message instead of a hang or a panic.
    pub fn check_faults(&self, during: &str) -> Result<(), GpuError> {
        let fault = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match fault {
            Some(reason) => Err(GpuError::Runtime {
                during: during.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Subgroup operations with at least 8 lanes: the software-adapter matmul relies on both.
    pub fn has_subgroups(&self) -> bool {
        self.features.contains(wgpu::Features::SUBGROUP) && self.info.subgroup_min_size >= 8
    }

    pub fn is_software(&self) -> bool {
        is_software(&self.info)
    }

    /// Training steps per submit when the user does not choose: 1 on software adapters, where a
    /// submit costs ~0.1 ms against a step of tens of ms (nothing to win), else 8, so the host's
    /// submit and parameter writes stay off the device's critical path.
    pub fn default_steps_per_submit(&self) -> u32 {
        if self.is_software() { 1 } else { 8 }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info
        )
    }
}

fn check_needs(info: &wgpu::AdapterInfo, have: &wgpu::Limits) -> Result<(), GpuError> {
    let checks = [
        (
            "max_storage_buffers_per_shader_stage",
            ENGINE_NEEDS.storage_buffers_per_stage as u64,
            have.max_storage_buffers_per_shader_stage as u64,
        ),
        (
            "max_compute_workgroup_storage_size",
            ENGINE_NEEDS.workgroup_storage_bytes as u64,
            have.max_compute_workgroup_storage_size as u64,
        ),
        (
            "max_compute_invocations_per_workgroup",
            ENGINE_NEEDS.invocations_per_workgroup as u64,
            have.max_compute_invocations_per_workgroup as u64,
        ),
    ];
    for (limit, need, have) in checks {
        if have < need {
            return Err(GpuError::AdapterTooSmall {
                adapter: info.name.clone(),
                what: "the engine's kernels".into(),
                limit,
                need,
                have,
            });
        }
    }
    Ok(())
}
