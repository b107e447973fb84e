//! A small SVG plot: cumulative distributions on a log-scaled time axis.

use std::fmt::Write as _;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 330.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#ff9896", "#aec7e8", "#2ca02c", "#7f7f7f",
];

/// One CDF curve per series (name, samples in ns).
#[must_use]
pub fn cdf_svg(title: &str, series: &[(&str, &[f64])]) -> String {
    let all = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|&x| x > 0.0);
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (lx, hx) = (lo.max(1.0).log10().floor(), hi.max(10.0).log10().ceil());
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |ns: f64| LEFT + (ns.max(1.0).log10() - lx) / (hx - lx) * pw;
    let y = |f: f64| TOP + (1.0 - f) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = write!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{title}</text>"#,
        LEFT + pw / 2.0
    );
    // Axes and grid.
    let mut d = lx;
    while d <= hx {
        let gx = x(10f64.powf(d));
        let _ = write!(
            s,
            r##"<line x1="{gx}" y1="{TOP}" x2="{gx}" y2="{}" stroke="#ddd"/>"##,
            TOP + ph
        );
        let label = match d as i32 {
            0 => "1 ns".to_string(),
            1 => "10 ns".to_string(),
            2 => "100 ns".to_string(),
            3 => "1 µs".to_string(),
            4 => "10 µs".to_string(),
            5 => "100 µs".to_string(),
            6 => "1 ms".to_string(),
            k => format!("1e{k} ns"),
        };
        let _ = write!(
            s,
            r#"<text x="{gx}" y="{}" text-anchor="middle">{label}</text>"#,
            TOP + ph + 20.0
        );
        d += 1.0;
    }
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let gy = y(f);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{gy}" x2="{}" y2="{gy}" stroke="#ddd"/>"##,
            LEFT + pw
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}%</text>"#,
            LEFT - 8.0,
            gy + 4.0,
            k * 25
        );
    }
    let _ = write!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">time to serve one page fault, as the faulting thread sees it (log scale)</text>"#,
        LEFT + pw / 2.0,
        H - 15.0
    );
    let _ = write!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">faults served within</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    // Curves and legend.
    for (i, (name, v)) in series.iter().enumerate() {
        let mut v: Vec<f64> = v.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for (k, &ns) in v.iter().enumerate() {
            let _ = write!(pts, "{:.1},{:.1} ", x(ns), y((k + 1) as f64 / n));
        }
        let dash = if name.contains("other CPU") {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#
        );
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let lx0 = LEFT + pw + 15.0;
        let _ = write!(
            s,
            r#"<line x1="{lx0}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"{dash}/>"#,
            lx0 + 24.0
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="{}">{name}</text>"#,
            lx0 + 30.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}
