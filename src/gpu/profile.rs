//! Per-dispatch GPU time from timestamp queries, for `vae bench`: where a step's time goes.

use super::{Dispatch, Gpu, Result};

impl Gpu {
    /// Runs `dispatches` once, each in its own compute pass bracketed by timestamps, and returns
    /// each one's device time in seconds; `None` when the adapter has no timestamp queries.
    /// (Separate passes add a little per-dispatch overhead, and a dispatch's texture copies fall
    /// outside its timed pass: use it to see proportions, the plain step timing for throughput.)
    pub fn profile(&self, dispatches: &[&Dispatch]) -> Result<Option<Vec<f64>>> {
        if !self.features.contains(wgpu::Features::TIMESTAMP_QUERY) || dispatches.is_empty() {
            return Ok(None);
        }
        let n = dispatches.len() as u32;
        let count = 2 * n;
        if count > wgpu::QUERY_SET_MAX_QUERIES {
            return Ok(None);
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * wgpu::QUERY_SIZE as u64;
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolved"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for (i, d) in dispatches.iter().enumerate() {
            d.encode_copies(&mut encoder);
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(&d.label),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries,
                    beginning_of_pass_write_index: Some(2 * i as u32),
                    end_of_pass_write_index: Some(2 * i as u32 + 1),
                }),
            });
            d.record(&mut pass);
        }
        encoder.resolve_query_set(&queries, 0..count, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait("profiling")?;
        rx.recv()
            .map_err(|e| self.runtime("profiling", e))?
            .map_err(|e| self.runtime("profiling", e))?;
        let ticks: Vec<u64> = {
            let range = slice
                .get_mapped_range()
                .map_err(|e| self.runtime("profiling", e))?;
            bytemuck::cast_slice::<u8, u64>(&range).to_vec()
        };
        staging.unmap();
        let period_s = self.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(Some(
            ticks
                .chunks_exact(2)
                .map(|t| t[1].saturating_sub(t[0]) as f64 * period_s)
                .collect(),
        ))
    }
}
