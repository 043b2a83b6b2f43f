//! The dashboard's charts: small SVG drawn on the server (no script, so the page's policy can forbid every
//! script; no chart library to vendor or keep patched). Two shapes cover every page: lines over time and stacked
//! bars over days. Labels are escaped like any other text.

use super::html::esc;

/// One named series of values, one per x label.
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
    /// A colour that means something (completed green, failed red); else the series takes the next of the palette.
    pub colour: Option<&'static str>,
}

pub const GOOD: &str = "#2b9348";
pub const BAD: &str = "#c0392b";
pub const NEUTRAL: &str = "#6b7280";

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;
/// Distinguishable colours, in the order series take them: blue, green, red (so "enqueued, completed, failed"
/// read as they should), then orange, purple, grey.
const COLOURS: [&str; 6] = [
    "#1f6fb4", "#2b9348", "#c0392b", "#e07b00", "#7b3fa0", "#6b7280",
];

fn colour(series: &Series, index: usize) -> &'static str {
    series.colour.unwrap_or(COLOURS[index % COLOURS.len()])
}

/// A number for an axis: whole when large, two decimals when small.
fn axis_number(value: f64) -> String {
    if value >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// The top of the y axis: the maximum rounded up to 1, 2 or 5 times a power of ten (at least `floor`).
fn nice_max(max: f64, floor: f64) -> f64 {
    let max = if max.is_finite() {
        max.max(floor)
    } else {
        floor
    };
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * magnitude)
        .find(|top| *top >= max)
        .unwrap_or(max)
}

/// The frame both shapes share: axes, three y gridlines with values, at most eight x labels, a title for
/// screen readers, and the legend below.
fn frame(
    id: &str,
    title: &str,
    labels: &[String],
    top: f64,
    unit: &str,
    plot: &str,
    series: &[Series],
) -> String {
    let plot_height = HEIGHT - TOP - BOTTOM;
    let mut grid = String::new();
    for step in 0..=2 {
        let value = top * f64::from(step) / 2.0;
        let y = TOP + plot_height * (1.0 - f64::from(step) / 2.0);
        grid.push_str(&format!(
            r##"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#dde"/><text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="11">{v}{unit}</text>"##,
            x2 = WIDTH - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 4.0,
            v = axis_number(value),
            unit = esc(unit),
        ));
    }
    let every = labels.len().div_ceil(8).max(1);
    let slot = (WIDTH - LEFT - RIGHT) / labels.len().max(1) as f64;
    for (i, label) in labels.iter().enumerate().filter(|(i, _)| i % every == 0) {
        grid.push_str(&format!(
            r#"<text x="{x:.1}" y="{y}" text-anchor="middle" font-size="11">{label}</text>"#,
            x = LEFT + slot * (i as f64 + 0.5),
            y = HEIGHT - 8.0,
            label = esc(label),
        ));
    }
    let legend: String = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                r#"<span><span class="swatch" style="background:{}"></span>{}</span>"#,
                colour(s, i),
                esc(&s.name)
            )
        })
        .collect();
    format!(
        r#"<figure id="{id}"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-title"><title id="{id}-title">{title}</title>{grid}{plot}</svg><figcaption class="legend">{legend}</figcaption></figure>"#,
        id = esc(id),
        title = esc(title),
    )
}

/// Lines over `labels` (one point per label), for rates and latencies over time.
pub fn lines(id: &str, title: &str, labels: &[String], series: &[Series], unit: &str) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let top = nice_max(max, 1.0);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - LEFT - RIGHT) / labels.len().max(1) as f64;
    let mut plot = String::new();
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .values
            .iter()
            .enumerate()
            .map(|(x, v)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + slot * (x as f64 + 0.5),
                    TOP + plot_height * (1.0 - (v / top).clamp(0.0, 1.0))
                )
            })
            .collect();
        plot.push_str(&format!(
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            colour(s, i),
            points.join(" ")
        ));
    }
    frame(id, title, labels, top, unit, &plot, series)
}

/// Stacked bars over `labels` (one bar per label, one segment per series), for counts per day.
pub fn stacked_bars(id: &str, title: &str, labels: &[String], series: &[Series]) -> String {
    let totals: Vec<f64> = (0..labels.len())
        .map(|x| {
            series
                .iter()
                .map(|s| s.values.get(x).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let top = nice_max(totals.iter().copied().fold(0.0, f64::max), 1.0);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = (WIDTH - LEFT - RIGHT) / labels.len().max(1) as f64;
    let mut plot = String::new();
    for x in 0..labels.len() {
        let mut base = 0.0;
        for (i, s) in series.iter().enumerate() {
            let value = s.values.get(x).copied().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let y0 = TOP + plot_height * (1.0 - (base / top).clamp(0.0, 1.0));
            base += value;
            let y1 = TOP + plot_height * (1.0 - (base / top).clamp(0.0, 1.0));
            plot.push_str(&format!(
                r#"<rect x="{:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                LEFT + slot * x as f64 + slot * 0.15,
                slot * 0.7,
                y0 - y1,
                colour(s, i),
                esc(&s.name),
                axis_number(value),
            ));
        }
    }
    frame(id, title, labels, top, "", &plot, series)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_and_labels_are_escaped() {
        assert_eq!(nice_max(0.0, 1.0), 1.0);
        assert_eq!(nice_max(7.0, 1.0), 10.0);
        assert_eq!(nice_max(130.0, 1.0), 200.0);
        assert_eq!(nice_max(0.03, 0.01), 0.05);
        let chart = stacked_bars(
            "c",
            "<t>",
            &["<d>".to_string()],
            &[Series {
                name: "<s>".into(),
                values: vec![3.0],
                colour: None,
            }],
        );
        assert!(!chart.contains("<t>") && !chart.contains("<d>") && !chart.contains("<s>"));
        assert!(chart.contains("<rect"));
    }
}
