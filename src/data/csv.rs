//! CSV: one row per item, pixel values then (optionally) an integer label in the last column.

use std::path::Path;

use super::{Dataset, Input, Pixels, Result};

/// Loads `path` (plain or gzip), reading it a line at a time. `label_column`: the last column is
/// a class label. Values that are all integers, some above 1, are bytes and must lie in 0..=255;
/// otherwise they must lie in [0, 1]. A first row none of whose cells is a number is taken as a
/// header.
pub fn load_csv(path: &Path, label_column: bool) -> Result<Dataset> {
    let mut input = Input::open(path)?;
    let mut values: Vec<f32> = Vec::new();
    let mut labels: Vec<u8> = Vec::new();
    // The line each row came from, for range errors found after the whole file is read.
    let mut row_lines: Vec<usize> = Vec::new();
    let mut width: Option<usize> = None;
    let mut buf = Vec::new();
    let mut line_no = 0;
    while input.read_line(&mut buf)?.is_some() {
        line_no += 1;
        let Ok(mut line) = std::str::from_utf8(&buf) else {
            return input.fail(format!("line {line_no} is not UTF-8 text"));
        };
        if line_no == 1 {
            line = line.strip_prefix('\u{feff}').unwrap_or(line); // a byte-order mark
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Vec<Option<f32>> = cells.iter().map(|c| c.parse::<f32>().ok()).collect();
        if line_no == 1 && parsed.iter().all(Option::is_none) {
            continue; // header
        }
        let mut row = Vec::with_capacity(cells.len());
        for (col, (cell, value)) in cells.iter().zip(&parsed).enumerate() {
            let at = format!("line {line_no}, column {}", col + 1);
            match value {
                None if line_no == 1 => {
                    return input.fail(format!(
                        "{at}: `{cell}` is not a number (a header row must have no numeric cells)"
                    ));
                }
                None => return input.fail(format!("{at}: `{cell}` is not a number")),
                Some(v) if !v.is_finite() => {
                    return input.fail(format!("{at}: `{cell}` is not finite"));
                }
                Some(v) => row.push(*v),
            }
        }
        match width {
            None if label_column && row.len() < 2 => {
                return input.fail(format!(
                    "line {line_no} has 1 column: pixels and a label column need at least 2"
                ));
            }
            None => width = Some(row.len()),
            Some(w) if w != row.len() => {
                return input.fail(format!(
                    "line {line_no} has {} columns, earlier rows have {w}",
                    row.len()
                ));
            }
            _ => {}
        }
        let pixels = if label_column {
            let label = row[row.len() - 1];
            if !((0.0..=255.0).contains(&label) && label.fract() == 0.0) {
                return input.fail(format!(
                    "line {line_no}: label `{}` is not an integer class in 0..=255",
                    cells[cells.len() - 1]
                ));
            }
            labels.push(label as u8);
            &row[..row.len() - 1]
        } else {
            &row[..]
        };
        values.extend_from_slice(pixels);
        row_lines.push(line_no);
    }
    let Some(width) = width else {
        return input.fail("empty dataset: no data rows");
    };
    let dim = width - usize::from(label_column);
    let len = row_lines.len();
    // Integers with some above 1 are bytes (0–255); anything else must be floats in [0, 1].
    let integers = values.iter().all(|v| v.fract() == 0.0);
    let is_bytes = integers && values.iter().any(|&v| v > 1.0);
    let (range, bad, why) = if is_bytes {
        (0.0..=255.0, "0–255", "integer data are read as bytes")
    } else if integers {
        (
            0.0..=1.0,
            "[0, 1]",
            "integer data with none above 1 are read as [0, 1] floats",
        )
    } else {
        (
            0.0..=1.0,
            "[0, 1]",
            "data that are not all integers are read as [0, 1] floats",
        )
    };
    if let Some(i) = values.iter().position(|v| !range.contains(v)) {
        return input.fail(format!(
            "line {}, column {}: value {} is outside {bad} ({why})",
            row_lines[i / dim],
            i % dim + 1,
            values[i]
        ));
    }
    let pixels = if is_bytes {
        Pixels::U8(values.iter().map(|&v| v as u8).collect())
    } else {
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
