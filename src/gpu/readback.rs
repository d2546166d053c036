//! Asynchronous readback of a small view (the training loss sums) so that logging never stalls
//! the queue: a request copies the view to a staging buffer (and can zero the view) in its own
//! submit, behind the steps already queued, and maps it asynchronously; later polls hand the
//! values back in request order while the device keeps working.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{Gpu, Result, View};

type MapResult = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// How long [`AsyncReader::poll`] may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: hand back what has arrived.
    No,
    /// Until the oldest request has arrived (throttles a host that runs ahead of the device).
    Oldest,
    /// Until every request has arrived.
    All,
}

struct Pending<T> {
    staging: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    mapped: MapResult,
    tag: T,
}

pub struct AsyncReader<T> {
    view: View,
    free: Vec<wgpu::Buffer>,
    pending: VecDeque<Pending<T>>,
}

impl<T> AsyncReader<T> {
    pub fn new(view: &View) -> Self {
        Self {
            view: view.clone(),
            free: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn bytes(&self) -> u64 {
        (self.view.len * 4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
    }

    /// Queues a copy of the view as it will be after all work submitted so far, tagged with
    /// `tag`; with `zero`, the view is cleared right after the copy.
    pub fn request(&mut self, gpu: &Gpu, tag: T, zero: bool) {
        let bytes = self.bytes();
        let staging = self.free.pop().unwrap_or_else(|| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("async readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let offset = self.view.offset * 4;
        encoder.copy_buffer_to_buffer(&self.view.buffer, offset, &staging, 0, bytes);
        if zero {
            encoder.clear_buffer(&self.view.buffer, offset, Some(bytes));
        }
        let submission = gpu.queue.submit([encoder.finish()]);
        let mapped: MapResult = Arc::new(Mutex::new(None));
        let slot = mapped.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        self.pending.push_back(Pending {
            staging,
            submission,
            mapped,
            tag,
        });
    }

    /// Requests not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The requests that have arrived, oldest first, after blocking as `wait` says.
    pub fn poll(&mut self, gpu: &Gpu, wait: Wait) -> Result<Vec<(T, Vec<f32>)>> {
        let Some(front) = self.pending.front() else {
            return Ok(Vec::new());
        };
        let how = match wait {
            Wait::No => wgpu::PollType::Poll,
            Wait::Oldest => wgpu::PollType::Wait {
                submission_index: Some(front.submission.clone()),
                timeout: None,
            },
            Wait::All => wgpu::PollType::wait_indefinitely(),
        };
        gpu.device
            .poll(how)
            .map_err(|e| gpu.runtime("loss readback", e))?;
        let mut out = Vec::new();
        while let Some(front) = self.pending.front() {
            let state = front
                .mapped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match state {
                None => break,
                Some(Err(e)) => return Err(gpu.runtime("loss readback", e)),
                Some(Ok(())) => {
                    let p = self.pending.pop_front().expect("front exists");
                    let values = {
                        let range = p
                            .staging
                            .slice(..)
                            .get_mapped_range()
                            .map_err(|e| gpu.runtime("loss readback", e))?;
                        bytemuck::cast_slice::<u8, f32>(&range)[..self.view.len as usize].to_vec()
                    };
                    p.staging.unmap();
                    self.free.push(p.staging);
                    out.push((p.tag, values));
                }
            }
        }
        let missing = match wait {
            Wait::No => false,
            Wait::Oldest => out.is_empty(),
            Wait::All => !self.pending.is_empty(),
        };
        if missing {
            return Err(gpu.runtime(
                "loss readback",
                "the device finished but a mapping never completed",
            ));
        }
        Ok(out)
    }
}
