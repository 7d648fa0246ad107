//! Minimal SVG charts (no dependencies): line charts for loss curves, heatmaps
//! for confusion matrices.

use std::fmt::Write;

/// One line of a chart.
pub struct Series<'a> {
    pub label: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// `(x, y)` points in x order.
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 58.0;

/// Renders series on shared axes as an SVG document; `None` when no point is finite.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Option<String> {
    let pts = || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x0, x1) = bounds(pts().map(|p| p.0))?;
    let (y0, y1) = bounds(pts().map(|p| p.1))?;
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (y, yv) = (sy(y0 + f * (y1 - y0)), y0 + f * (y1 - y0));
        let (x, xv) = (sx(x0 + f * (x1 - x0)), x0 + f * (x1 - x0));
        let _ = writeln!(svg, "<line x1=\"{PAD}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>", W - PAD);
        let _ = writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", PAD - 4.0, y + 4.0, tick(yv));
        let _ = writeln!(svg, "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", H - PAD + 16.0, tick(xv));
    }
    let _ = writeln!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", W / 2.0, H - 8.0, escape(x_label));
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        H / 2.0,
        H / 2.0,
        escape(y_label)
    );
    // Legend at the top right, wide enough for the longest label (~7 px a character).
    let longest = series.iter().map(|s| s.label.chars().count()).max().unwrap_or(0) as f64;
    let legend_x = W - PAD - (7.0 * longest + 30.0).max(120.0);
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> =
            s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(svg, "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>", s.color, path.join(" "));
        let ly = PAD + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/>",
            legend_x,
            legend_x + 20.0,
            s.color
        );
        let _ = writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>", legend_x + 25.0, ly + 4.0, escape(s.label));
    }
    svg.push_str("</svg>\n");
    Some(svg)
}

/// Points as dots on one chart (a metric against a parameter); `None` when
/// no point is finite. The best point (`best`, an index into `points`) is
/// drawn larger, in red.
pub fn scatter_chart(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)], best: Option<usize>) -> Option<String> {
    let finite = || points.iter().filter(|(x, y)| x.is_finite() && y.is_finite());
    let (x0, x1) = bounds(finite().map(|p| p.0))?;
    let (y0, y1) = bounds(finite().map(|p| p.1))?;
    // The frame and ticks of a line chart, without lines.
    let frame = line_chart(title, x_label, y_label, &[Series { label: "", color: "none", points: vec![(x0, y0), (x1, y1)] }])?;
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD - (y - y0) / (y1 - y0) * (H - 2.0 * PAD);
    let mut dots = String::new();
    for (i, &(x, y)) in points.iter().enumerate().filter(|(_, (x, y))| x.is_finite() && y.is_finite()) {
        let (r, color) = if Some(i) == best { (6.0, "#d62728") } else { (4.0, "#1f77b4") };
        let _ = writeln!(dots, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{color}\" fill-opacity=\"0.8\"/>", sx(x), sy(y));
    }
    Some(frame.replace("</svg>\n", &(dots + "</svg>\n")))
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return None;
    }
    Some(if hi > lo { (lo, hi) } else { (lo - 0.5, hi + 0.5) })
}

fn tick(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A confusion matrix as a heatmap: rows are true classes, columns predicted
/// ones, each cell shaded by its share of the row (so recall reads off the
/// diagonal); counts are written in cells when there are few classes.
pub fn confusion_heatmap(title: &str, labels: &[String], counts: &[Vec<u64>]) -> String {
    let n = labels.len().max(1) as f64;
    let cell = (720.0 / n).clamp(6.0, 40.0);
    let left = 12.0 + 6.5 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).min(40) as f64;
    let top = 40.0 + left; // room for rotated column labels
    let side = cell * n;
    let font = (cell * 0.8).clamp(5.0, 12.0);
    let (w, h) = (left + side + 20.0, top + side + 40.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"{font:.1}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        let y = top + i as f64 * cell;
        let label: String = labels.get(i).map_or(String::new(), |l| l.chars().take(40).collect());
        let _ = writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", left - 4.0, y + cell * 0.75, escape(&label));
        for (j, &c) in row.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let share = c as f64 / total.max(1) as f64;
            // White → dark blue on the diagonal, white → red off it.
            let (r, g, b) = if i == j { (1.0 - share, 1.0 - 0.6 * share, 1.0 - 0.2 * share) } else { (1.0, 1.0 - share, 1.0 - share) };
            let rgb = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            let x = left + j as f64 * cell;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"#{:02x}{:02x}{:02x}\"><title>{} → {}: {c}</title></rect>",
                rgb(r),
                rgb(g),
                rgb(b),
                escape(labels.get(i).map_or("", String::as_str)),
                escape(labels.get(j).map_or("", String::as_str)),
            );
            if cell >= 18.0 {
                let _ = writeln!(svg, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{c}</text>", x + cell / 2.0, y + cell * 0.7);
            }
        }
    }
    for (j, l) in labels.iter().enumerate() {
        let x = left + j as f64 * cell + cell * 0.75;
        let label: String = l.chars().take(40).collect();
        let _ = writeln!(
            svg,
            "<text x=\"{x:.1}\" y=\"{:.1}\" transform=\"rotate(-90 {x:.1} {:.1})\">{}</text>",
            top - 4.0,
            top - 4.0,
            escape(&label)
        );
    }
    let _ = writeln!(svg, "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{side:.1}\" height=\"{side:.1}\" fill=\"none\" stroke=\"#888\"/>");
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">predicted class (columns) · true class (rows)</text>",
        left + side / 2.0,
        top + side + 24.0
    );
    svg.push_str("</svg>\n");
    svg
}
