//! Drawing the engine's [`Diagram`] as SVG, without Graphviz.
//!
//! The layout is layered, left to right: a box's column is the longest path
//! to it from a box with no inputs; within a column, boxes keep the
//! diagram's order, grouped by cluster. Edges are curves from the right of
//! one box to the left of the next. Colours are OCurrent's
//! ([`deployer_core::analysis::state_colour`]).

use std::fmt::Write as _;

use deployer_core::analysis::{state_colour, Shape};
use deployer_core::{ActiveState, Diagram, NodeState};

use crate::html::{escape, url_encode};

const BOX_W: u32 = 190;
const BOX_H: u32 = 34;
const COL_GAP: u32 = 60;
const ROW_GAP: u32 = 14;
const MARGIN: u32 = 16;
/// Labels longer than this are cut (the full text is in the tooltip).
const LABEL_CHARS: usize = 26;

/// Where each box is drawn.
struct Layout {
    /// Top-left corner of each box, by index in `diagram.boxes`.
    at: Vec<(u32, u32)>,
    width: u32,
    height: u32,
}

fn layout(diagram: &Diagram) -> Layout {
    let n = diagram.boxes.len();
    let index: std::collections::HashMap<u64, usize> =
        diagram.boxes.iter().enumerate().map(|(i, b)| (b.id, i)).collect();
    let mut inputs: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in &diagram.edges {
        if let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) {
            inputs[to].push(from);
        }
    }
    // Boxes come in dependency order, so one pass finds the longest paths;
    // the guard keeps a (never expected) back edge from mattering.
    let mut column = vec![0usize; n];
    for i in 0..n {
        column[i] = inputs[i].iter().filter(|&&j| j < i).map(|&j| column[j] + 1).max().unwrap_or(0);
    }
    let columns = column.iter().max().map_or(0, |c| c + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for i in 0..n {
        members[column[i]].push(i);
    }
    let mut at = vec![(0, 0); n];
    let mut rows = 0;
    for (c, boxes) in members.iter_mut().enumerate() {
        // Keep each cluster's boxes together (stable: diagram order inside).
        boxes.sort_by_key(|&i| (diagram.boxes[i].cluster.map_or(0, |k| k + 1), i));
        for (r, &i) in boxes.iter().enumerate() {
            at[i] = (MARGIN + c as u32 * (BOX_W + COL_GAP), MARGIN + r as u32 * (BOX_H + ROW_GAP));
        }
        rows = rows.max(boxes.len());
    }
    Layout {
        at,
        width: 2 * MARGIN + (columns as u32).max(1) * (BOX_W + COL_GAP) - COL_GAP,
        height: 2 * MARGIN + (rows as u32).max(1) * (BOX_H + ROW_GAP) - ROW_GAP,
    }
}

fn short(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

/// A state's name for people, as shown in tooltips and the legend.
pub fn state_text(state: Option<NodeState>) -> &'static str {
    match state {
        None => "not evaluated yet",
        Some(NodeState::Ok) => "ok",
        Some(NodeState::Active(ActiveState::Ready)) => "ready",
        Some(NodeState::Active(ActiveState::Running)) => "running",
        Some(NodeState::Active(ActiveState::WaitingForConfirmation)) => "waiting for confirmation",
        Some(NodeState::Failed) => "failed",
        Some(NodeState::Blocked) => "blocked",
    }
}

/// The diagram as a standalone SVG document. `expanded` is the page's query
/// string (the collapse groups already open), kept in expand links.
pub fn render(diagram: &Diagram, expanded: &[(String, String)]) -> String {
    let l = layout(diagram);
    let mut out = String::with_capacity(400 * diagram.boxes.len() + 1000);
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="pipeline" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="pipeline diagram" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">"#,
        w = l.width,
        h = l.height
    );
    out.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker><linearGradient id="updating"><stop offset="0.5" stop-color="#90ee90"/><stop offset="0.5" stop-color="#ffa500"/></linearGradient></defs>"##,
    );
    // Clusters: a frame around each cluster's boxes, column by column.
    for cluster in &diagram.clusters {
        let mut frame: Option<(u32, u32, u32, u32)> = None;
        for (i, b) in diagram.boxes.iter().enumerate() {
            if b.cluster == Some(cluster.index) {
                let (x, y) = l.at[i];
                frame = Some(match frame {
                    None => (x, y, x + BOX_W, y + BOX_H),
                    Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + BOX_W), y1.max(y + BOX_H)),
                });
            }
        }
        if let Some((x0, y0, x1, y1)) = frame {
            let dash = if cluster.dotted { r#" stroke-dasharray="2 3""# } else { "" };
            let _ = write!(
                out,
                r##"<rect class="cluster" x="{}" y="{}" width="{}" height="{}" rx="6" fill="none" stroke="#999"{dash}/>"##,
                x0 - 6,
                y0 - 6,
                x1 - x0 + 12,
                y1 - y0 + 12
            );
        }
    }
    let index: std::collections::HashMap<u64, usize> =
        diagram.boxes.iter().enumerate().map(|(i, b)| (b.id, i)).collect();
    for e in &diagram.edges {
        let (Some(&from), Some(&to)) = (index.get(&e.from), index.get(&e.to)) else { continue };
        let (fx, fy) = l.at[from];
        let (tx, ty) = l.at[to];
        let (x1, y1, x2, y2) = (fx + BOX_W, fy + BOX_H / 2, tx, ty + BOX_H / 2);
        let mid = (x1 + x2) / 2;
        let dash = if e.dashed { r#" stroke-dasharray="5 4""# } else { "" };
        let _ = write!(
            out,
            r##"<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" stroke="#555"{dash} marker-end="url(#arrow)"/>"##
        );
    }
    for (i, b) in diagram.boxes.iter().enumerate() {
        let (x, y) = l.at[i];
        let fill = match (b.state, b.update) {
            (Some(NodeState::Ok), Some(_)) => "url(#updating)",
            (state, _) => state_colour(state),
        };
        let mut title = format!("{}: {}", b.label, state_text(b.state));
        if b.update.is_some() {
            title.push_str(" (updating in the background)");
        }
        if let Some(m) = &b.message {
            title.push_str(" — ");
            title.push_str(m);
        }
        let link = match (&b.expand, &b.job_id) {
            (Some((k, v)), _) => {
                let mut q: Vec<String> =
                    expanded.iter().map(|(a, b)| format!("{}={}", url_encode(a), url_encode(b))).collect();
                q.push(format!("{}={}", url_encode(k), url_encode(v)));
                Some(format!("/?{}", q.join("&")))
            }
            (None, Some(job)) => Some(format!("/job/{job}")),
            (None, None) => None,
        };
        let state_class = b.state.map_or("none", NodeState::name);
        if let Some(href) = &link {
            let _ = write!(out, r#"<a href="{}" target="_top">"#, escape(href));
        }
        let _ = write!(out, r#"<g class="box {state_class}" data-id="{}"><title>{}</title>"#, b.id, escape(&title));
        match b.shape {
            Shape::Circle => {
                let _ = write!(
                    out,
                    r##"<circle cx="{}" cy="{}" r="{}" fill="{fill}" stroke="#333"/>"##,
                    x + BOX_W / 2,
                    y + BOX_H / 2,
                    BOX_H / 2
                );
            }
            Shape::Box | Shape::Collapsed => {
                let dash = if b.shape == Shape::Collapsed { r#" stroke-dasharray="4 2""# } else { "" };
                let _ = write!(
                    out,
                    r##"<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}" stroke="#333"{dash}/>"##
                );
                let label = if b.shape == Shape::Collapsed { format!("+ {}", b.label) } else { b.label.clone() };
                let _ = write!(
                    out,
                    r##"<text x="{}" y="{}" text-anchor="middle" fill="#111">{}</text>"##,
                    x + BOX_W / 2,
                    y + BOX_H / 2 + 4,
                    escape(&short(&label))
                );
            }
        }
        out.push_str("</g>");
        if link.is_some() {
            out.push_str("</a>");
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::analysis::{Cluster, DiagramBox, Edge};

    fn b(id: u64, label: &str, state: Option<NodeState>) -> DiagramBox {
        DiagramBox {
            id,
            label: label.into(),
            shape: Shape::Box,
            state,
            job_id: None,
            update: None,
            message: None,
            cluster: None,
            expand: None,
        }
    }

    #[test]
    fn columns_follow_the_longest_path_and_text_is_escaped() {
        let mut fetch = b(1, "fetch <main>", Some(NodeState::Ok));
        fetch.job_id = Some("2026-11-24/101500-fetch-abc".into());
        let diagram = Diagram {
            boxes: vec![fetch, b(2, "build", Some(NodeState::Failed)), b(3, "deploy", Some(NodeState::Blocked))],
            edges: vec![
                Edge { from: 1, to: 2, dashed: false },
                Edge { from: 2, to: 3, dashed: false },
                Edge { from: 1, to: 3, dashed: true },
            ],
            clusters: vec![],
        };
        let l = layout(&diagram);
        assert_eq!(l.at.iter().map(|p| p.0).collect::<Vec<_>>(), [16, 266, 516]);
        let svg = render(&diagram, &[]);
        assert!(svg.contains("fetch &lt;main&gt;"));
        assert!(!svg.contains("<main>"));
        assert!(svg.contains(r#"<a href="/job/2026-11-24/101500-fetch-abc""#));
        assert!(svg.contains("#ff4500") && svg.contains("#d3d3d3") && svg.contains("#90ee90"));
        assert!(svg.contains(r#"stroke-dasharray="5 4""#), "the gate's control edge is dashed");
    }

    #[test]
    fn collapsed_groups_link_to_their_expansion() {
        let mut group = b(7, "ocaml/opam", Some(NodeState::Ok));
        group.shape = Shape::Collapsed;
        group.expand = Some(("repo".into(), "ocaml/opam".into()));
        group.cluster = Some(0);
        let diagram = Diagram {
            boxes: vec![group],
            edges: vec![],
            clusters: vec![Cluster { index: 0, dotted: false, parent: None }],
        };
        let svg = render(&diagram, &[("repo".into(), "a b".into())]);
        assert!(svg.contains(r#"href="/?repo=a%20b&amp;repo=ocaml%2Fopam""#), "{svg}");
        assert!(svg.contains("+ ocaml/opam"));
        assert!(svg.contains(r#"class="cluster""#));
    }
}
