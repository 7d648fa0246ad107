//! The report card of a run: one self-contained HTML page (`OUT/report.html`)
//! with the run's stages, footprint and final metrics, links to every
//! artifact, and each stage's own report rendered from Markdown with its
//! pictures (SVG) inlined — viewable offline, no script, no external resource
//! (a Content-Security-Policy forbids both).
//!
//! Stage reports are Markdown written by forja; raw HTML in them is kept only
//! for the attribution highlights (`<p class="attribution">`,
//! `<span class="attr" …>`), whose text is escaped when they are made. Any
//! other HTML is shown as text, so text from data or models never becomes markup.

use crate::pipeline::Plan;
use anyhow::Result;
use forja_core::manifest::{RunManifest, StageStatus};
use forja_meter::{fmt_amount, Footprint};
use std::fmt::Write;
use std::path::Path;

/// Content-Security-Policy of the page.
pub const CSP: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:.92em}\
th{background:#f3f3f3}section{margin-bottom:2.2em}section.stage{border-top:2px solid #888;padding-top:.5em}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}code{font-size:.92em}svg{max-width:100%;height:auto}\
p.attribution{line-height:1.9}tr.total td{font-weight:bold}.note{color:#555;font-size:.9em}";

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    forja_render::html_escape(s)
}

/// Whether an HTML fragment holds only the tags forja's attribution
/// highlights use.
fn allowed_html(html: &str) -> bool {
    html.match_indices('<').all(|(i, _)| {
        let Some(end) = html[i..].find('>') else { return false };
        allowed_tag(&html[i..=i + end])
    })
}

/// One tag of the attribution markup, exactly as `forja_eval::attribution::render_html`
/// writes it: a score in `title`, a colour in `style`, nothing else.
fn allowed_tag(tag: &str) -> bool {
    if ["<p class=\"attribution\">", "</p>", "</span>"].contains(&tag) {
        return true;
    }
    let Some(rest) = tag.strip_prefix("<span class=\"attr\" title=\"") else { return false };
    let Some((title, rest)) = rest.split_once("\" style=\"") else { return false };
    let Some(style) = rest.strip_suffix("\">") else { return false };
    title.chars().all(|c| c.is_ascii_digit() || "+-.e".contains(c))
        && style.chars().all(|c| c.is_ascii_alphanumeric() || " :;,.()-".contains(c))
}

/// Renders a stage's Markdown report; pictures it names (`![..](file.svg)`,
/// relative to `dir`) are inlined.
pub fn markdown_to_html(md: &str, dir: &Path) -> String {
    use pulldown_cmark::{Event, Options, Parser};
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) if !allowed_html(&h) => Event::Text(h),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    inline_images(&html, dir)
}

/// Replaces each `<img src="F" …>` by the SVG file F (relative to `dir`), or
/// by a note when it is missing or not an SVG.
fn inline_images(html: &str, dir: &Path) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find("<img src=\"") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "<img src=\"".len()..];
        let Some(q) = after.find('"') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let src = &after[..q];
        let end = after.find('>').map_or(after.len(), |e| e + 1);
        out.push_str(&svg_or_note(src, dir));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// An SVG file's markup (prolog dropped), or a note naming the missing file.
pub fn svg_or_note(src: &str, dir: &Path) -> String {
    let rel = Path::new(src);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return format!("<p class=\"note\">[picture {} is outside the stage folder: not inlined]</p>", esc(src));
    }
    let path = dir.join(src.replace("%20", " "));
    match std::fs::read_to_string(&path) {
        Ok(svg) if src.ends_with(".svg") => match svg.find("<svg") {
            Some(i) => format!("<figure>{}</figure>", &svg[i..]),
            None => format!("<p class=\"note\">[{} is not an SVG picture]</p>", esc(src)),
        },
        _ => format!("<p class=\"note\">[picture {} not found]</p>", esc(src)),
    }
}

/// `s` from Markdown tables' numbers: FLOPs in scientific notation.
fn flops(v: f64) -> String {
    if v > 0.0 {
        format!("{v:.3e}")
    } else {
        "-".into()
    }
}

/// Footprints of the run's stages (those with a `footprint.json`).
pub fn footprints(plan: &Plan, manifest: &RunManifest) -> Vec<(String, StageStatus, Footprint)> {
    manifest.stages.iter().filter_map(|s| Footprint::read(&plan.out_dir.join(&s.name)).map(|f| (s.name.clone(), s.status, f))).collect()
}

/// Emissions the source document cites for training large models (Stanford
/// AI Index 2025), tonnes CO2e.
pub const LARGE_MODELS_T_CO2E: [(&str, f64); 3] = [("GPT-3", 588.0), ("GPT-4", 5184.0), ("Llama 3.1 405B", 8930.0)];

/// The footprint section of the run report (Markdown).
pub fn footprint_markdown(plan: &Plan, manifest: &RunManifest) -> String {
    let rows = footprints(plan, manifest);
    let mut md =
        "\n## Footprint\n\n| stage | kind | this run | wall s | CPU s | FLOPs | energy Wh | CO2e g |\n|---|---|---|---|---|---|---|---|\n"
            .to_string();
    let (mut wall, mut cpu, mut fl, mut wh, mut co2) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut sources: Vec<&str> = Vec::new();
    for (name, status, f) in &rows {
        if !sources.contains(&f.energy_source.as_str()) {
            sources.push(&f.energy_source);
        }
        let ran = if *status == StageStatus::Ran { "ran" } else { "cached (recorded when it ran)" };
        let _ = writeln!(
            md,
            "| {name} | {} | {ran} | {:.2} | {:.2} | {} | {} | {} |",
            f.kind,
            f.wall_s,
            f.cpu_s,
            flops(f.flops),
            fmt_amount(f.energy_wh),
            fmt_amount(f.co2e_g)
        );
        (wall, cpu, fl, wh, co2) = (wall + f.wall_s, cpu + f.cpu_s, fl + f.flops, wh + f.energy_wh, co2 + f.co2e_g);
    }
    let _ = writeln!(md, "| **total** | | | {wall:.2} | {cpu:.2} | {} | {} | {} |", flops(fl), fmt_amount(wh), fmt_amount(co2));
    let cfg = &plan.footprint;
    let _ = write!(
        md,
        "\nThe total covers every stage's latest recorded run, cached ones included (what producing these outputs cost). Energy: {}; PUE {}; grid {} gCO2e/kWh (`[pipeline] footprint = {{ grid_g_per_kwh, pue, watts_per_core }}`). The CPU package only: GPU, memory, disk and network energy are not counted. FLOPs count 6 per trained parameter and token, 4 per frozen one, 2 per parameter and token scored.\n\n",
        if sources.is_empty() { "-".to_string() } else { sources.join("; ") },
        cfg.pue,
        cfg.grid_g_per_kwh
    );
    md += "For scale, the figures the source document cites (Stanford AI Index 2025) for training large models:\n\n| model | CO2e | this run as a share |\n|---|---|---|\n";
    for (model, t) in LARGE_MODELS_T_CO2E {
        let _ = writeln!(md, "| {model} | {t} t | {:.2e} |", co2 / (t * 1e6));
    }
    md
}

/// Writes `OUT/report.html` from the run's final-metrics table (Markdown, as
/// in the run report) and every stage report.
pub fn write(plan: &Plan, manifest: &RunManifest, final_metrics_md: &str) -> Result<()> {
    let out = &plan.out_dir;
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n<title>forja run {}</title>\n<style>{STYLE}</style></head><body>\n<h1>Run <code>{}</code></h1>\n<p class=\"note\">Pipeline <code>{}</code>, program <code>{}</code>, seed {}, device {}.</p>\n",
        esc(&plan.name),
        esc(&plan.name),
        esc(&plan.file.display().to_string()),
        esc(&manifest.program_version),
        plan.seed,
        esc(&plan.device)
    );
    h += "<section id=\"summary\"><h2>Stages</h2><table><tr><th>stage</th><th>kind</th><th>status</th><th>wall s</th></tr>\n";
    for s in &manifest.stages {
        let _ = writeln!(
            h,
            "<tr><td><a href=\"#stage-{}\">{}</a></td><td>{}</td><td>{:?}</td><td>{:.1}</td></tr>",
            esc(&s.name),
            esc(&s.name),
            esc(&s.kind),
            s.status,
            s.wall_s
        );
    }
    h += "</table></section>\n";
    h += &section_from_markdown("footprint", &footprint_markdown(plan, manifest), out);
    h += &section_from_markdown("metrics", final_metrics_md, out);
    h += "<section id=\"artifacts\"><h2>Artifacts</h2><ul>\n";
    for s in &manifest.stages {
        for (name, p) in &s.outputs {
            let path = Path::new(&p.path);
            let rel = path.strip_prefix(out).unwrap_or(path);
            let _ = writeln!(
                h,
                "<li>{} / {}: <a href=\"{}\">{}</a> <span class=\"note\">blake3 {}</span></li>",
                esc(&s.name),
                esc(name),
                esc(&rel.display().to_string()),
                esc(&rel.display().to_string()),
                esc(&p.blake3[..p.blake3.len().min(12)])
            );
        }
    }
    h += "</ul></section>\n";
    for s in &manifest.stages {
        let dir = out.join(&s.name);
        let report = s.outputs.get(forja_core::stage::outputs::REPORT.name).map(|rep| (rep, std::fs::read_to_string(&rep.path)));
        let body = match &report {
            Some((_, Ok(md))) => markdown_to_html(md, &dir),
            Some((rep, Err(e))) => format!("<p class=\"note\">report {} unreadable: {}</p>", esc(&rep.path), esc(&e.to_string())),
            None => "<p class=\"note\">This stage writes no report.</p>".into(),
        };
        // Pictures among the outputs that the report does not already show.
        let mut pictures = String::new();
        for p in s.outputs.values().filter(|p| p.path.ends_with(".svg")) {
            let name = Path::new(&p.path).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let shown = matches!(&report, Some((_, Ok(md))) if md.contains(&format!("]({name})")));
            if !shown {
                pictures += &svg_or_note(&name, &dir);
            }
        }
        let _ = writeln!(
            h,
            "<section class=\"stage\" id=\"stage-{}\"><h2>Stage <code>{}</code> ({})</h2>\n{body}{pictures}</section>",
            esc(&s.name),
            esc(&s.name),
            esc(&s.kind)
        );
    }
    h += "</body></html>\n";
    forja_core::fsutil::atomic_write(&out.join("report.html"), h.as_bytes())?;
    Ok(())
}

fn section_from_markdown(id: &str, md: &str, dir: &Path) -> String {
    format!("<section id=\"{id}\">{}</section>\n", markdown_to_html(md, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_attribution_markup_survives() {
        let dir = std::env::temp_dir();
        let md = "# T\n\n<script>alert(1)</script>\n\nText <b>bold</b>\n\n<p class=\"attribution\"><span class=\"attr\" title=\"+1\" style=\"x\">a&lt;b</span></p>\n";
        let html = markdown_to_html(md, &dir);
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<span class=\"attr\""), "{html}");
        let sneaky = markdown_to_html("<span class=\"attr\" title=\"1\" style=\"x\" onmouseover=\"y\">t</span>\n", &dir);
        assert!(!sneaky.contains("<span"), "only forja's exact attribution markup passes: {sneaky}");
        let outside = markdown_to_html("![x](/etc/passwd.svg) ![y](../up.svg)", &dir);
        assert!(outside.matches("outside the stage folder").count() == 2, "{outside}");
        let missing = markdown_to_html("![x](nope.svg)", &dir);
        assert!(missing.contains("picture nope.svg not found") && !missing.contains("<img"), "{missing}");
    }
}
