//! Charts as PNG (plotters, with the bundled DejaVu Sans Mono so no system font is needed): the
//! latent space coloured by label, and the loss curves of a run.

use std::path::Path;

use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() -> Result<(), String> {
    // Registering twice is harmless (the first registration is kept).
    plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
        .map_err(|_| "the bundled font is invalid".to_string())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Padded (min, max) of `v`.
fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - pad, hi + pad)
}

/// A scatter of 2-D points coloured by label (one legend entry per label, sorted).
pub fn scatter(
    path: &Path,
    points: &[(f64, f64)],
    labels: &[u8],
    title: &str,
    axes: (&str, &str),
) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1) = range(points.iter().map(|p| p.0));
    let (y0, y1) = range(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .label_style((FAMILY, 14))
        .draw()
        .map_err(err)?;
    let mut classes: Vec<u8> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    for class in classes {
        let color = Palette99::pick(class as usize).to_rgba();
        let mine = points
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l == class)
            .map(|(p, _)| Circle::new(*p, 2, color.filled()));
        chart
            .draw_series(mine)
            .map_err(err)?
            .label(format!("{class}"))
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// One named curve: (x, y) points.
pub struct Curve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Curves sharing one pair of axes.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
}

/// Panels stacked vertically in one PNG.
pub fn line_panels(path: &Path, panels: &[Panel]) -> Result<(), String> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 340 * panels.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let all = panel.curves.iter().flat_map(|c| c.points.iter());
        let (x0, x1) = range(all.clone().map(|p| p.0));
        let (y0, y1) = range(all.map(|p| p.1));
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FAMILY, 20))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .label_style((FAMILY, 13))
            .draw()
            .map_err(err)?;
        for (i, c) in panel.curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(c.points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(c.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            // Markers too, so a curve of one point (one epoch) still shows.
            chart
                .draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 13))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// The first two principal components of `x` [n, dim] (projections, centred), by power
/// iteration with deflation on the dim × dim covariance. With dim ≤ 2 the coordinates as they
/// are.
pub fn first_two_components(x: &[f32], dim: usize) -> Vec<(f64, f64)> {
    let n = x.len() / dim;
    let row = |i: usize| &x[i * dim..(i + 1) * dim];
    if dim == 1 {
        return (0..n).map(|i| (row(i)[0] as f64, 0.0)).collect();
    }
    if dim == 2 {
        return (0..n)
            .map(|i| (row(i)[0] as f64, row(i)[1] as f64))
            .collect();
    }
    let mean: Vec<f64> = (0..dim)
        .map(|d| (0..n).map(|i| row(i)[d] as f64).sum::<f64>() / n as f64)
        .collect();
    let mut cov = vec![0.0; dim * dim];
    for i in 0..n {
        let r = row(i);
        for a in 0..dim {
            for b in 0..dim {
                cov[a * dim + b] += (r[a] as f64 - mean[a]) * (r[b] as f64 - mean[b]);
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        let mut v: Vec<f64> = (0..dim)
            .map(|d| 1.0 + (d * (c + 1)) as f64 * 0.01)
            .collect();
        for _ in 0..500 {
            let mut w: Vec<f64> = (0..dim)
                .map(|a| (0..dim).map(|b| cov[a * dim + b] * v[b]).sum())
                .collect();
            for prev in &components {
                let dot: f64 = w.iter().zip(prev).map(|(x, y)| x * y).sum();
                w.iter_mut().zip(prev).for_each(|(x, p)| *x -= dot * p);
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
            v = w.iter().map(|x| x / norm).collect();
        }
        components.push(v);
    }
    (0..n)
        .map(|i| {
            let r = row(i);
            let proj = |v: &[f64]| (0..dim).map(|d| (r[d] as f64 - mean[d]) * v[d]).sum();
            (proj(&components[0]), proj(&components[1]))
        })
        .collect()
}
