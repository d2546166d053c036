//! The `vae` binary's device commands, driven as a user would.

use std::process::Command;

fn vae(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vae"))
        .args(args)
        .output()
        .expect("run vae");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_lists_adapters_with_limits() {
    let (ok, stdout, stderr) = vae(&["devices"]);
    assert!(ok, "vae devices failed: {stderr}");
    assert!(stdout.contains("[0] "), "no adapter listed:\n{stdout}");
    assert!(stdout.contains("max storage binding"), "{stdout}");
    assert!(stdout.contains("default choice"), "{stdout}");
}

#[test]
fn unknown_adapter_is_a_clear_error() {
    let req = vae_wgpu::gpu::AdapterRequest {
        adapter: Some("no-such-gpu-xyz".into()),
        ..Default::default()
    };
    let err = vae_wgpu::gpu::Gpu::new(&req).expect_err("must not find it");
    let msg = err.to_string();
    assert!(
        msg.contains("no adapter matches `no-such-gpu-xyz`"),
        "{msg}"
    );
    assert!(
        msg.contains("[0]"),
        "the error should list the adapters present: {msg}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn missing_backend_says_what_to_install() {
    // Linux has no Metal: the same path a machine without any adapter takes.
    let (ok, _, stderr) = vae(&["devices", "--backend", "metal"]);
    assert!(!ok, "expected failure");
    assert!(stderr.contains("no GPU adapter found"), "{stderr}");
    assert!(stderr.contains("mesa-vulkan-drivers"), "{stderr}");
}

#[test]
fn a_buffer_beyond_the_adapter_limits_is_a_clear_error() {
    let gpu = vae_wgpu::gpu::Gpu::new(&Default::default()).expect("an adapter");
    let too_big = gpu.limits.max_storage_buffer_binding_size / 4 + 1;
    let err = gpu
        .zeros("training set", too_big)
        .expect_err("must not fit");
    let msg = err.to_string();
    assert!(msg.contains("training set"), "names the buffer: {msg}");
    assert!(
        msg.contains("max_storage_buffer_binding_size"),
        "names the limit: {msg}"
    );
}
