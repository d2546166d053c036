//! Where a `--data` argument points: the shipped subset, a named installed dataset, or a path.

use std::path::{Path, PathBuf};

use super::idx::{Kind, images_from, parse, with_labels};
use super::{Dataset, Input, Result, fail, load_csv, load_idx, load_idx_pair, load_npy, png_dir};

/// Where Debian's `dataset-fashion-mnist` package installs the full Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const SHIPPED_IMAGES: &[u8] = include_bytes!("../../assets/mnist5k-images-idx3-ubyte.gz");
const SHIPPED_LABELS: &[u8] = include_bytes!("../../assets/mnist5k-labels-idx1-ubyte.gz");

/// A training set and, where the source has one, its test set.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    pub name: String,
    pub train: Dataset,
    pub test: Option<Dataset>,
    /// What each label means where the source says (a PNG folder's class subfolders: label `i`
    /// is `classes[i]`); empty otherwise.
    pub classes: Vec<String>,
}

/// The 5,000-image MNIST subset embedded in the binary (see `assets/README.md`), unsplit.
pub fn shipped_mnist5k() -> Result<Dataset> {
    let images = Path::new("assets/mnist5k-images-idx3-ubyte.gz (embedded)");
    let labels = Path::new("assets/mnist5k-labels-idx1-ubyte.gz (embedded)");
    let set = images_from(parse(
        Input::from_static(images, SHIPPED_IMAGES)?,
        Kind::Images,
    )?);
    with_labels(
        set,
        images,
        labels,
        parse(Input::from_static(labels, SHIPPED_LABELS)?, Kind::Labels)?,
    )
}

/// `--data` and, if given, `--test-data` (its test split if it has one, else all of it; the shipped
/// set then trains on all 5,000 images), checked
/// against each other before any device is opened: test items must have as many pixels as the
/// training items, and each set at most `u32::MAX` items (the trainer indexes them with `u32`).
pub fn load_sources(data: &str, test_data: Option<&str>) -> Result<DataSource> {
    let mut source = load_source(data)?;
    let mut test_path = Path::new(data);
    if let Some(spec) = test_data {
        // The shipped set holds out every 5th image only for want of a test set.
        if data == "mnist5k" {
            source.train = shipped_mnist5k()?;
        }
        let t = load_source(spec)?;
        if !source.classes.is_empty() && !t.classes.is_empty() && t.classes != source.classes {
            return fail(
                Path::new(spec),
                format!(
                    "test classes {:?} differ from the training classes {:?}: the labels would \
                     not mean the same",
                    t.classes, source.classes
                ),
            );
        }
        source.test = Some(t.test.unwrap_or(t.train));
        test_path = Path::new(spec);
    }
    for (set, path) in [
        (Some(&source.train), Path::new(data)),
        (source.test.as_ref(), test_path),
    ] {
        if let Some(set) = set
            && set.len > u32::MAX as usize
        {
            return fail(
                path,
                format!("{} items: at most {} are supported", set.len, u32::MAX),
            );
        }
    }
    if let Some(test) = &source.test
        && test.dim() != source.train.dim()
    {
        return fail(
            test_path,
            format!(
                "test items have {} pixels (shape {:?}), the training items {} (shape {:?})",
                test.dim(),
                test.item_shape,
                source.train.dim(),
                source.train.item_shape
            ),
        );
    }
    Ok(source)
}

/// Resolves `--data`: `mnist5k` (the default; every 5th image held out as test, since the file
/// is sorted by label), `fashion-mnist`, a directory holding MNIST-style `train-`/`t10k-` IDX
/// files or else PNG images (directly or in class subfolders; no test set), or a single `.npy`,
/// `.csv[.gz]` or IDX file (no test set).
pub fn load_source(spec: &str) -> Result<DataSource> {
    match spec {
        "mnist5k" => {
            let (train, test) = shipped_mnist5k()?.strided_split(5);
            Ok(DataSource {
                name: spec.into(),
                train,
                test: Some(test),
                classes: Vec::new(),
            })
        }
        "fashion-mnist" | "fashion" => fashion_mnist(),
        path => {
            let path = Path::new(path);
            if path.is_dir() {
                return load_folder(path);
            }
            if !path.exists() {
                return fail(
                    path,
                    "no such file or directory (and not a named dataset: mnist5k, fashion-mnist)",
                );
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let train = if name.ends_with(".npy") || name.ends_with(".npy.gz") {
                load_npy(path)?
            } else if name.ends_with(".csv") || name.ends_with(".csv.gz") {
                load_csv(path, true)?
            } else {
                load_idx(path)?
            };
            Ok(DataSource {
                name: name.clone(),
                train,
                test: None,
                classes: Vec::new(),
            })
        }
    }
}

/// The full Fashion-MNIST where Debian installs it, or how to get it.
fn fashion_mnist() -> Result<DataSource> {
    let dir = Path::new(FASHION_MNIST_DIR);
    load_dir(dir).map_err(|mut e| {
        // The hint only where the files are missing, not where they are there but bad.
        if e.path == dir {
            e.problem = format!(
                "{}\nFull Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` \
                 (Debian/Ubuntu) puts it in {FASHION_MNIST_DIR}, or download the four IDX files \
                 from https://github.com/zalandoresearch/fashion-mnist and pass their directory \
                 with --data",
                e.problem
            );
        }
        e
    })
}

/// The first of `stem` and `stem.gz` that exists in `dir`.
fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
}

/// The `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]` files in `dir`,
/// if both are there.
fn idx_pair(dir: &Path, prefix: &str) -> Option<(PathBuf, PathBuf)> {
    Some((
        find(dir, &format!("{prefix}-images-idx3-ubyte"))?,
        find(dir, &format!("{prefix}-labels-idx1-ubyte"))?,
    ))
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A directory given as `--data`: MNIST-style IDX files if it has the training pair, else the PNG
/// images in it (directly or in class subfolders), else an error saying what was looked for.
fn load_folder(dir: &Path) -> Result<DataSource> {
    if idx_pair(dir, "train").is_some() {
        return load_dir(dir);
    }
    let listing = png_dir::list(dir)?;
    if listing.files.is_empty() {
        return fail(
            dir,
            "no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (MNIST-style IDX \
             files) here, and no .png images, directly or in class subfolders",
        );
    }
    let folder = png_dir::decode(dir, listing)?;
    Ok(DataSource {
        name: dir_name(dir),
        train: folder.set,
        test: None,
        classes: folder.classes,
    })
}

/// A directory in MNIST's layout: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`
/// and optionally the `t10k-` pair.
fn load_dir(dir: &Path) -> Result<DataSource> {
    let pair = |prefix: &str| idx_pair(dir, prefix);
    let Some((images, labels)) = pair("train") else {
        return fail(
            dir,
            "no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] here",
        );
    };
    let train = load_idx_pair(&images, &labels)?;
    let test = pair("t10k")
        .map(|(i, l)| load_idx_pair(&i, &l))
        .transpose()?;
    Ok(DataSource {
        name: dir_name(dir),
        train,
        test,
        classes: Vec::new(),
    })
}
