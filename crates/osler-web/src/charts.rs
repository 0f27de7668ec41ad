//! Charts drawn on the server as SVG: a row's 24-hour sparkline and a patient page's chart
//! (the range of each bucket as a band, its mean as a line, the plan's thresholds as dashed
//! lines with their values written beside them). Long series arrive already downsampled
//! (`osler_store::care::Bucket`), so a chart costs the same for a day as for 90 days.

use std::fmt::Write;

use maud::{Markup, html};
use osler_core::Metric;
use osler_store::care::Bucket;

use crate::raw;

/// A threshold drawn across a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    pub label: String,
    pub value: f64,
}

/// The span of values a chart shows: its data and limits, padded a little.
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.1).max(1.0);
    Some((lo - pad, hi + pad))
}

/// A 24-hour sparkline of (time, value) points, 120 × 28 px, described in words for screen
/// readers.
pub fn sparkline(metric: Metric, points: &[(i64, f64)], from_ms: i64, to_ms: i64) -> Markup {
    let (w, h) = (120.0, 28.0);
    let Some((lo, hi)) = span(points.iter().map(|p| p.1)) else {
        return html! { span.muted { "no data in 24 h" } };
    };
    let x = |t: i64| (t - from_ms) as f64 / (to_ms - from_ms).max(1) as f64 * w;
    let y = |v: f64| h - (v - lo) / (hi - lo) * h;
    let mut path = String::new();
    for (i, (t, v)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1}",
            if i == 0 { "M" } else { " L" },
            x(*t),
            y(*v)
        );
    }
    let (min, max) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let said = format!(
        "{} over 24 hours: {} points, from {:.0} to {:.0}",
        crate::label(metric),
        points.len(),
        min,
        max
    );
    let svg = format!(
        r#"<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{said}"><path class="line" d="{path}"/></svg>"#
    );
    raw(svg)
}

/// A chart of a downsampled series over `[from_ms, to_ms)`, 720 × 200 px, with its limits.
pub fn chart(
    metric: Metric,
    buckets: &[Bucket],
    limits: &[Limit],
    from_ms: i64,
    to_ms: i64,
) -> Markup {
    let (w, h, left, bottom) = (720.0, 200.0, 44.0, 22.0);
    let values = buckets
        .iter()
        .flat_map(|b| [b.min, b.max].into_iter().chain(b.mean2))
        .chain(limits.iter().map(|l| l.value));
    let Some((lo, hi)) = span(values) else {
        return html! { p.muted { "No " (crate::label(metric).to_lowercase()) " in this period." } };
    };
    let pw = w - left - 8.0;
    let ph = h - bottom - 8.0;
    let x = |t: i64| left + (t - from_ms) as f64 / (to_ms - from_ms).max(1) as f64 * pw;
    let y = |v: f64| 8.0 + ph - (v - lo) / (hi - lo) * ph;
    let mut svg = String::new();
    let said = format!(
        "{} from {} to {}: {} readings",
        crate::label(metric),
        crate::clock(from_ms),
        crate::clock(to_ms),
        buckets.iter().map(|b| u64::from(b.n)).sum::<u64>()
    );
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{said}">"#
    );
    // Axes: four value ticks, five time ticks.
    for i in 0..=4 {
        let v = lo + (hi - lo) * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line class="grid" x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            w - 8.0,
            left - 4.0,
            y(v) + 4.0,
            y = y(v),
        );
    }
    for i in 0..=4 {
        let t = from_ms + (to_ms - from_ms) * i / 4;
        let label = crate::clock(t);
        let label = if to_ms - from_ms <= 86_400_000 {
            label.get(11..).unwrap_or(&label).to_owned()
        } else {
            label.get(5..10).unwrap_or(&label).to_owned()
        };
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="{anchor}">{label}</text>"#,
            x(t),
            h - 6.0
        );
    }
    // The band of each bucket's least to greatest, then the mean line (gaps left open).
    let mut band = String::new();
    let mut line = String::new();
    let mut line2 = String::new();
    let mut prev: Option<i64> = None;
    let gap = buckets
        .windows(2)
        .map(|p| p[1].t_ms - p[0].t_ms)
        .min()
        .unwrap_or(0)
        * 3;
    for b in buckets {
        let (bx, top, bot) = (x(b.t_ms), y(b.max), y(b.min));
        let _ = write!(
            band,
            r#"<rect x="{:.1}" y="{top:.1}" width="2" height="{:.1}"/>"#,
            bx - 1.0,
            (bot - top).max(1.0)
        );
        let jump = prev.is_none_or(|p| gap > 0 && b.t_ms - p > gap);
        let cmd = if jump { "M" } else { " L" };
        let _ = write!(line, "{cmd}{bx:.1},{:.1}", y(b.mean));
        if let Some(m2) = b.mean2 {
            let _ = write!(line2, "{cmd}{bx:.1},{:.1}", y(m2));
        }
        prev = Some(b.t_ms);
    }
    let _ = write!(
        svg,
        r#"<g class="band">{band}</g><path class="line" d="{line}"/>"#
    );
    if !line2.is_empty() {
        // The second part of a panel (diastolic pressure): dashed, so it reads without colour.
        let _ = write!(svg, r#"<path class="line second" d="{line2}"/>"#);
    }
    for l in limits {
        let ly = y(l.value);
        let _ = write!(
            svg,
            r#"<line class="limit" x1="{left}" x2="{}" y1="{ly:.1}" y2="{ly:.1}"/><text class="limit" x="{}" y="{:.1}" text-anchor="end">{} {}</text>"#,
            w - 8.0,
            w - 10.0,
            ly - 3.0,
            escape(&l.label),
            l.value
        );
    }
    svg.push_str("</svg>");
    raw(svg)
}

/// Text for inside an SVG element built by hand.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(t: i64, v: f64) -> Bucket {
        Bucket {
            t_ms: t,
            n: 1,
            mean: v,
            min: v - 1.0,
            max: v + 1.0,
            mean2: None,
        }
    }

    #[test]
    fn a_chart_draws_its_limits_with_their_values_and_leaves_gaps_open() {
        let buckets = [b(0, 60.0), b(10, 70.0), b(100, 80.0)];
        let limit = Limit {
            label: "high <alarm>".into(),
            value: 120.0,
        };
        let svg = chart(Metric::HeartRate, &buckets, &[limit], 0, 110).into_string();
        assert!(svg.contains("high &lt;alarm&gt; 120"), "{svg}");
        // Three buckets, the third after a gap: two path pieces.
        let line = svg.split(r#"<path class="line" d=""#).nth(1).unwrap_or("");
        assert_eq!(line.split('"').next().unwrap_or("").matches('M').count(), 2);
        assert!(svg.contains("3 readings"));
    }

    #[test]
    fn no_data_is_said_in_words() {
        let s = sparkline(Metric::Spo2, &[], 0, 1).into_string();
        assert!(s.contains("no data"));
        let c = chart(Metric::BodyWeight, &[], &[], 0, 1).into_string();
        assert!(c.contains("No weight"));
    }
}
