//! Checkpoint files: a round trip keeps every value and setting; every kind of damaged or foreign
//! file gets an error naming the file and the problem.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use vae_wgpu::kernels::Activation;
use vae_wgpu::kernels::adam::AdamConfig;
use vae_wgpu::kernels::elbo::Likelihood;
use vae_wgpu::model::{ParamLayout, VaeConfig};
use vae_wgpu::train::checkpoint::{self, Checkpoint, Progress, write_atomically};
use vae_wgpu::train::{Binarize, TrainSettings};

fn settings() -> TrainSettings {
    TrainSettings {
        data: "mnist5k".into(),
        test_data: Some("../shared/data/x.gz".into()),
        model: VaeConfig {
            input: 13,
            hidden: vec![7, 5],
            latent: 3,
            act: Activation::Tanh,
            likelihood: Likelihood::GaussianLearned { shared: true },
            upper: Vec::new(),
            conv: None,
            ladder: false,
        },
        epochs: 4,
        batch: 9,
        adam: AdamConfig {
            lr: 3e-4,
            max_norm: 1.5,
            ..AdamConfig::default()
        },
        seed: u64::MAX - 3,
        beta: 0.7,
        kl_warmup: 11,
        log_every: 5,
        binarize: Binarize::Dynamic,
        objective: vae_wgpu::kernels::iwae::Objective::Iwae,
        samples: 7,
        lr_schedule: vae_wgpu::train::LrSchedule::Iwae { scale: 0.25 },
    }
}

/// A checkpoint whose values are all distinct (and include awkward floats), padding zero.
fn checkpoint() -> Checkpoint {
    let s = settings();
    let layout = ParamLayout::new(&s.model);
    let fill = |k: f32| {
        let mut flat = vec![0.0f32; layout.len];
        for t in &layout.tensors {
            for (i, v) in flat[t.offset..t.offset + t.len()].iter_mut().enumerate() {
                *v = k * (i as f32 + 0.1).sin() * 10f32.powi((i % 7) as i32 - 3);
            }
        }
        flat[layout.tensors[0].offset] = f32::MIN_POSITIVE / 4.0; // subnormal
        flat[layout.tensors[1].offset] = -0.0;
        flat
    };
    Checkpoint {
        settings: s,
        progress: Progress {
            epochs_done: 2,
            steps_into_epoch: 3,
            step: 17,
            epoch_loss_sum: 1234.5678901234567,
            epoch_count: 27.0,
            running: [1.5, 0.25, 1.25, 18.0, 2.0, 0.0],
        },
        params: fill(1.0),
        exp_avg: fill(-0.5),
        exp_avg_sq: fill(0.25).iter().map(|v| v.abs()).collect(),
    }
}

/// (name, shape, values) of every tensor in a file.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn assert_error(r: Result<Checkpoint, checkpoint::CheckpointError>, path: &Path, needle: &str) {
    let msg = r
        .expect_err("a bad checkpoint must be rejected")
        .to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(needle),
        "expected the path and `{needle}` in: {msg}"
    );
}

#[test]
fn round_trip_keeps_every_bit_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(checkpoint::FILE);
    let c = checkpoint();
    c.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.settings, c.settings);
    assert_eq!(back.progress, c.progress);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&back.params), bits(&c.params));
    assert_eq!(bits(&back.exp_avg), bits(&c.exp_avg));
    assert_eq!(bits(&back.exp_avg_sq), bits(&c.exp_avg_sq));
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn tensor_names_are_the_documented_ones() {
    let c = checkpoint();
    let bytes = c.to_bytes();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    for want in [
        "enc.0.weight",
        "enc.1.bias",
        "enc.mu.weight",
        "enc.logvar.bias",
        "dec.0.weight",
        "dec.out.bias",
        "dec.logvar",
        "optimizer.exp_avg.enc.0.weight",
        "optimizer.exp_avg_sq.dec.out.weight",
    ] {
        assert!(names.contains(&want), "no tensor {want} in {names:?}");
    }
    assert_eq!(st.tensor("enc.0.weight").unwrap().shape(), [13, 7]);
    assert_eq!(st.tensor("dec.out.weight").unwrap().shape(), [7, 13]);
}

#[test]
fn truncated_checkpoints_are_rejected_at_every_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    let bytes = checkpoint().to_bytes();
    for cut in [0, 4, 8, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert_error(Checkpoint::load(&path), &path, "truncated or corrupt");
    }
}

#[test]
fn foreign_and_damaged_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let check = |bytes: &[u8], needle: &str| {
        std::fs::write(&path, bytes).unwrap();
        assert_error(Checkpoint::load(&path), &path, needle);
    };
    check(b"this is not a checkpoint at all", "truncated or corrupt");

    let c = checkpoint();
    let layout = c.layout();
    // Rebuilds the file from (name, shape, values) triples and metadata.
    let rebuild = |edit: &dyn Fn(&mut Tensors, &mut HashMap<String, String>)| {
        let good = c.to_bytes();
        let st = safetensors::SafeTensors::deserialize(&good).unwrap();
        let mut tensors: Tensors = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let vals = bytemuck::pod_collect_to_vec::<u8, f32>(v.data());
                (n, v.shape().to_vec(), vals)
            })
            .collect();
        let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        edit(&mut tensors, &mut meta);
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, s, v)| {
                let view = TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(v));
                (n.clone(), view.unwrap())
            })
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    };

    check(
        &rebuild(&|_, m| {
            m.remove("settings");
        }),
        "not a checkpoint written by `vae train`",
    );
    check(
        &rebuild(&|_, m| {
            m.insert("format".into(), "vae-wgpu/0".into());
        }),
        "format `vae-wgpu/0`",
    );
    check(
        &rebuild(&|_, m| {
            m.insert("settings".into(), "{\"data\": 3}".into());
        }),
        "bad `settings` metadata",
    );
    check(
        &rebuild(&|t, _| t.retain(|(n, _, _)| n != "enc.mu.bias")),
        "missing tensor `enc.mu.bias`",
    );
    check(
        &rebuild(&|t, _| {
            let w = t.iter_mut().find(|(n, _, _)| n == "enc.0.weight").unwrap();
            w.1 = vec![7, 13];
        }),
        "tensor `enc.0.weight` has shape [7, 13], the model (13-7-5-3",
    );
    check(
        &rebuild(&|t, _| t.push(("enc.9.weight".into(), vec![2], vec![0.0, 1.0]))),
        "unexpected tensor `enc.9.weight`",
    );
    check(
        &rebuild(&|t, _| {
            let w = t
                .iter_mut()
                .find(|(n, _, _)| n == "optimizer.exp_avg.dec.0.bias");
            w.unwrap().2[1] = f32::NAN;
        }),
        "tensor `optimizer.exp_avg.dec.0.bias` holds NaN or Inf",
    );
    // A checkpoint of another configuration names the model it expects.
    let other = rebuild(&|_, m| {
        let mut s = settings();
        s.model.hidden = vec![8, 5];
        m.insert("settings".into(), serde_json::to_string(&s).unwrap());
    });
    check(&other, "the model (13-8-5-3");
    // Settings no model can be built from are refused before any layout is derived from them.
    let with_model = |edit: &dyn Fn(&mut TrainSettings)| {
        rebuild(&|_, m| {
            let mut s = settings();
            edit(&mut s);
            m.insert("settings".into(), serde_json::to_string(&s).unwrap());
        })
    };
    check(
        &with_model(&|s| {
            s.model.conv = Some(vae_wgpu::model::ConvStack {
                image: [13, 1, 1],
                channels: vec![4],
                kernel: 0,
                stride: 2,
            })
        }),
        "an impossible model in `settings` metadata",
    );
    check(
        &with_model(&|s| s.model.ladder = true),
        "ladder inference needs a hierarchy",
    );
    assert!(layout.tensors.len() > 5);
}

#[test]
fn atomic_write_replaces_whole_files_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    write_atomically(&path, b"first").unwrap();
    write_atomically(&path, b"second version").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second version");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A directory that does not exist: an error, nothing created.
    let missing = dir.path().join("no/such/dir/f.bin");
    assert!(write_atomically(&missing, b"x").is_err());
}
