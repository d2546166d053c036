//! Datasets as people have them: IDX (MNIST-style, raw or gzip), CSV and NumPy `.npy`.
//!
//! Every loader checks what a file claims against what it holds before trusting it, and every
//! failure names the file and the problem.

mod csv;
mod idx;
mod npy;
mod source;

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use csv::load_csv;
pub use idx::{load_idx, load_idx_pair};
pub use npy::load_npy;
pub use source::{DataSource, FASHION_MNIST_DIR, load_source, shipped_mnist5k};

#[derive(Debug, Error)]
#[error("{}: {problem}", path.display())]
pub struct DataError {
    pub path: PathBuf,
    pub problem: String,
}

pub type Result<T> = std::result::Result<T, DataError>;

pub(crate) fn fail<T>(path: &Path, problem: impl Into<String>) -> Result<T> {
    Err(DataError {
        path: path.to_path_buf(),
        problem: problem.into(),
    })
}

/// Pixel storage: bytes stay bytes (4× smaller on the device); floats must already be in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

/// `len` items of `item_shape` pixels each, with optional labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub pixels: Pixels,
    pub labels: Option<Vec<u8>>,
    pub len: usize,
    pub item_shape: Vec<usize>,
}

impl Dataset {
    /// Pixels per item.
    pub fn dim(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// All pixels scaled to [0, 1] as f32.
    pub fn to_unit_f32(&self) -> Vec<f32> {
        match &self.pixels {
            Pixels::U8(v) => v.iter().map(|&b| b as f32 / 255.0).collect(),
            Pixels::F32(v) => v.clone(),
        }
    }

    /// The items at `indices`, in that order (e.g. a stratified split).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let d = self.dim();
        let pixels = match &self.pixels {
            Pixels::U8(v) => Pixels::U8(
                indices
                    .iter()
                    .flat_map(|&i| v[i * d..(i + 1) * d].iter().copied())
                    .collect(),
            ),
            Pixels::F32(v) => Pixels::F32(
                indices
                    .iter()
                    .flat_map(|&i| v[i * d..(i + 1) * d].iter().copied())
                    .collect(),
            ),
        };
        Dataset {
            pixels,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            len: indices.len(),
            item_shape: self.item_shape.clone(),
        }
    }

    /// Every `every`-th item as test, the rest as train: stratified for files sorted by label.
    pub fn strided_split(&self, every: usize) -> (Dataset, Dataset) {
        let (test, train): (Vec<usize>, Vec<usize>) =
            (0..self.len).partition(|i| i % every == every - 1);
        (self.select(&train), self.select(&test))
    }
}

/// Whole file contents, transparently gunzipped when it starts with the gzip magic. `limit`
/// bounds the decompressed size so a corrupt or hostile file cannot exhaust memory.
pub(crate) fn read_maybe_gz(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).or_else(|e| fail(path, format!("cannot read: {e}")))?;
    gunzip_if_gz(path, raw, limit)
}

/// `raw` itself, or its decompression when it starts with the gzip magic (`path` names it in errors).
pub(crate) fn gunzip_if_gz(path: &Path, raw: Vec<u8>, limit: u64) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit + 1);
    decoder
        .read_to_end(&mut out)
        .or_else(|e| fail(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > limit {
        return fail(path, format!("decompresses to more than {limit} bytes"));
    }
    Ok(out)
}

/// The largest decompressed data file the loaders accept (16 GiB).
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 30;

/// Checks pixels are finite and in [0, 1].
pub(crate) fn check_unit_range(path: &Path, v: &[f32]) -> Result<()> {
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return fail(path, format!("value {x} at element {i} is not finite"));
    }
    if let Some((i, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !(0.0..=1.0).contains(*x))
    {
        return fail(
            path,
            format!(
                "value {x} at element {i} is outside [0, 1] (and the data are not 0–255 bytes)"
            ),
        );
    }
    Ok(())
}
