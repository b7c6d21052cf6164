//! PNG plots with plotters' bitmap backend. Text is drawn with `ab_glyph` from DejaVu Sans
//! (Debian's fonts-dejavu-core), registered at run time: no fontconfig or freetype needed.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use plotters::{prelude::*, style::FontStyle};

const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers DejaVu Sans as "sans-serif"; call once before drawing.
pub fn init_fonts() -> Result<()> {
    let bytes = FONT_PATHS
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .context("no DejaVuSans.ttf: apt-get install fonts-dejavu-core")?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Vec::leak(bytes))
        .map_err(|_| anyhow!("DejaVuSans.ttf is not a usable font"))?;
    Ok(())
}

/// One line: a name and (x, median, min, max) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Lines over a log x axis, with min–max error bars; `log_y` for quantities spanning decades.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, _, lo, hi) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(lo);
        y1 = y1.max(hi);
    }
    let x_range = (x0 / 2.0)..(x1 * 2.0);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(("sans-serif", 14))
                .draw()?;
            for (n, s) in series.iter().enumerate() {
                let color = COLORS[n % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().map(|&(x, y, _, _)| (x, y)),
                        color.stroke_width(2),
                    ))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(s.points.iter().map(|&(x, y, lo, hi)| {
                    ErrorBar::new_vertical(x, lo, y, hi, color.filled(), 8)
                }))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if log_y {
        let y_range = (y0 / 2.0).max(1e-9)..(y1 * 2.0);
        draw!(builder.build_cartesian_2d(x_range.log_scale(), y_range.log_scale())?);
    } else {
        let y_range = 0.0..(y1 * 1.15);
        draw!(builder.build_cartesian_2d(x_range.log_scale(), y_range)?);
    }
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Horizontal bars with min–max whiskers: (label, median, min, max).
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    bars: &[(String, f64, f64, f64)],
) -> Result<()> {
    let height = 120 + 42 * u32::try_from(bars.len()).context("too many bars to plot")?;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.3).fold(0.0, f64::max) * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..max.max(1e-9), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_label)
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, median, lo, hi)) in bars.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*median, SegmentValue::Exact(i + 1)),
            ],
            color.mix(0.7).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (*lo, SegmentValue::CenterOf(i)),
                (*hi, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
