//! Compute pipelines with explicit bind-group layouts, and the recorded dispatches built on them.

use super::{Gpu, GpuError, ParamWrite, Result, View};

/// What each binding of a kernel is, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Uniform,
    Read,
    ReadWrite,
    /// A 2-D `r32float` storage texture, read only (see [`TexelCopy`]).
    ReadTexture,
    /// A 2-D `rgba32float` storage texture, read only: four consecutive elements per texel.
    ReadTexture4,
}

/// What defines a pipeline (see [`Gpu::kernel`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    label: String,
    source: String,
    entry: String,
    slots: Vec<Slot>,
    /// Override constants, as the bits of their f64 values.
    constants: Vec<(String, u64)>,
}

/// A compiled compute pipeline and its bind-group layout.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub slots: Vec<Slot>,
}

/// What to bind to one slot.
pub enum Binding<'a> {
    Uniform(&'a wgpu::Buffer),
    Storage(&'a View),
    /// For [`Slot::ReadTexture`].
    Texture(&'a wgpu::TextureView),
    /// The slot is not read by this kernel variant.
    Unused,
}

/// One recorded dispatch: pipeline, bind group and grid, ready to be encoded any number of times.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// Encoded before the dispatch, outside the compute pass.
    pub copies: Vec<TexelCopy>,
}

/// A buffer range copied into an `r32float` texture, row after row, before a dispatch: the
/// texture, bound as a [`Slot::ReadTexture`], is how a kernel reads an operand where per-lane
/// storage-buffer loads are slow. On Mesa 22.3 lavapipe every such load is a loop over the 8 lanes
/// with a branch and a vector insert per lane and component (~30 cycles per element); an image load
/// is a branch-free gather, several times cheaper.
#[derive(Debug, Clone)]
pub struct TexelCopy {
    pub src: View,
    /// `width` texels per row (a power of two, at least 64: rows of 256 bytes as copies need).
    pub texture: wgpu::Texture,
}

fn texel_format(vec4: bool) -> wgpu::TextureFormat {
    if vec4 {
        wgpu::TextureFormat::Rgba32Float
    } else {
        wgpu::TextureFormat::R32Float
    }
}

impl TexelCopy {
    /// log2 of the row width in texels: texel `t` is at `(t & (width - 1), t >> shift)`, and
    /// holds elements `t·lanes .. t·lanes + lanes - 1`.
    pub fn shift(&self) -> u32 {
        self.texture.width().trailing_zeros()
    }

    /// Elements per texel: 1 (`r32float`) or 4 (`rgba32float`).
    pub fn lanes(&self) -> u64 {
        if self.texture.format() == wgpu::TextureFormat::Rgba32Float {
            4
        } else {
            1
        }
    }

    fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let lanes = self.lanes();
        let width = self.texture.width() as u64;
        let texels = self.src.len / lanes;
        let rows = texels / width;
        // The whole rows, then the partial last one.
        for (y, w, h) in [(0, width, rows), (rows, texels % width, 1)] {
            if w == 0 || h == 0 {
                continue;
            }
            encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: &self.src.buffer,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: (self.src.offset + y * width * lanes) * 4,
                        bytes_per_row: Some((width * lanes) as u32 * 4),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    texture: &self.texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d {
                        x: 0,
                        y: y as u32,
                        z: 0,
                    },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d {
                    width: w as u32,
                    height: h as u32,
                    depth_or_array_layers: 1,
                },
            );
        }
    }
}

impl Dispatch {
    /// Encodes the texture copies this dispatch reads (outside any compute pass), if any.
    pub fn encode_copies(&self, encoder: &mut wgpu::CommandEncoder) {
        for c in &self.copies {
            c.encode(encoder);
        }
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.groups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Records `dispatches` in order: compute passes, split where a dispatch first copies its
/// operands into textures.
fn record_dispatches(encoder: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
    let mut pass: Option<wgpu::ComputePass<'static>> = None;
    for d in dispatches {
        if !d.copies.is_empty() {
            drop(pass.take());
            for c in &d.copies {
                c.encode(encoder);
            }
        }
        let pass = pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&Default::default())
                .forget_lifetime()
        });
        d.record(pass);
    }
}

/// Several training steps in one submit. Each step's per-step parameters ([`ParamWrite`]s: the
/// batch, the random stream's step, Adam's step and rate, β) are staged together in one buffer
/// by a single queue write, and copied into place in the command buffer before that step's
/// dispatches, so the steps run back to back without the host in between.
pub struct StepBatch {
    staging: Option<wgpu::Buffer>,
}

impl Default for StepBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl StepBatch {
    pub fn new() -> Self {
        Self { staging: None }
    }

    /// Submits `steps` in order, each its writes then its dispatches.
    pub fn submit(&mut self, gpu: &Gpu, steps: &[(Vec<ParamWrite>, Vec<&Dispatch>)]) {
        let mut blob = Vec::new();
        let mut sources = Vec::new();
        for (writes, _) in steps {
            let mut offsets = Vec::new();
            for w in writes {
                offsets.push(blob.len() as u64);
                blob.extend_from_slice(&w.bytes);
            }
            sources.push(offsets);
        }
        let need = (blob.len() as u64).max(4);
        let staging = match self.staging.take() {
            Some(b) if b.size() >= need => b,
            _ => gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step parameters"),
                size: need.next_power_of_two(),
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        if !blob.is_empty() {
            gpu.queue.write_buffer(&staging, 0, &blob);
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for ((writes, dispatches), offsets) in steps.iter().zip(&sources) {
            for (w, &src) in writes.iter().zip(offsets) {
                let len = w.bytes.len() as u64;
                encoder.copy_buffer_to_buffer(&staging, src, &w.buffer, w.offset, len);
            }
            record_dispatches(&mut encoder, dispatches);
        }
        gpu.queue.submit([encoder.finish()]);
        self.staging = Some(staging);
    }
}

impl Gpu {
    /// Compiles `source` and builds a pipeline for `entry` with the given override constants.
    /// Validation errors come back as `GpuError::Shader`, never as a panic.
    /// A pipeline with the same label, source, entry point, slots and constants as one built
    /// before on this device is that one, not a new compile.
    pub fn kernel(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        slots: &[Slot],
        constants: &[(&str, f64)],
    ) -> Result<Kernel> {
        let key = KernelKey {
            label: label.to_string(),
            source: source.to_string(),
            entry: entry.to_string(),
            slots: slots.to_vec(),
            constants: constants
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_bits()))
                .collect(),
        };
        let lock = || self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = lock().get(&key) {
            return Ok(k.clone());
        }
        let kernel = self.compile(label, source, entry, slots, constants)?;
        lock().insert(key, kernel.clone());
        Ok(kernel)
    }

    fn compile(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        slots: &[Slot],
        constants: &[(&str, f64)],
    ) -> Result<Kernel> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match slot {
                    Slot::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Slot::Read | Slot::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *slot == Slot::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Slot::ReadTexture | Slot::ReadTexture4 => wgpu::BindingType::StorageTexture {
                        access: wgpu::StorageTextureAccess::ReadOnly,
                        format: texel_format(*slot == Slot::ReadTexture4),
                        view_dimension: wgpu::TextureViewDimension::D2,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Shader {
                label: label.to_string(),
                reason: err.to_string(),
            });
        }
        Ok(Kernel {
            label: label.to_string(),
            pipeline,
            layout,
            slots: slots.to_vec(),
        })
    }

    /// Binds resources to a kernel's slots and fixes the grid.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        bindings: &[Binding<'_>],
        groups: [u32; 3],
    ) -> Result<Dispatch> {
        if bindings.len() != kernel.slots.len() {
            return Err(GpuError::Shape {
                kernel: kernel.label.clone(),
                reason: format!(
                    "{} bindings given for {} slots",
                    bindings.len(),
                    kernel.slots.len()
                ),
            });
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(GpuError::AdapterTooSmall {
                adapter: self.info.name.clone(),
                what: format!("kernel `{}` grid {groups:?}", kernel.label),
                limit: "max_compute_workgroups_per_dimension",
                need: *groups.iter().max().unwrap_or(&0) as u64,
                have: max as u64,
            });
        }
        // One buffer may not be both read-only and read-write storage in a dispatch, so unused
        // slots of either kind get their own placeholder.
        let placeholder = View::whole(&self.placeholder);
        let placeholder_rw = View::whole(&self.placeholder_rw);
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .zip(&kernel.slots)
            .enumerate()
            .map(|(i, (b, slot))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: match (b, slot) {
                    (Binding::Uniform(buf), _) => buf.as_entire_binding(),
                    (Binding::Storage(view), _) => view.binding(),
                    (Binding::Texture(view), _) => wgpu::BindingResource::TextureView(view),
                    (Binding::Unused, Slot::ReadWrite) => placeholder_rw.binding(),
                    (Binding::Unused, _) => placeholder.binding(),
                },
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.label),
            layout: &kernel.layout,
            entries: &entries,
        });
        Ok(Dispatch {
            label: kernel.label.clone(),
            pipeline: kernel.pipeline.clone(),
            bind_group,
            groups,
            copies: Vec::new(),
        })
    }

    /// Records `dispatches` into one command buffer and submits it: one compute pass, split only
    /// where a dispatch has copies to encode first.
    pub fn submit(&self, dispatches: &[&Dispatch]) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        record_dispatches(&mut encoder, dispatches);
        self.queue.submit([encoder.finish()]);
    }

    /// A texture to receive `src` (see [`TexelCopy`]): rows of 64 texels, or wider where the
    /// adapter's texture height limit needs it.
    pub fn texel_copy(&self, label: &str, src: &View) -> Result<TexelCopy> {
        self.texel_copy_as(label, src, false)
    }

    /// As [`Gpu::texel_copy`], into an `rgba32float` texture with `vec4` (`src.len` a multiple
    /// of 4), or `r32float` without.
    pub fn texel_copy_as(&self, label: &str, src: &View, vec4: bool) -> Result<TexelCopy> {
        let lanes = if vec4 { 4 } else { 1 };
        if !src.len.is_multiple_of(lanes) {
            return Err(GpuError::Shape {
                kernel: label.to_string(),
                reason: format!("{} elements do not fill whole vec4 texels", src.len),
            });
        }
        let texels = src.len / lanes;
        let max = self.limits.max_texture_dimension_2d as u64;
        let mut width = 64u64;
        while texels.div_ceil(width) > max && width < max {
            width *= 2;
        }
        let rows = texels.div_ceil(width).max(1);
        if rows > max || width > max {
            return Err(GpuError::AdapterTooSmall {
                adapter: self.info.name.clone(),
                what: format!("texture `{label}` ({texels} texels)"),
                limit: "max_texture_dimension_2d",
                need: rows.max(width),
                have: max,
            });
        }
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: width as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: texel_format(vec4),
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        Ok(TexelCopy {
            src: src.clone(),
            texture,
        })
    }

    /// Submits and waits, reporting validation errors (tests and one-off jobs).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.submit(dispatches);
        let err = pollster::block_on(scope.pop());
        self.wait("dispatch")?;
        match err {
            Some(e) => Err(self.runtime("dispatch", e)),
            None => Ok(()),
        }
    }

    /// A 1-D grid of `n` workgroups folded into x/y so it stays under the per-dimension limit.
    /// Kernels recover the flat index as `wid.y * num_workgroups.x + wid.x`.
    pub fn grid_1d(&self, n: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if n <= max {
            [n.max(1), 1, 1]
        } else {
            [max, n.div_ceil(max), 1]
        }
    }
}
