//! The plot of dump time against rows, drawn by the bench itself as SVG: a reader sees at a
//! glance whether the line is straight.

use std::fmt::Write;

use crate::measure::Measure;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const MARGIN: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// One line per (etcd version, source) through (0, 0) and each first dump's (rows, seconds),
/// the median of a size's rounds.
pub fn dump_scaling(results: &[Measure]) -> String {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for m in results.iter().filter(|m| m.scenario == "first dump") {
        let (Some(rows), Some(seconds)) = (m.rows, m.seconds) else {
            continue;
        };
        let label = format!("{} on etcd {}", m.source, m.etcd);
        match series.iter_mut().find(|(l, _)| *l == label) {
            Some((_, points)) => points.push((rows as f64, seconds)),
            None => series.push((label, vec![(rows as f64, seconds)])),
        }
    }
    // Rounds of one size: their median.
    for (_, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for chunk in points.chunk_by(|a, b| a.0 == b.0) {
            let seconds = crate::scenarios::median(chunk.iter().map(|p| p.1).collect());
            merged.push((chunk[0].0, seconds.unwrap_or(0.0)));
        }
        *points = merged;
    }
    let max_rows = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_secs = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |rows: f64| MARGIN + rows / max_rows * (WIDTH - 2.0 * MARGIN);
    let y = |secs: f64| HEIGHT - MARGIN - secs / max_secs * (HEIGHT - 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">Dump time against rows (agent start to phase sync)</text>"#,
        WIDTH / 2.0
    );
    // Axes with ticks.
    let _ = writeln!(
        svg,
        r#"<path d="M{MARGIN},{} V{} H{}" stroke="black" fill="none"/>"#,
        MARGIN,
        HEIGHT - MARGIN,
        WIDTH - MARGIN
    );
    for i in 0..=4 {
        let rows = max_rows * f64::from(i) / 4.0;
        let secs = max_secs * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.1}M</text>"#,
            x(rows),
            HEIGHT - MARGIN + 18.0,
            rows / 1e6
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{secs:.0} s</text>"#,
            MARGIN - 6.0,
            y(secs) + 4.0
        );
        let _ = writeln!(
            svg,
            r##"<path d="M{MARGIN},{:.1} H{}" stroke="#ddd"/>"##,
            y(secs),
            WIDTH - MARGIN
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">rows</text>"#,
        WIDTH / 2.0,
        HEIGHT - 15.0
    );
    for (i, (label, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = format!("M{:.1},{:.1}", x(0.0), y(0.0));
        for (rows, secs) in points {
            let _ = write!(d, " L{:.1},{:.1}", x(*rows), y(*secs));
        }
        let _ = writeln!(
            svg,
            r#"<path d="{d}" stroke="{color}" fill="none" stroke-width="2"/>"#
        );
        for (rows, secs) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                x(*rows),
                y(*secs)
            );
        }
        let legend_y = MARGIN + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<path d="M{},{:.1} h16" stroke="{color}" stroke-width="3"/>"#,
            MARGIN + 12.0,
            legend_y - 4.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{legend_y}" fill="{color}">{label}</text>"#,
            MARGIN + 34.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
