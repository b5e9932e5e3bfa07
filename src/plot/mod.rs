//! Pictures, as SVG and PNG: training curves from `metrics.jsonl` (several
//! runs overlaid) and attention analysis. Text uses an embedded DejaVu Sans,
//! so no system fonts are needed.

pub mod explain;

use crate::eval::attention::{distance_bins, HeadStats};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

/// One run's curves, read from its `metrics.jsonl`.
pub struct RunCurves {
    pub name: String,
    /// `(step, loss)` of the training records.
    pub train: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    pub tokens_per_s: Vec<(f64, f64)>,
    /// `(step, train loss, val loss)` of the evaluations.
    pub evals: Vec<(f64, f64, f64)>,
}

impl RunCurves {
    pub fn read(run_dir: &Path) -> Result<RunCurves> {
        let path = run_dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
        let mut c = RunCurves { name, train: vec![], lr: vec![], tokens_per_s: vec![], evals: vec![] };
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
            let num = |k: &str| r[k].as_f64();
            let step = num("step").ok_or_else(|| anyhow!("{} line {}: no step", path.display(), i + 1))?;
            match r["kind"].as_str() {
                Some("train") => {
                    if let Some(v) = num("loss") {
                        c.train.push((step, v));
                    }
                    if let Some(v) = num("lr") {
                        c.lr.push((step, v));
                    }
                    if let Some(v) = num("tokens_per_s") {
                        c.tokens_per_s.push((step, v));
                    }
                }
                Some("eval") => {
                    if let (Some(t), Some(v)) = (num("train_loss"), num("val_loss")) {
                        c.evals.push((step, t, v));
                    }
                }
                _ => {}
            }
        }
        if c.train.is_empty() && c.evals.is_empty() {
            bail!("{} has no training or evaluation records", path.display());
        }
        Ok(c)
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Draws a figure to `PREFIX.svg` and `PREFIX.png`; returns their paths.
fn save(
    prefix: &Path,
    size: (u32, u32),
    draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> PlotResult,
    draw_png: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> PlotResult,
) -> Result<Vec<PathBuf>> {
    register_font();
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let svg = prefix.with_extension("svg");
    let png = prefix.with_extension("png");
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(&root).map_err(|e| anyhow!("cannot draw {}: {e}", svg.display()))?;
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        draw_png(&root).map_err(|e| anyhow!("cannot draw {}: {e}", png.display()))?;
        root.present().map_err(|e| anyhow!("cannot write {}: {e}", png.display()))?;
    }
    Ok(vec![svg, png])
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is valid TrueType; failing here is a build problem.
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans failed to load"));
    });
}

/// Training curves: loss (training records, and train/val evaluations),
/// learning rate and throughput, stacked; several runs overlaid.
pub fn runs(runs: &[RunCurves], prefix: &Path, size: (u32, u32)) -> Result<Vec<PathBuf>> {
    save(prefix, size, |root| draw_runs(root, runs), |root| draw_runs(root, runs))
}

fn color(i: usize) -> RGBColor {
    let (r, g, b) = Palette99::pick(i).rgb();
    RGBColor(r, g, b)
}

/// A paler shade, for the noisy per-step curves behind the evaluations.
fn pale(c: RGBColor) -> RGBColor {
    let mix = |v: u8| (v as u16 * 2 / 5 + 150) as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

/// `(min, max)` of values, widened when flat.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    (lo - pad, hi + pad)
}

fn draw_runs<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[RunCurves]) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let max_step =
        runs.iter().flat_map(|r| r.train.iter().map(|p| p.0).chain(r.evals.iter().map(|e| e.0))).fold(1.0, f64::max);
    type Series<'a> = Vec<(String, RGBColor, bool, Vec<(f64, f64)>)>;
    let mut loss: Series = Vec::new();
    let (mut lr, mut tps): (Series, Series) = (Vec::new(), Vec::new());
    for (i, r) in runs.iter().enumerate() {
        let c = color(i);
        loss.push((format!("{} train (each step)", r.name), pale(c), false, r.train.clone()));
        loss.push((format!("{} train", r.name), c, false, r.evals.iter().map(|e| (e.0, e.1)).collect()));
        loss.push((format!("{} val", r.name), c, true, r.evals.iter().map(|e| (e.0, e.2)).collect()));
        lr.push((r.name.clone(), c, false, r.lr.clone()));
        tps.push((r.name.clone(), c, false, r.tokens_per_s.clone()));
    }
    for (area, title, series) in
        [(&panels[0], "loss", &loss), (&panels[1], "learning rate", &lr), (&panels[2], "tokens/s", &tps)]
    {
        let (lo, hi) = range(series.iter().flat_map(|s| s.3.iter().map(|p| p.1)));
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_step, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        for (name, c, markers, points) in series.iter().filter(|s| !s.3.is_empty()) {
            // Validation curves are the thick ones with dots.
            let style = ShapeStyle::from(c).stroke_width(if *markers { 3 } else { 1 });
            let c = *c;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(c).stroke_width(2)));
            if *markers {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, ShapeStyle::from(c).filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

/// Attention analysis: per layer and head, entropy and mean look-back
/// distance as heat maps, and each layer's distance histogram.
pub fn attention(heads: &[HeadStats], seq: usize, prefix: &Path) -> Result<Vec<PathBuf>> {
    if heads.is_empty() {
        bail!("no attention heads to draw");
    }
    save(prefix, (1200, 800), |root| draw_attention(root, heads, seq), |root| draw_attention(root, heads, seq))
}

fn draw_attention<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, heads: &[HeadStats], seq: usize) -> PlotResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(420);
    let maps = top.split_evenly((1, 2));
    let layers = heads.iter().map(|h| h.layer).max().unwrap_or(0) + 1;
    let n_heads = heads.iter().map(|h| h.head).max().unwrap_or(0) + 1;
    let entropy_max = (seq as f64).log2().max(1e-9);
    let value_maps: [(&str, f64, fn(&HeadStats) -> f64); 2] = [
        ("attention entropy (bits)", entropy_max, |h| h.entropy_bits),
        ("mean look-back distance (tokens)", (seq as f64 - 1.0).max(1.0), |h| h.mean_distance),
    ];
    for (area, (title, max, value)) in maps.iter().zip(value_maps) {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d((0..n_heads - 1).into_segmented(), (0..layers - 1).into_segmented())?;
        chart.configure_mesh().disable_mesh().x_desc("head").y_desc("layer").label_style(("sans-serif", 13)).draw()?;
        let cell = |h: &HeadStats| {
            [
                (SegmentValue::Exact(h.head), SegmentValue::Exact(h.layer)),
                (SegmentValue::Exact(h.head + 1), SegmentValue::Exact(h.layer + 1)),
            ]
        };
        chart.draw_series(heads.iter().map(|h| {
            let c = ViridisRGB.get_color((value(h) / max).clamp(0.0, 1.0) as f32);
            Rectangle::new(cell(h), c.filled())
        }))?;
        let label = ("sans-serif", 14).into_font().color(&WHITE).pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(heads.iter().map(|h| {
            let at = (SegmentValue::CenterOf(h.head), SegmentValue::CenterOf(h.layer));
            Text::new(format!("{:.2}", value(h)), at, label.clone())
        }))?;
    }
    // Mean distance histogram of each layer (over its heads).
    let bins = distance_bins(seq);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("share of attention by distance back, per layer", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0..bins.len() - 1, 0.0..1.0)?;
    let labels: Vec<String> =
        bins.iter().map(|&(lo, hi)| if hi == lo + 1 { lo.to_string() } else { format!("{lo}-{}", hi - 1) }).collect();
    chart
        .configure_mesh()
        .x_labels(bins.len())
        .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
        .x_desc("distance (tokens)")
        .label_style(("sans-serif", 13))
        .draw()?;
    for l in 0..layers {
        let mut hist = vec![0.0; bins.len()];
        let hs: Vec<&HeadStats> = heads.iter().filter(|h| h.layer == l).collect();
        for h in &hs {
            for (m, v) in hist.iter_mut().zip(&h.histogram) {
                *m += v / hs.len() as f64;
            }
        }
        let c = color(l);
        chart
            .draw_series(LineSeries::new(
                hist.iter().enumerate().map(|(i, &m)| (i, m)),
                ShapeStyle::from(c).stroke_width(2),
            ))?
            .label(format!("layer {l}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ShapeStyle::from(c).stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
