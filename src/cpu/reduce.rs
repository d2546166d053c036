//! Column sums and (squared) sums, in f64.

pub fn column_sums(rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for r in 0..rows {
        for (c, o) in out.iter_mut().enumerate() {
            *o += x[r * cols + c];
        }
    }
    out
}

pub fn sum(x: &[f64]) -> f64 {
    x.iter().sum()
}

pub fn sum_of_squares(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}
