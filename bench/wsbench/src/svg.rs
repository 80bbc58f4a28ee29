//! The report as a picture: an SVG chart of throughput against the peers
//! and the sink's ceiling, and of latency percentiles, drawn from the
//! Markdown report itself (so the checked-in figures can be redrawn from
//! the checked-in table: `wsbench svg bench/results/latest.md`).
//!
//! Written by hand: a few dozen rectangles and labels. A plotting crate
//! (plotters) would need a font backend to lay text out, for a chart with
//! one fixed layout; the output is checked by a real SVG parser in the tests.

use crate::report::fmt_rate;
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;

/// The figures the chart shows, read from the report's first table.
#[derive(Debug, Default, PartialEq)]
pub struct Figures {
    /// "Run 2026-11-26 20:01 UTC", when the report says.
    pub run: String,
    /// The relays in the table's order.
    pub relays: Vec<String>,
    /// Per relay, 1→1 msg/s and 1→100 deliveries/s.
    pub throughput: Vec<[Option<f64>; 2]>,
    /// The sink's own ceiling for the same two scenarios.
    pub ceiling: [Option<f64>; 2],
    /// Per relay, latency p50 and p99 in ms.
    pub latency: Vec<[Option<f64>; 2]>,
}

/// "87,883 (delivered 143448 of 200000)" → 87883; "n/a" and "—" → None.
fn number(cell: &str) -> Option<f64> {
    let first = cell.split_whitespace().next()?;
    first.replace(',', "").parse().ok()
}

fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

/// Reads the figures from a report written by `report::render`.
pub fn figures(report: &str) -> Result<Figures> {
    let mut lines = report.lines();
    let header = lines
        .by_ref()
        .find(|l| l.starts_with("| scenario |"))
        .context("no results table (a line starting `| scenario |`)")?;
    let header = cells(header);
    let (Some(&"ceiling"), true) = (header.last(), header.len() >= 3) else {
        bail!("the results table's last column is not the ceiling: {header:?}");
    };
    let relays: Vec<String> = header[1..header.len() - 1]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut f = Figures {
        run: report
            .lines()
            .find_map(|l| l.strip_prefix("Run ").and_then(|r| r.split(" with ").next()))
            .map(|r| format!("Run {r}"))
            .unwrap_or_default(),
        throughput: vec![[None; 2]; relays.len()],
        latency: vec![[None; 2]; relays.len()],
        relays,
        ceiling: [None; 2],
    };
    for line in lines.take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        let Some((label, values)) = row.split_first() else {
            continue;
        };
        if values.len() != f.relays.len() + 1 {
            bail!(
                "row {label:?} has {} cells, the header {}",
                values.len(),
                f.relays.len() + 1
            );
        }
        let slot = if label.starts_with("1→1 throughput") {
            Some((0, true))
        } else if label.starts_with("1→100 throughput") {
            Some((1, true))
        } else if label.starts_with("latency p50") {
            Some((0, false))
        } else if label.starts_with("latency p99") {
            Some((1, false))
        } else {
            None
        };
        let Some((i, is_throughput)) = slot else { continue };
        for (r, cell) in values[..f.relays.len()].iter().enumerate() {
            let target = if is_throughput {
                &mut f.throughput[r]
            } else {
                &mut f.latency[r]
            };
            target[i] = number(cell);
        }
        if is_throughput {
            f.ceiling[i] = number(values[f.relays.len()]);
        }
    }
    if f.throughput.iter().all(|t| t.iter().all(Option::is_none)) {
        bail!("the results table has no throughput figures");
    }
    Ok(f)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 170.0;
const BAR_H: f64 = 18.0;
const PALETTE: [&str; 2] = ["#3b6ea5", "#e08a2c"];
const CEILING: &str = "#9a9a9a";

fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "ms" {
        format!("{v:.3} ms")
    } else {
        format!("{} {unit}", fmt_rate(v))
    }
}

/// One panel: for each row (a relay, or the ceiling), one bar per series.
/// Returns the panel's height.
fn panel(
    out: &mut String,
    top: f64,
    title: &str,
    series: [&str; 2],
    unit: &str,
    rows: &[(String, [Option<f64>; 2], bool)],
) -> f64 {
    let max = rows
        .iter()
        .flat_map(|(_, v, _)| v.iter().flatten())
        .fold(0.0_f64, |a, &b| a.max(b));
    let plot_w = WIDTH - LABEL_W - 150.0;
    let _ = writeln!(
        out,
        r#"<g class="panel"><text x="20" y="{}" class="title">{}</text>"#,
        top + 20.0,
        escape(title)
    );
    for (i, s) in series.iter().enumerate() {
        let x = LABEL_W + i as f64 * 200.0;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}" class="legend">{}</text>"#,
            top + 32.0,
            PALETTE[i],
            x + 18.0,
            top + 43.0,
            escape(s)
        );
    }
    let mut y = top + 60.0;
    for (name, values, is_ceiling) in rows {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" class="relay" text-anchor="end">{}</text>"#,
            LABEL_W - 10.0,
            y + BAR_H + 4.0,
            escape(name)
        );
        for (i, v) in values.iter().enumerate() {
            let by = y + i as f64 * (BAR_H + 2.0);
            match v {
                Some(v) if max > 0.0 => {
                    let w = (v / max * plot_w).max(1.0);
                    let fill = if *is_ceiling { CEILING } else { PALETTE[i] };
                    let _ = writeln!(
                        out,
                        r#"<rect x="{LABEL_W}" y="{by}" width="{w:.1}" height="{BAR_H}" fill="{fill}"><title>{}: {}</title></rect><text x="{:.1}" y="{}" class="value">{}</text>"#,
                        escape(name),
                        escape(&fmt_value(*v, unit)),
                        LABEL_W + w + 6.0,
                        by + BAR_H - 5.0,
                        escape(&fmt_value(*v, unit))
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        r#"<text x="{}" y="{}" class="value">n/a</text>"#,
                        LABEL_W + 6.0,
                        by + BAR_H - 5.0
                    );
                }
            }
        }
        y += 2.0 * (BAR_H + 2.0) + 12.0;
    }
    let _ = writeln!(out, "</g>");
    y - top
}

/// The chart for `f`.
pub fn render(f: &Figures) -> String {
    let mut body = String::new();
    let mut top = 40.0;
    let mut rows: Vec<(String, [Option<f64>; 2], bool)> = f
        .relays
        .iter()
        .zip(&f.throughput)
        .map(|(r, t)| (r.clone(), *t, false))
        .collect();
    rows.push(("ceiling (sink alone)".into(), f.ceiling, true));
    top += panel(
        &mut body,
        top,
        "Throughput (higher is better)",
        ["1→1 (msg/s)", "1→100 (deliveries/s)"],
        "/s",
        &rows,
    );
    let rows: Vec<(String, [Option<f64>; 2], bool)> = f
        .relays
        .iter()
        .zip(&f.latency)
        .map(|(r, l)| (r.clone(), *l, false))
        .collect();
    top += 20.0;
    top += panel(
        &mut body,
        top,
        "End-to-end latency at 1k msg/s (lower is better)",
        ["p50", "p99"],
        "ms",
        &rows,
    );
    let height = top + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        out,
        "<style>.title{{font-size:16px;font-weight:bold}} .relay{{font-size:13px}} .value{{font-size:12px;fill:#333}} .legend{{font-size:12px}}</style>"
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        out,
        r#"<text x="20" y="24" class="title">wsbridge data-plane benchmark{}</text>"#,
        if f.run.is_empty() {
            String::new()
        } else {
            format!(" — {}", escape(&f.run))
        }
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// The SVG for a Markdown report.
pub fn from_report(report: &str) -> Result<String> {
    Ok(render(&figures(report)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "# wsbridge data-plane benchmark

Run 2026-11-26 20:01 UTC with `bash bench/run.sh`; 2 cores.

| scenario | wsbridge | benthos | node | python | ceiling |
|---|---:|---:|---:|---:|---:|
| 1→1 throughput (msg/s) | 87,883 (delivered 143448 of 200000) | 12,793 | 39,614 | n/a | 116,271 (64 conns) |
| 1→100 throughput (deliveries/s) | 100,036 | 11,671 | 23,555 | 2,859 | 111,507 |
| latency p50 @1k msg/s (ms) | 0.103 | 0.154 | 0.140 | 0.260 | — |
| latency p99 @1k msg/s (ms) | 0.216 | 0.359 | 0.544 | 0.553 | — |
| RSS idle (MiB) | 9.5 | 27.8 | 59.1 | 35.6 | — |

| ratio | vs benthos |
|---|---:|
| 1→1 throughput | 6.87× |
";

    #[test]
    fn reads_the_results_table() {
        let f = figures(REPORT).unwrap();
        assert_eq!(f.run, "Run 2026-11-26 20:01 UTC");
        assert_eq!(f.relays, ["wsbridge", "benthos", "node", "python"]);
        assert_eq!(f.throughput[0], [Some(87883.0), Some(100036.0)]);
        assert_eq!(f.throughput[3], [None, Some(2859.0)]);
        assert_eq!(f.ceiling, [Some(116271.0), Some(111507.0)]);
        assert_eq!(f.latency[2], [Some(0.140), Some(0.544)]);
    }

    #[test]
    fn refuses_a_report_without_the_table() {
        assert!(figures("# nothing here\n").is_err());
        assert!(figures("| scenario | wsbridge |\n|---|---:|\n| 1→1 throughput (msg/s) | 1 |\n").is_err());
    }

    /// Every text element, as a real SVG parser reads them.
    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed XML");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                n.descendants()
                    .filter(|d| d.is_text())
                    .filter_map(|d| d.text())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_chart_is_valid_svg_naming_every_relay_and_the_ceiling() {
        let svg = from_report(REPORT).unwrap();
        // usvg resolves it into a render tree, as an SVG renderer would.
        let tree = usvg::Tree::from_str(&svg, &usvg::Options::default()).expect("valid SVG");
        assert!(tree.size().width() > 0.0 && tree.size().height() > 0.0);
        assert!(tree.root().has_children());
        let texts = texts(&svg);
        for relay in ["wsbridge", "benthos", "node", "python", "ceiling (sink alone)"] {
            assert!(
                texts.iter().filter(|t| *t == relay).count() >= 1,
                "{relay} not named: {texts:?}"
            );
        }
        assert!(texts.contains(&"87,883 /s".to_string()), "{texts:?}");
        assert!(texts.contains(&"0.544 ms".to_string()), "{texts:?}");
        assert!(
            texts.contains(&"n/a".to_string()),
            "python's missing 1→1 shows as n/a"
        );
    }

    #[test]
    fn the_checked_in_chart_is_drawn_from_the_checked_in_report() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        let report = std::fs::read_to_string(dir.join("latest.md")).unwrap();
        let svg = std::fs::read_to_string(dir.join("latest.svg")).unwrap();
        assert_eq!(
            svg,
            from_report(&report).unwrap(),
            "bench/results/latest.svg is stale: run `wsbench svg bench/results/latest.md`"
        );
        let texts = texts(&svg);
        for relay in figures(&report).unwrap().relays {
            assert!(texts.contains(&relay), "{relay} not named in latest.svg");
        }
    }
}
