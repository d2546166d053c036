//! Storage buffers, uploads and (rare, explicit) readbacks.

use wgpu::util::DeviceExt;

use super::{Gpu, GpuError, Result};

/// A per-step value for a kernel's parameters: `bytes` at byte `offset` of `buffer` (whole
/// 4-byte words). Applied before a submit ([`Gpu::apply`]), or staged with other steps' for one
/// submit of several steps ([`super::StepBatch`]).
#[derive(Debug, Clone)]
pub struct ParamWrite {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

impl ParamWrite {
    pub fn new<T: bytemuck::Pod>(buffer: &wgpu::Buffer, offset: u64, value: &T) -> Self {
        let bytes = bytemuck::bytes_of(value).to_vec();
        assert!(
            offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
            "parameter writes are whole words"
        );
        Self {
            buffer: buffer.clone(),
            offset,
            bytes,
        }
    }
}

/// A range of f32 (or u32) elements inside a storage buffer: what a kernel binds.
#[derive(Debug, Clone)]
pub struct View {
    pub buffer: wgpu::Buffer,
    /// Offset in elements; a multiple of the adapter's storage offset alignment / 4.
    pub offset: u64,
    pub len: u64,
}

impl View {
    pub fn whole(buffer: &wgpu::Buffer) -> Self {
        Self {
            buffer: buffer.clone(),
            offset: 0,
            len: buffer.size() / 4,
        }
    }

    pub fn slice(&self, offset: u64, len: u64) -> Self {
        assert!(offset + len <= self.len, "view slice out of range");
        Self {
            buffer: self.buffer.clone(),
            offset: self.offset + offset,
            len,
        }
    }

    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset * 4,
            size: wgpu::BufferSize::new(self.len.max(1) * 4),
        })
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    fn check_binding_size(&self, label: &str, bytes: u64) -> Result<()> {
        let max = self
            .limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size);
        if bytes > max {
            return Err(GpuError::AdapterTooSmall {
                adapter: self.info.name.clone(),
                what: format!("buffer `{label}` ({bytes} bytes)"),
                limit: "max_storage_buffer_binding_size",
                need: bytes,
                have: max,
            });
        }
        Ok(())
    }

    /// A storage buffer holding `data` (at least 16 bytes, so every binding is non-empty).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<View> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_binding_size(label, bytes.len() as u64)?;
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().max(16).next_multiple_of(16), 0);
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &padded,
                usage: STORAGE,
            });
        Ok(View {
            buffer,
            offset: 0,
            len: (bytes.len() / 4) as u64,
        })
    }

    /// A zero-filled storage buffer of `len` 32-bit elements.
    pub fn zeros(&self, label: &str, len: u64) -> Result<View> {
        let bytes = (len * 4).max(16).next_multiple_of(16);
        self.check_binding_size(label, bytes)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: STORAGE,
            mapped_at_creation: false,
        });
        Ok(View {
            buffer,
            offset: 0,
            len,
        })
    }

    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// Writes `w` now (it takes effect at the next submit).
    pub fn apply(&self, w: &ParamWrite) {
        self.queue.write_buffer(&w.buffer, w.offset, &w.bytes);
    }

    pub fn write<T: bytemuck::Pod>(&self, view: &View, data: &[T]) {
        assert!(
            data.len() as u64 <= view.len,
            "write past the end of a view"
        );
        self.queue
            .write_buffer(&view.buffer, view.offset * 4, bytemuck::cast_slice(data));
    }

    /// Copies a view back to the host and waits. For tests, logging intervals and checkpoints:
    /// never inside a training step.
    pub fn read<T: bytemuck::Pod>(&self, view: &View) -> Result<Vec<T>> {
        let bytes = view.len * 4;
        let padded = bytes.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let copy = bytes.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let available = view.buffer.size() - view.offset * 4;
        encoder.copy_buffer_to_buffer(
            &view.buffer,
            view.offset * 4,
            &staging,
            0,
            copy.min(available),
        );
        self.queue.submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait("readback")?;
        rx.recv()
            .map_err(|e| self.runtime("readback", e))?
            .map_err(|e| self.runtime("readback", e))?;
        let mapped = slice
            .get_mapped_range()
            .map_err(|e| self.runtime("readback", e))?;
        let out = bytemuck::cast_slice::<u8, T>(&mapped[..bytes as usize]).to_vec();
        drop(mapped);
        staging.unmap();
        Ok(out)
    }

    /// Blocks until all submitted work has finished; an error if the device reported a fault.
    pub fn wait(&self, during: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.runtime(during, e))?;
        self.check_faults(during)
    }

    pub(crate) fn runtime(&self, during: &str, e: impl std::fmt::Display) -> GpuError {
        GpuError::Runtime {
            during: during.to_string(),
            reason: e.to_string(),
        }
    }
}
