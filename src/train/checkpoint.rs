//! Checkpoints: the parameters, the optimizer's moments and the loop position in one safetensors
//! file, so `vae train --resume` continues exactly where a run stopped.
//!
//! Tensors (all f32): every parameter under its model name (`enc.0.weight` [in, out], …, see
//! [`crate::model::ParamLayout`]), and Adam's moments as `optimizer.exp_avg.<name>` and
//! `optimizer.exp_avg_sq.<name>` (PyTorch's names). The header's metadata holds `format`, the
//! training `settings` and the loop `progress`, both as JSON. Writes go to a temporary file that
//! is synced and renamed over the old checkpoint, so a crash at any moment leaves either the old
//! or the new checkpoint, never a torn one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::TrainSettings;
use crate::kernels::elbo::RUNNING_LEN;
use crate::model::ParamLayout;

/// The checkpoint's file name inside a run directory.
pub const FILE: &str = "checkpoint.safetensors";
/// The `format` metadata value this build writes and reads.
pub const FORMAT: &str = "vae-wgpu/1";
pub const EXP_AVG: &str = "optimizer.exp_avg.";
pub const EXP_AVG_SQ: &str = "optimizer.exp_avg_sq.";

/// Where the training loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Steps done in the epoch after those (0 at an epoch boundary).
    pub steps_into_epoch: u64,
    /// Optimizer steps done in all: selects ε, Adam's bias correction and the KL warm-up.
    pub step: u64,
    /// Loss sum and example count of the unfinished epoch, so its mean stays exact on resume.
    pub epoch_loss_sum: f64,
    pub epoch_count: f64,
    /// The device's running loss sums since the last logging point (see
    /// [`crate::kernels::elbo::Running`]), restored on resume so the logged losses of a resumed
    /// run equal an uninterrupted one's bit for bit.
    pub running: [f32; RUNNING_LEN],
}

/// Everything needed to continue training: settings, position, parameters, optimizer state.
/// The three vectors use the flat layout of [`ParamLayout::new`]`(&settings.model)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub settings: TrainSettings,
    pub progress: Progress,
    pub params: Vec<f32>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint {}: {problem}", path.display())]
pub struct CheckpointError {
    pub path: PathBuf,
    pub problem: String,
}

fn err(path: &Path, problem: impl Into<String>) -> CheckpointError {
    CheckpointError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

impl Checkpoint {
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(&self.settings.model)
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let layout = self.layout();
        let mut tensors: Vec<(String, TensorView)> = Vec::new();
        for (prefix, flat) in [
            ("", &self.params),
            (EXP_AVG, &self.exp_avg),
            (EXP_AVG_SQ, &self.exp_avg_sq),
        ] {
            for t in &layout.tensors {
                let data = bytemuck::cast_slice(&flat[t.offset..t.offset + t.len()]);
                let view = TensorView::new(Dtype::F32, t.shape.clone(), data)
                    .expect("a layout tensor's bytes match its shape");
                tensors.push((format!("{prefix}{}", t.name), view));
            }
        }
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            (
                "settings".to_string(),
                serde_json::to_string(&self.settings).expect("settings serialize"),
            ),
            (
                "progress".to_string(),
                serde_json::to_string(&self.progress).expect("progress serializes"),
            ),
        ]);
        safetensors::serialize(tensors, Some(meta)).expect("in-memory serialization")
    }

    /// Writes the checkpoint to `path` atomically (temporary file, fsync, rename, fsync of the
    /// directory).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomically(path, &self.to_bytes()).map_err(|e| err(path, format!("writing: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks a checkpoint: safetensors structure, metadata, every tensor's presence,
    /// dtype, shape and finiteness, and no tensor the model does not have.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            err(
                path,
                format!("not a readable safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| err(path, format!("unreadable header: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key).ok_or_else(|| {
                err(
                    path,
                    format!("no `{key}` metadata: not a checkpoint written by `vae train`"),
                )
            })
        };
        let format = field("format")?;
        if format != FORMAT {
            return Err(err(
                path,
                format!("format `{format}`, this build reads `{FORMAT}`"),
            ));
        }
        let settings: TrainSettings = serde_json::from_str(field("settings")?)
            .map_err(|e| err(path, format!("bad `settings` metadata: {e}")))?;
        let progress: Progress = serde_json::from_str(field("progress")?)
            .map_err(|e| err(path, format!("bad `progress` metadata: {e}")))?;
        settings.model.check().map_err(|e| {
            err(
                path,
                format!("an impossible model in `settings` metadata: {e}"),
            )
        })?;
        let layout = ParamLayout::new(&settings.model);
        let read = |prefix: &str| -> Result<Vec<f32>, CheckpointError> {
            let mut flat = vec![0.0f32; layout.len];
            for t in &layout.tensors {
                let name = format!("{prefix}{}", t.name);
                let view = st.tensor(&name).map_err(|_| {
                    err(
                        path,
                        format!("missing tensor `{name}` (model {})", describe(&settings)),
                    )
                })?;
                if view.dtype() != Dtype::F32 {
                    return Err(err(
                        path,
                        format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
                    ));
                }
                if view.shape() != t.shape.as_slice() {
                    return Err(err(
                        path,
                        format!(
                            "tensor `{name}` has shape {:?}, the model ({}) needs {:?}",
                            view.shape(),
                            describe(&settings),
                            t.shape
                        ),
                    ));
                }
                let dst = &mut flat[t.offset..t.offset + t.len()];
                for (d, c) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                if dst.iter().any(|v| !v.is_finite()) {
                    return Err(err(path, format!("tensor `{name}` holds NaN or Inf")));
                }
            }
            Ok(flat)
        };
        let params = read("")?;
        let exp_avg = read(EXP_AVG)?;
        let exp_avg_sq = read(EXP_AVG_SQ)?;
        let expected = 3 * layout.tensors.len();
        if st.len() != expected {
            let known: Vec<String> = layout
                .tensors
                .iter()
                .flat_map(|t| ["", EXP_AVG, EXP_AVG_SQ].map(|p| format!("{p}{}", t.name)))
                .collect();
            let extra = st
                .names()
                .into_iter()
                .find(|n| !known.iter().any(|k| k == n))
                .unwrap_or_default();
            return Err(err(
                path,
                format!("unexpected tensor `{extra}`: the model has no such parameter"),
            ));
        }
        Ok(Self {
            settings,
            progress,
            params,
            exp_avg,
            exp_avg_sq,
        })
    }
}

/// `784-400-20 relu bernoulli`, for messages.
pub fn describe(s: &TrainSettings) -> String {
    let m = &s.model;
    let ladder = if m.ladder { " ladder" } else { "" };
    format!("{}{ladder} {:?} {:?}", m.dims(), m.act, m.likelihood)
}

/// Replaces `path` by `bytes` so that a crash at any point leaves the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        remove_stale_temporaries(&dir, &format!(".{name}.tmp-"));
    }
    written
}

/// Temporary files left by writers that were killed mid-write (best effort: the run directory's
/// lock means no other writer is active).
fn remove_stale_temporaries(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
