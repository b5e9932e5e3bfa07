//! `ferrite explain --html`: the walkthrough as one self-contained page
//! (inline CSS and SVG, no scripts, nothing fetched), with the diagrams of
//! `docs/diagrams/` built in.

use crate::eval::explain::{TensorView, Walkthrough};
use std::fmt::Write;

const BLOCK_SVG: &str = include_str!("../../docs/diagrams/block.svg");
const ATTENTION_SVG: &str = include_str!("../../docs/diagrams/attention.svg");

/// Characters shown per token label.
const LABEL: usize = 4;
/// Positions an attention map shows (a longer text is cut there).
pub const SHOWN_POSITIONS: usize = 32;

/// A token as a short printable label (whitespace made visible).
pub fn label(piece: &str) -> String {
    let visible = piece.chars().map(|c| match c {
        ' ' => '␣',
        '\n' => '⏎',
        '\t' => '⇥',
        c => c,
    });
    visible.filter(|c| !c.is_control()).take(LABEL).collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG file's markup without its XML declaration (for inlining).
fn inline_svg(svg: &str) -> &str {
    match (svg.find("<?xml"), svg.find("?>")) {
        (Some(0), Some(end)) => svg[end + 2..].trim_start(),
        _ => svg,
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}\
td.num{text-align:right;font-family:monospace}code,.mono{font-family:monospace}\
.tok{display:inline-block;border:1px solid #bbb;border-radius:4px;margin:2px;padding:1px 4px;font-family:monospace}\
.tok small{color:#888}.diagram{display:inline-block;vertical-align:top;margin:0 1em 1em 0;max-width:520px}\
.diagram svg{max-width:100%;height:auto}.bar{background:#4a7ab5;height:10px}h2{margin-top:1.5em}";

fn tensor_rows(page: &mut String, tensors: &[TensorView]) {
    for t in tensors {
        let values: Vec<String> = t.last_row.iter().map(|v| format!("{v:+.4}")).collect();
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td class=\"mono\">{:?}</td><td class=\"num\">{:.4}</td><td class=\"num\">{:.4}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            escape(&t.name),
            t.shape,
            t.mean,
            t.std,
            values.join(", "),
            escape(&t.what)
        );
    }
}

/// One head's attention as a heat map: rows are queries, columns keys.
fn attention_map(probs: &[Vec<f64>], labels: &[String]) -> String {
    let n = probs.len().min(labels.len()).min(SHOWN_POSITIONS);
    let (cell, margin) = (18, 40);
    let size = margin + n * cell;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" viewBox=\"0 0 {size} {size}\" font-family=\"sans-serif\" font-size=\"10\">"
    );
    for (i, l) in labels.iter().take(n).enumerate() {
        let at = margin + i * cell + cell / 2;
        let l = escape(l);
        let _ = write!(svg, "<text x=\"{at}\" y=\"{}\" text-anchor=\"middle\">{l}</text>", margin - 6);
        let _ = write!(svg, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{l}</text>", margin - 4, at + 4);
    }
    for (t, row) in probs.iter().take(n).enumerate() {
        for (k, &p) in row.iter().enumerate() {
            // White (no weight) to dark blue (all of the row's weight).
            let shade = |full: f64| (255.0 - p.clamp(0.0, 1.0) * (255.0 - full)).round() as u8;
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({},{},{})\"><title>{:.1}%</title></rect>",
                margin + k * cell,
                margin + t * cell,
                shade(20.0),
                shade(60.0),
                shade(140.0),
                p * 100.0
            );
        }
    }
    svg + "</svg>"
}

/// The page: `model` says which model ran (one line), `pieces` are the
/// tokens' texts.
pub fn page(model: &str, text: &str, pieces: &[String], w: &Walkthrough) -> String {
    let mut p = String::new();
    let _ = write!(
        p,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ferrite explain</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(p, "<h1>One training step, inside</h1><p>One forward and one backward pass through ferrite's engine (the same code that trains). Model: {}.</p>", escape(model));
    let _ = write!(
        p,
        "<p>Text: <code>{}</code>. Each token predicts the next: {} predictions.</p><p>",
        escape(text),
        w.targets.len()
    );
    let ids = w.inputs.iter().chain(w.targets.last());
    for (piece, id) in pieces.iter().zip(ids) {
        let _ = write!(p, "<span class=\"tok\">{} <small>{id}</small></span>", escape(&label(piece)));
    }
    p += "</p><h2>The pieces</h2>";
    for (svg, caption) in [(BLOCK_SVG, "a transformer block"), (ATTENTION_SVG, "causal self-attention")] {
        let _ = write!(p, "<figure class=\"diagram\">{}<figcaption>{caption}</figcaption></figure>", inline_svg(svg));
    }
    p += "<h2>Forward</h2><p>Each tensor's mean and standard deviation, and the first values of its last row (the last position, which has read the whole text).</p>";
    let head =
        "<table><tr><th>tensor</th><th>shape</th><th>mean</th><th>std</th><th>values</th><th>what it is</th></tr>";
    p += head;
    tensor_rows(&mut p, std::slice::from_ref(&w.embedding));
    p += "</table>";
    let labels: Vec<String> = pieces.iter().map(|s| label(s)).collect();
    for layer in &w.layers {
        let _ = write!(p, "<h3>Block {}</h3>{head}", layer.layer);
        tensor_rows(&mut p, &layer.tensors);
        let _ = write!(
            p,
            "</table><p>Attention of head {} (rows: queries; columns: the keys they weigh; darker is more weight; each row sums to 1, and no token looks ahead; an untrained model's heads weigh the earlier tokens almost evenly, a trained model's specialise):</p>{}",
            w.head,
            attention_map(&layer.attention, &labels)
        );
    }
    let _ = write!(p, "<h3>Output</h3>{head}");
    tensor_rows(&mut p, &w.output);
    let _ = write!(
        p,
        "</table><p><b>Loss</b>: {:.4} nats per prediction, the mean cross-entropy. A uniform guess scores ln V = {:.4}.</p>",
        w.loss, w.uniform_loss
    );
    p += "<h2>Backward</h2><p>The norm of each parameter's gradient, ‖∂loss/∂θ‖₂.</p><table><tr><th>parameter</th><th>shape</th><th>norm</th><th></th></tr>";
    let max = w.grads.iter().map(|g| g.norm).fold(0.0, f64::max).max(1e-30);
    for g in &w.grads {
        let _ = write!(
            p,
            "<tr><td><code>{}</code></td><td class=\"mono\">{:?}</td><td class=\"num\">{:.6}</td><td style=\"width:300px\"><div class=\"bar\" style=\"width:{:.1}%\"></div></td></tr>",
            escape(&g.name),
            g.shape,
            g.norm,
            100.0 * g.norm / max
        );
    }
    let _ = write!(
        p,
        "<tr><td><b>all parameters</b></td><td></td><td class=\"num\">{:.6}</td><td>what <code>--grad-clip</code> compares</td></tr></table>",
        w.grad_norm
    );
    p += "</body></html>\n";
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_escaping() {
        assert_eq!(label(" the"), "␣the");
        assert_eq!(label("\nabcdef"), "⏎abc");
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(inline_svg("<?xml version=\"1.0\"?>\n<svg/>"), "<svg/>");
        let map = attention_map(&[vec![1.0], vec![0.25, 0.75]], &["a".into(), "<".into()]);
        assert!(map.contains("&lt;") && map.contains("75.0%") && map.ends_with("</svg>"));
    }
}
