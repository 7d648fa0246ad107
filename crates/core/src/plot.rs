//! Minimal SVG line charts (no dependencies), for loss curves in reports.

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
