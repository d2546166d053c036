//! IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST): big-endian header, then unsigned bytes.

use std::path::Path;

use super::{Dataset, MAX_FILE_BYTES, Pixels, Result, fail, read_maybe_gz};

/// One IDX file of unsigned bytes: (dims, data).
fn parse(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_bytes(path, read_maybe_gz(path, MAX_FILE_BYTES)?)
}

/// Parses IDX bytes already in memory; `path` names them in errors.
pub(crate) fn parse_bytes(path: &Path, bytes: Vec<u8>) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 {
        return fail(
            path,
            format!(
                "truncated header: {} bytes, an IDX header has at least 8",
                bytes.len()
            ),
        );
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return fail(
            path,
            format!(
                "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x}",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        );
    }
    let (dtype, ndim) = (bytes[2], bytes[3] as usize);
    if dtype != 0x08 {
        return fail(
            path,
            format!(
                "unsupported IDX element type 0x{dtype:02x}: only unsigned bytes (0x08) are supported"
            ),
        );
    }
    if !(1..=4).contains(&ndim) {
        return fail(
            path,
            format!("IDX header claims {ndim} dimensions; expected 1 to 4"),
        );
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return fail(
            path,
            format!(
                "truncated header: {} bytes, {ndim} dimensions need {header}",
                bytes.len()
            ),
        );
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let claimed = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .unwrap_or(u64::MAX);
    let held = (bytes.len() - header) as u64;
    if claimed != held {
        let what = if claimed > held {
            "the file holds only"
        } else {
            "the file holds"
        };
        return fail(
            path,
            format!("header claims {dims:?} = {claimed} bytes of data, but {what} {held}"),
        );
    }
    if dims[0] == 0 {
        return fail(path, "empty dataset: the header claims 0 items");
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// An IDX image file (items × rows × cols), without labels.
pub fn load_idx(path: &Path) -> Result<Dataset> {
    images_from(path, parse(path)?)
}

pub(crate) fn images_from(path: &Path, (dims, data): (Vec<usize>, Vec<u8>)) -> Result<Dataset> {
    if dims.len() < 2 {
        return fail(
            path,
            format!("expected images (3 dimensions), found shape {dims:?}"),
        );
    }
    Ok(Dataset {
        pixels: Pixels::U8(data),
        labels: None,
        len: dims[0],
        item_shape: dims[1..].to_vec(),
    })
}

/// Images plus the matching label file; counts must agree.
pub fn load_idx_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    with_labels(load_idx(images)?, images, labels, parse(labels)?)
}

pub(crate) fn with_labels(
    mut set: Dataset,
    images: &Path,
    labels: &Path,
    (dims, data): (Vec<usize>, Vec<u8>),
) -> Result<Dataset> {
    if dims.len() != 1 {
        return fail(
            labels,
            format!("expected labels (1 dimension), found shape {dims:?}"),
        );
    }
    if dims[0] != set.len {
        return fail(
            labels,
            format!(
                "{} labels for {} images in {}",
                dims[0],
                set.len,
                images.display()
            ),
        );
    }
    set.labels = Some(data);
    Ok(set)
}
