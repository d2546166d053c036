//! Every WGSL module the engine builds is parsed and validated by naga, so a shader error is a
//! test failure rather than a runtime surprise. Portable modules are validated without subgroup
//! capabilities, so they cannot quietly start depending on them.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use vae_wgpu::kernels::{MODULES, SHADER_FILES, compose, preludes};

fn validate(family: &str, caps: Capabilities) -> Result<(), String> {
    let src = compose(family);
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
    Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map(|_| ())
        .map_err(|e| e.emit_to_string(&src))
}

#[test]
fn every_module_parses_and_validates() {
    for spec in MODULES {
        let caps = if spec.needs_subgroups {
            Capabilities::default() | Capabilities::SUBGROUP
        } else {
            Capabilities::default()
        };
        if let Err(e) = validate(spec.family, caps) {
            panic!("{} failed naga validation:\n{e}", spec.family);
        }
    }
}

#[test]
fn every_shader_file_is_embedded_and_built() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    for name in &on_disk {
        assert!(
            SHADER_FILES.iter().any(|(n, _)| n == name),
            "shaders/{name} is not embedded in kernels::SHADER_FILES"
        );
        let built = MODULES
            .iter()
            .any(|m| m.family == name || preludes(m.family).contains(&name.as_str()));
        assert!(
            built,
            "shaders/{name} is not in kernels::MODULES, so naga never validates it"
        );
    }
    assert_eq!(
        on_disk.len(),
        SHADER_FILES.len(),
        "SHADER_FILES lists a file that is gone"
    );
}

#[test]
fn a_broken_shader_is_reported() {
    // The validator must actually reject bad WGSL (guards against a test that cannot fail).
    let module = naga::front::wgsl::parse_str("fn f() -> f32 { return 1u; }").unwrap();
    let r = Validator::new(ValidationFlags::all(), Capabilities::default()).validate(&module);
    assert!(r.is_err());
}
