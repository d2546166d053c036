//! Datasets as people have them: IDX (MNIST-style, raw or gzip), CSV, NumPy `.npy` and folders of
//! PNG images.
//!
//! Every loader checks what a file claims against what it holds before trusting it, and every
//! failure names the file and the problem.

mod csv;
mod idx;
mod npy;
mod png_dir;
mod source;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use csv::load_csv;
pub use idx::{load_idx, load_idx_pair};
pub use npy::load_npy;
pub use png_dir::{PngFolder, load_png_dir};
pub use source::{DataSource, FASHION_MNIST_DIR, load_source, load_sources, shipped_mnist5k};

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

/// The largest decompressed data file the loaders accept (16 GiB).
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A data file opened for reading, transparently gunzipped when it starts with the gzip magic.
///
/// Nothing is read or allocated on a header's word: [`Input::read_body`] checks a claimed size
/// against the file's length (plain files) or reads incrementally and stops once the data exceed
/// the claim (gzip), and no gzip stream may decompress to more than [`MAX_FILE_BYTES`].
pub(crate) struct Input {
    pub path: PathBuf,
    reader: Box<dyn BufRead>,
    /// The length of a plain regular file; `None` for gzip (known only by decompressing) and
    /// for pipes and other special files.
    len: Option<u64>,
    gz: bool,
    /// Bytes delivered so far.
    pos: u64,
}

/// What a file held where a header promised an exact size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    Only(u64),
    More(u64),
    MoreThan(u64),
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Only(n) => write!(f, "the file holds only {n}"),
            Held::More(n) => write!(f, "the file holds {n}"),
            Held::MoreThan(n) => write!(f, "the file holds more than {n}"),
        }
    }
}

impl Input {
    pub fn open(path: &Path) -> Result<Input> {
        let file =
            std::fs::File::open(path).or_else(|e| fail(path, format!("cannot read: {e}")))?;
        let meta = file
            .metadata()
            .or_else(|e| fail(path, format!("cannot read: {e}")))?;
        if meta.is_dir() {
            return fail(path, "cannot read: is a directory");
        }
        let len = meta.is_file().then_some(meta.len());
        Self::new(path, file, len)
    }

    /// Bytes embedded in the binary; `path` names them in errors.
    pub fn from_static(path: &Path, bytes: &'static [u8]) -> Result<Input> {
        Self::new(path, bytes, Some(bytes.len() as u64))
    }

    fn new(path: &Path, mut inner: impl Read + 'static, len: Option<u64>) -> Result<Input> {
        let mut magic = Vec::with_capacity(2);
        (&mut inner)
            .take(2)
            .read_to_end(&mut magic)
            .or_else(|e| fail(path, format!("cannot read: {e}")))?;
        let gz = magic == GZIP_MAGIC;
        let inner = std::io::Cursor::new(magic).chain(inner);
        let reader: Box<dyn BufRead> = if gz {
            let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(inner));
            Box::new(BufReader::new(Capped {
                inner: decoder,
                left: MAX_FILE_BYTES,
            }))
        } else {
            Box::new(BufReader::new(inner))
        };
        Ok(Input {
            path: path.to_path_buf(),
            reader,
            len: if gz { None } else { len },
            gz,
            pos: 0,
        })
    }

    /// An error naming this file.
    pub fn fail<T>(&self, problem: impl Into<String>) -> Result<T> {
        fail(&self.path, problem)
    }

    fn io_error<T>(&self, e: std::io::Error) -> Result<T> {
        if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
            return self.fail(format!(
                "decompresses to more than {MAX_FILE_BYTES} bytes (the limit for a data file)"
            ));
        }
        use std::io::ErrorKind::{InvalidData, InvalidInput, UnexpectedEof};
        if self.gz && matches!(e.kind(), InvalidData | InvalidInput | UnexpectedEof) {
            self.fail(format!("corrupt gzip data: {e}"))
        } else {
            self.fail(format!("cannot read: {e}"))
        }
    }

    /// Bytes delivered so far (after decompression).
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Fills as much of `buf` as the file holds; returns how many bytes that was.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    /// The next line without its `\n` (the final line may lack one), or `None` at the end.
    pub fn read_line(&mut self, line: &mut Vec<u8>) -> Result<Option<()>> {
        line.clear();
        match self.reader.read_until(b'\n', line) {
            Ok(0) => Ok(None),
            Ok(n) => {
                self.pos += n as u64;
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                Ok(Some(()))
            }
            Err(e) => self.io_error(e),
        }
    }

    /// The rest of the file, which a header says is exactly `expected` bytes: those bytes, or what
    /// the file held instead. A plain file's length is checked before anything is read or
    /// allocated; a gzip stream is read incrementally and only up to one byte past the claim.
    pub fn read_body(&mut self, expected: u64) -> Result<std::result::Result<Vec<u8>, Held>> {
        if let Some(len) = self.len {
            let left = len.saturating_sub(self.pos);
            if left < expected {
                return Ok(Err(Held::Only(left)));
            }
            if left > expected {
                return Ok(Err(Held::More(left)));
            }
        }
        let Ok(cap) = usize::try_from(expected.min(MAX_FILE_BYTES)) else {
            return self.fail(format!(
                "{expected} bytes of data do not fit this machine's memory"
            ));
        };
        let mut data = Vec::new();
        // A plain file holds exactly `expected` bytes (checked above): reserve them up front. A
        // gzip stream grows the vector as data actually arrive.
        if self.len.is_some() && data.try_reserve_exact(cap).is_err() {
            return self.fail(format!("cannot allocate {expected} bytes for the data"));
        }
        let limit = expected.saturating_add(1);
        match (&mut self.reader).take(limit).read_to_end(&mut data) {
            Ok(n) => self.pos += n as u64,
            Err(e) => return self.io_error(e),
        }
        let got = data.len() as u64;
        Ok(match got.cmp(&expected) {
            std::cmp::Ordering::Equal => Ok(data),
            std::cmp::Ordering::Less => Err(Held::Only(got)),
            std::cmp::Ordering::Greater => Err(if self.len.is_some() {
                Held::More(got)
            } else {
                Held::MoreThan(expected)
            }),
        })
    }
}

/// The error a gzip stream gives once it decompresses past [`MAX_FILE_BYTES`].
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "decompressed data exceed {MAX_FILE_BYTES} bytes")
    }
}

impl std::error::Error for TooLarge {}

/// A reader that fails (rather than ends) once more than `left` bytes have come through: a
/// gzip bomb stops at the limit instead of filling memory.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // Ask for one byte more than allowed, so that reaching the limit exactly is not an error.
        let want = (buf.len() as u64).min(self.left.saturating_add(1)) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(TooLarge));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Checks pixels are finite and in [0, 1]; `dim` pixels per item, for the error's position.
pub(crate) fn check_unit_range(path: &Path, v: &[f32], dim: usize) -> Result<()> {
    let at = |i: usize| format!("item {}, pixel {}", i / dim.max(1), i % dim.max(1));
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return fail(path, format!("{}: value {x} is not finite", at(i)));
    }
    if let Some((i, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !(0.0..=1.0).contains(*x))
    {
        return fail(
            path,
            format!(
                "{}: value {x} is outside [0, 1] (float pixels must be scaled to [0, 1]; store 0–255 data as uint8)",
                at(i)
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decompression cap, at a size a test can reach: reaching it is fine, passing it fails.
    #[test]
    fn capped_reader_fails_past_its_limit() {
        let data = [7u8; 10];
        let mut out = Vec::new();
        let mut at_limit = BufReader::new(Capped {
            inner: &data[..],
            left: 10,
        });
        assert_eq!(at_limit.read_to_end(&mut out).unwrap(), 10);
        let mut past = BufReader::new(Capped {
            inner: &data[..],
            left: 9,
        });
        let err = past.read_to_end(&mut out).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<TooLarge>()), "{err}");
    }
}
