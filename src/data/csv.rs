//! CSV: one row per item, pixel values then (optionally) an integer label in the last column.

use std::path::Path;

use super::{Dataset, MAX_FILE_BYTES, Pixels, Result, check_unit_range, fail, read_maybe_gz};

/// Loads `path` (plain or gzip). `label_column`: the last column is a class label. Values that
/// are all integers in 0..=255 are kept as bytes; otherwise they must lie in [0, 1]. A first
/// row that does not parse as numbers is taken as a header.
pub fn load_csv(path: &Path, label_column: bool) -> Result<Dataset> {
    let bytes = read_maybe_gz(path, MAX_FILE_BYTES)?;
    let text =
        std::str::from_utf8(&bytes).or_else(|e| fail(path, format!("not UTF-8 text: {e}")))?;
    let mut values: Vec<f32> = Vec::new();
    let mut labels: Vec<u8> = Vec::new();
    let mut width: Option<usize> = None;
    for (line_no, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: std::result::Result<Vec<f32>, _> =
            cells.iter().map(|c| c.parse::<f32>()).collect();
        let row = match parsed {
            Ok(r) => r,
            Err(_) if line_no == 1 => continue, // header
            Err(_) => {
                let (col, cell) = cells
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.parse::<f32>().is_err())
                    .unwrap();
                return fail(
                    path,
                    format!(
                        "line {line_no}, column {}: `{cell}` is not a number",
                        col + 1
                    ),
                );
            }
        };
        match width {
            None => width = Some(row.len()),
            Some(w) if w != row.len() => {
                return fail(
                    path,
                    format!(
                        "line {line_no} has {} columns, earlier rows have {w}",
                        row.len()
                    ),
                );
            }
            _ => {}
        }
        let pixels = if label_column {
            let label = *row.last().unwrap();
            if !((0.0..=255.0).contains(&label) && label.fract() == 0.0) || row.len() < 2 {
                return fail(
                    path,
                    format!("line {line_no}: label `{label}` is not an integer class in 0..=255"),
                );
            }
            labels.push(label as u8);
            &row[..row.len() - 1]
        } else {
            &row[..]
        };
        values.extend_from_slice(pixels);
    }
    let Some(width) = width else {
        return fail(path, "empty dataset: no data rows");
    };
    let dim = width - usize::from(label_column);
    let len = values.len() / dim.max(1);
    let is_bytes = values
        .iter()
        .all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v))
        && values.iter().any(|&v| v > 1.0);
    let pixels = if is_bytes {
        Pixels::U8(values.iter().map(|&v| v as u8).collect())
    } else {
        check_unit_range(path, &values)?;
        Pixels::F32(values)
    };
    let side = (dim as f64).sqrt() as usize;
    let item_shape = if side * side == dim {
        vec![side, side]
    } else {
        vec![dim]
    };
    Ok(Dataset {
        pixels,
        labels: label_column.then_some(labels),
        len,
        item_shape,
    })
}
