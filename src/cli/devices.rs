//! `vae devices`: what is there, and which adapter the engine would choose.

use super::DeviceArgs;
use crate::gpu::{self, GpuError};

pub fn run(args: &DeviceArgs) -> anyhow::Result<()> {
    let adapters = gpu::enumerate(args.backend);
    if adapters.is_empty() {
        return Err(GpuError::NoAdapter {
            backends: format!("{:?}", args.backend).to_lowercase(),
        }
        .into());
    }
    let chosen = gpu::choose_adapter(&args.request())
        .ok()
        .map(|a| a.get_info());
    for (i, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        let l = adapter.limits();
        let f = adapter.features();
        let mark = if chosen.as_ref() == Some(&info) {
            "  <- default choice"
        } else {
            ""
        };
        println!(
            "[{i}] {} ({:?}, {:?}){mark}",
            info.name, info.backend, info.device_type
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    max storage binding {} MiB, max buffer {} MiB, storage buffers/stage {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "    workgroup: {} B shared, {} invocations, {} groups/dim; subgroup size {}..{}",
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
            info.subgroup_min_size,
            info.subgroup_max_size
        );
        let names = [
            (wgpu::Features::SUBGROUP, "SUBGROUP"),
            (wgpu::Features::SHADER_F16, "SHADER_F16"),
            (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
        ];
        let have: Vec<&str> = names
            .iter()
            .filter(|(x, _)| f.contains(*x))
            .map(|(_, n)| *n)
            .collect();
        println!(
            "    optional features: {}; software adapter: {}",
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            },
            gpu::is_software(&info)
        );
    }
    Ok(())
}
