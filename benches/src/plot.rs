//! The speedup plot: one SVG per backend, one panel per shape, speedup over the FP16 and W8A8 peers
//! against M (log scale), one line per W4A8 granularity and peer.

use std::path::Path;

use plotters::prelude::*;

use crate::model::{BackendReport, RowKind};

/// One plotted line: a label and its (M, speedup) points.
struct Series {
    label: String,
    points: Vec<(usize, f64)>,
    color: RGBColor,
    dashed: bool,
}

const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

fn series_for(b: &BackendReport, shape: &crate::shapes::Shape) -> Vec<Series> {
    let mut granularities: Vec<String> = Vec::new();
    for r in &b.rows {
        if let RowKind::W4A8 { granularity } = &r.kind
            && !granularities.contains(granularity)
        {
            granularities.push(granularity.clone());
        }
    }
    let mut out = Vec::new();
    for (i, g) in granularities.iter().enumerate() {
        let rows = || {
            b.rows
                .iter()
                .filter(move |r| &r.shape == shape && r.kind == RowKind::W4A8 { granularity: g.clone() })
        };
        let fp16: Vec<(usize, f64)> = rows().filter_map(|r| r.speedup_fp16.map(|s| (r.m, s))).collect();
        let w8a8: Vec<(usize, f64)> = rows().filter_map(|r| r.speedup_w8a8.map(|s| (r.m, s))).collect();
        let color = COLORS[i % COLORS.len()];
        if !fp16.is_empty() {
            out.push(Series { label: format!("{g} vs FP16"), points: fp16, color, dashed: false });
        }
        if !w8a8.is_empty() {
            out.push(Series { label: format!("{g} vs W8A8 (dashed)"), points: w8a8, color, dashed: true });
        }
    }
    out
}

/// Writes `path` (SVG). Returns `Ok(false)` when there is nothing to plot (no peer timed).
pub fn speedup_plot(b: &BackendReport, path: &Path) -> Result<bool, String> {
    let mut shapes: Vec<crate::shapes::Shape> = Vec::new();
    for r in &b.rows {
        if !shapes.contains(&r.shape) {
            shapes.push(r.shape.clone());
        }
    }
    let panels: Vec<_> =
        shapes.iter().map(|s| (s, series_for(b, s))).filter(|(_, v)| !v.is_empty()).collect();
    if panels.is_empty() {
        return Ok(false);
    }
    let cols = panels.len().min(4);
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (420 * cols as u32, 320 * rows as u32 + 40);
    let err = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let title = format!("W4A8 speedup vs M — {} on {}", b.device.backend, b.device.name);
    let root = root.titled(&title, ("sans-serif", 20)).map_err(|e| err(&e))?;
    let areas = root.split_evenly((rows, cols));
    for ((shape, series), area) in panels.iter().zip(areas.iter()) {
        let all = series.iter().flat_map(|s| s.points.iter());
        let (m_lo, m_hi) = all.clone().fold((usize::MAX, 1), |(lo, hi), &(m, _)| (lo.min(m), hi.max(m)));
        let y_hi = all.fold(1.0f64, |a, &(_, s)| a.max(s)) * 1.15;
        // x = log2(M): decode (M = 1) and prefill (M = 4096) on one readable axis.
        let x_range = (m_lo.max(1) as f64).log2() - 0.3..(m_hi.max(2) as f64).log2() + 0.3;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{shape} ({})", shape.layer), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(x_range, 0.0..y_hi)
            .map_err(|e| err(&e))?;
        // One tick per power of two; only integer log2 positions get a label.
        let ticks = ((m_hi.max(2) as f64).log2().ceil() - (m_lo.max(1) as f64).log2().floor()) as usize + 1;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(ticks)
            .x_desc("M (tokens)")
            .y_desc("speedup ×")
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-6 {
                    format!("{}", 2f64.powf(v.round()) as u64)
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| err(&e))?;
        // The break-even line.
        let x0 = (m_lo.max(1) as f64).log2() - 0.3;
        let x1 = (m_hi.max(2) as f64).log2() + 0.3;
        chart
            .draw_series(LineSeries::new(vec![(x0, 1.0), (x1, 1.0)], BLACK.mix(0.4)))
            .map_err(|e| err(&e))?;
        for s in series {
            let pts: Vec<(f64, f64)> = s.points.iter().map(|&(m, v)| ((m as f64).log2(), v)).collect();
            let style = s.color.stroke_width(2);
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
            } else {
                chart.draw_series(LineSeries::new(pts.clone(), style))
            }
            .map_err(|e| err(&e))?;
            let color = s.color;
            drawn
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, s.color.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}
