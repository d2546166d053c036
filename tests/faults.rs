//! A device fault outside an error scope (here a validation error) is recorded instead of
//! panicking in wgpu's default handler, and every later wait reports it, so a long job stops with
//! a message rather than continuing on garbage or hanging.

mod common;

use common::all_gpus;

#[test]
fn an_uncaptured_error_is_reported_not_panicked() {
    for gpu in all_gpus() {
        gpu.check_faults("start")
            .expect("a fresh device has no fault");
        // MAP_READ may only be combined with COPY_DST: a validation error, outside any scope.
        let _bad = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid usage"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let err = gpu
            .wait("the faulty job")
            .expect_err("the fault must surface")
            .to_string();
        assert!(
            err.contains("the faulty job") && err.contains("invalid usage"),
            "{}: {err}",
            gpu.describe()
        );
        assert!(gpu.check_faults("later").is_err(), "the fault is sticky");
    }
}
