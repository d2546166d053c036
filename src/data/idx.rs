//! IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST): big-endian header, then unsigned bytes.

use std::path::Path;

use super::{Dataset, Input, Pixels, Result, fail};

/// What an IDX file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// items × rows × cols (or items × features, or items × rows × cols × channels)
    Images,
    /// one byte per item
    Labels,
}

/// One IDX file of unsigned bytes: (dims, data). The header is checked (magic, element type,
/// rank for `kind`, sizes) before the body is read, and the body must be exactly what it claims.
pub(crate) fn parse(mut input: Input, kind: Kind) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut head = [0u8; 4];
    let got = input.fill(&mut head)?;
    if got < 4 {
        return input.fail(format!(
            "truncated header: {got} bytes, an IDX header has at least 8"
        ));
    }
    if head[0] != 0 || head[1] != 0 {
        return input.fail(format!(
            "not an IDX file: magic number {:02x}{:02x}{:02x}{:02x}",
            head[0], head[1], head[2], head[3]
        ));
    }
    let (dtype, ndim) = (head[2], head[3] as usize);
    if dtype != 0x08 {
        return input.fail(format!(
            "unsupported IDX element type 0x{dtype:02x}: only unsigned bytes (0x08) are supported"
        ));
    }
    if !(1..=4).contains(&ndim) {
        return input.fail(format!(
            "IDX header claims {ndim} dimensions; expected 1 to 4"
        ));
    }
    let header = 4 + 4 * ndim;
    let mut raw = [0u8; 16];
    let got = input.fill(&mut raw[..4 * ndim])?;
    if got < 4 * ndim {
        return input.fail(format!(
            "truncated header: {} bytes, {ndim} dimensions need {header}",
            4 + got
        ));
    }
    let dims: Vec<usize> = raw[..4 * ndim]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    match kind {
        Kind::Images if ndim < 2 => {
            return input.fail(format!(
                "expected images (items × rows × cols), found shape {dims:?}: a label file?"
            ));
        }
        Kind::Labels if ndim != 1 => {
            return input.fail(format!(
                "expected labels (1 dimension), found shape {dims:?}"
            ));
        }
        _ => {}
    }
    if dims[0] == 0 {
        return input.fail("empty dataset: the header claims 0 items");
    }
    if dims[1..].contains(&0) {
        return input.fail(format!(
            "header claims items of shape {:?}: 0 pixels per item",
            &dims[1..]
        ));
    }
    let Some(claimed) = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
    else {
        return input.fail(format!(
            "header claims {dims:?}: more than 2^64 bytes of data"
        ));
    };
    match input.read_body(claimed)? {
        Ok(data) => Ok((dims, data)),
        Err(held) => input.fail(format!(
            "header claims {dims:?} = {claimed} bytes of data, but {held}"
        )),
    }
}

/// An IDX image file (items × rows × cols), without labels.
pub fn load_idx(path: &Path) -> Result<Dataset> {
    Ok(images_from(parse(Input::open(path)?, Kind::Images)?))
}

pub(crate) fn images_from((dims, data): (Vec<usize>, Vec<u8>)) -> Dataset {
    Dataset {
        pixels: Pixels::U8(data),
        labels: None,
        len: dims[0],
        item_shape: dims[1..].to_vec(),
    }
}

/// Images plus the matching label file; counts must agree.
pub fn load_idx_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    with_labels(
        load_idx(images)?,
        images,
        labels,
        parse(Input::open(labels)?, Kind::Labels)?,
    )
}

pub(crate) fn with_labels(
    mut set: Dataset,
    images: &Path,
    labels: &Path,
    (dims, data): (Vec<usize>, Vec<u8>),
) -> Result<Dataset> {
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
