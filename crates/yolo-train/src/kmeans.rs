//! Anchor boxes by k-means with the IoU distance, as the reference's
//! `kmeans_for_anchors.py`: box sizes normalised by their image's size, distance
//! `1 - IoU` of boxes aligned at a corner, centres moved to the per-dimension median of
//! their members, iterated until no box changes cluster; the clusters are scaled to the
//! network input and sorted by area.
//!
//! Differences from the reference, all in the direction of robustness: the initial centres
//! are drawn from a seeded generator (the reference calls `np.random.seed()` inside
//! `kmeans`, which reseeds from the OS, so its runs differ) by k-means++ seeding with the
//! same distance instead of `k` boxes picked uniformly (which often puts two centres in
//! one group and none in another; k-means++ also never starts two centres equal while the
//! data has `k` distinct sizes), a cluster that
//! loses all its members keeps its centre (the reference's `np.median` of nothing is NaN),
//! and the loop stops after `max_iter` iterations.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::dataset::{load_annotations, BadLinePolicy};
use crate::{Error, Result};

/// A box size `[w, h]` (any unit; the reference uses fractions of the image).
pub type Wh = [f64; 2];

/// IoU of two boxes of sizes `a` and `b` aligned at a corner (the reference's `cas_iou`).
pub fn iou_wh(a: Wh, b: Wh) -> f64 {
    let inter = a[0].min(b[0]) * a[1].min(b[1]);
    let union = a[0] * a[1] + b[0] * b[1] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Mean over the boxes of the best IoU with any cluster (the reference's `avg_iou`,
/// printed as its "acc").
pub fn avg_iou(boxes: &[Wh], clusters: &[Wh]) -> f64 {
    if boxes.is_empty() {
        return 0.0;
    }
    let sum: f64 = boxes
        .iter()
        .map(|&b| clusters.iter().map(|&c| iou_wh(b, c)).fold(0.0, f64::max))
        .sum();
    sum / boxes.len() as f64
}

/// The settings of [`kmeans`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KmeansConfig {
    /// Number of clusters: 9 (the YOLOv3 anchors).
    pub k: usize,
    /// Seed of the initial centres.
    pub seed: u64,
    /// Stop after this many updates even if assignments still change.
    pub max_iter: usize,
}

impl Default for KmeansConfig {
    fn default() -> Self {
        Self {
            k: 9,
            seed: 0,
            max_iter: 1000,
        }
    }
}

/// What [`kmeans`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Kmeans {
    /// The centres, sorted by area (smallest first).
    pub clusters: Vec<Wh>,
    /// For each box, the index of its centre in `clusters`.
    pub assignment: Vec<usize>,
    /// Centre updates made.
    pub iterations: usize,
    /// Whether the assignments stopped changing (false: `max_iter` was reached).
    pub converged: bool,
    /// [`avg_iou`] of the boxes with `clusters`.
    pub avg_iou: f64,
}

fn nearest(b: Wh, clusters: &[Wh]) -> usize {
    // argmin of 1 - IoU; the first on ties, as numpy's argmin
    let mut best = 0;
    let mut best_d = f64::INFINITY;
    for (j, &c) in clusters.iter().enumerate() {
        let d = 1.0 - iou_wh(b, c);
        if d < best_d {
            best_d = d;
            best = j;
        }
    }
    best
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// k-means++ seeding with the `1 - IoU` distance: the first centre uniformly at random,
/// each next one with probability proportional to its squared distance to the nearest
/// chosen centre (so a size already chosen is never chosen again while others remain).
fn init_plus_plus(boxes: &[Wh], k: usize, seed: u64) -> Vec<Wh> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut clusters = vec![boxes[rng.random_range(0..boxes.len())]];
    let mut d2: Vec<f64> = boxes
        .iter()
        .map(|&b| (1.0 - iou_wh(b, clusters[0])).powi(2))
        .collect();
    while clusters.len() < k {
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.random_range(0.0..total);
            let mut pick = d2.len() - 1;
            for (i, &d) in d2.iter().enumerate() {
                if d > 0.0 && r < d {
                    pick = i;
                    break;
                }
                r -= d;
            }
            while d2[pick] == 0.0 {
                // rounding ran past the last positive weight
                pick -= 1;
            }
            pick
        } else {
            // fewer distinct sizes than clusters
            rng.random_range(0..boxes.len())
        };
        let c = boxes[pick];
        clusters.push(c);
        for (d, &b) in d2.iter_mut().zip(boxes) {
            *d = d.min((1.0 - iou_wh(b, c)).powi(2));
        }
    }
    clusters
}

/// Clusters box sizes into `cfg.k` centres with the `1 - IoU` distance and median
/// updates (see the module documentation). Boxes must have positive finite sides; there
/// must be at least `k` of them.
pub fn kmeans(boxes: &[Wh], cfg: &KmeansConfig) -> Result<Kmeans> {
    let k = cfg.k;
    if k == 0 {
        return Err(Error::Config("k-means needs at least one cluster".into()));
    }
    if boxes.len() < k {
        return Err(Error::Config(format!(
            "{} boxes cannot make {k} clusters",
            boxes.len()
        )));
    }
    if let Some(b) = boxes
        .iter()
        .find(|b| !(b[0].is_finite() && b[1].is_finite() && b[0] > 0.0 && b[1] > 0.0))
    {
        return Err(Error::Config(format!(
            "box size {b:?}: sides must be positive"
        )));
    }
    let mut clusters = init_plus_plus(boxes, k, cfg.seed);
    let mut last: Option<Vec<usize>> = None;
    let mut iterations = 0;
    let mut converged = false;
    let mut near: Vec<usize>;
    let mut members: Vec<Vec<f64>> = vec![Vec::new(); 2];
    loop {
        near = boxes.iter().map(|&b| nearest(b, &clusters)).collect();
        if last.as_ref() == Some(&near) {
            converged = true;
            break;
        }
        if iterations == cfg.max_iter {
            break;
        }
        for (j, c) in clusters.iter_mut().enumerate() {
            for (d, m) in members.iter_mut().enumerate() {
                m.clear();
                m.extend(
                    boxes
                        .iter()
                        .zip(&near)
                        .filter(|(_, &n)| n == j)
                        .map(|(b, _)| b[d]),
                );
            }
            if !members[0].is_empty() {
                *c = [median(&mut members[0]), median(&mut members[1])];
            }
        }
        last = Some(near);
        iterations += 1;
    }
    // sort by area and renumber the assignment
    let mut idx: Vec<usize> = (0..k).collect();
    idx.sort_by(|&a, &b| {
        (clusters[a][0] * clusters[a][1]).total_cmp(&(clusters[b][0] * clusters[b][1]))
    });
    let mut rank = vec![0; k];
    for (r, &i) in idx.iter().enumerate() {
        rank[i] = r;
    }
    let sorted: Vec<Wh> = idx.iter().map(|&i| clusters[i]).collect();
    let assignment = near.iter().map(|&n| rank[n]).collect();
    let avg = avg_iou(boxes, &sorted);
    Ok(Kmeans {
        clusters: sorted,
        assignment,
        iterations,
        converged,
        avg_iou: avg,
    })
}

/// The box sizes of annotation files (the reference's format), each divided by its
/// image's width and height as the reference's `load_data`. Lines are checked by
/// [`load_annotations`] (any class id is accepted unless `num_classes` is given); returns
/// the sizes and `file:line: what` for each skipped line.
pub fn boxes_from_annotations(
    files: &[&Path],
    num_classes: Option<usize>,
    policy: BadLinePolicy,
) -> Result<(Vec<Wh>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        let ann = load_annotations(f, num_classes.unwrap_or(usize::MAX), policy)?;
        skipped.extend(ann.skipped);
        for s in &ann.samples {
            let (iw, ih) = (s.image_size.0 as f64, s.image_size.1 as f64);
            for b in &s.boxes {
                out.push([(b.x2 - b.x1) as f64 / iw, (b.y2 - b.y1) as f64 / ih]);
            }
        }
    }
    Ok((out, skipped))
}

/// The box sizes of a folder of VOC XML files (e.g. `VOCdevkit/VOC2007/Annotations`), as
/// the reference's `load_data`: every object, divided by `<size>`'s width and height. Files
/// without a positive size are skipped as the reference does, and so are empty or inverted
/// boxes (which the reference keeps); each is reported in the returned list. A malformed
/// file stops with an error naming it.
pub fn boxes_from_voc_dir(dir: &Path) -> Result<(Vec<Wh>, Vec<String>)> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for p in crate::voc::xml_files(dir)? {
        let x = crate::voc::parse_voc_xml(&p)?;
        let (Some(w), Some(h)) = (x.width.filter(|&v| v > 0), x.height.filter(|&v| v > 0)) else {
            skipped.push(format!("{}: no positive <size>", p.display()));
            continue;
        };
        for (k, o) in x.objects.iter().enumerate() {
            let [x1, y1, x2, y2] = o.bbox;
            if x2 <= x1 || y2 <= y1 {
                skipped.push(format!(
                    "{}: object {}: box {x1},{y1},{x2},{y2} is inverted or empty",
                    p.display(),
                    k + 1
                ));
                continue;
            }
            out.push([(x2 - x1) as f64 / w as f64, (y2 - y1) as f64 / h as f64]);
        }
    }
    Ok((out, skipped))
}

/// Anchors in input pixels: normalised clusters times the input `(width, height)`,
/// truncated to integers as the reference's `"%d,%d"` (but at least 1).
pub fn to_anchor_pixels(clusters: &[Wh], input_wh: (u32, u32)) -> Vec<(u32, u32)> {
    clusters
        .iter()
        .map(|c| {
            (
                ((c[0] * input_wh.0 as f64) as u32).max(1),
                ((c[1] * input_wh.1 as f64) as u32).max(1),
            )
        })
        .collect()
}

/// The text of an anchors file, as the reference's `yolo_anchors.txt`: `w,h, w,h, ...`
/// on one line (no newline at the end, as the reference).
pub fn anchors_text(anchors: &[(u32, u32)]) -> String {
    anchors
        .iter()
        .map(|(w, h)| format!("{w},{h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;

    /// Three tight groups of box sizes around known centres.
    fn clustered(seed: u64) -> (Vec<Wh>, Vec<Wh>) {
        use rand::Rng;
        let centres = vec![[0.05, 0.08], [0.2, 0.15], [0.6, 0.7]];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut boxes = Vec::new();
        for c in &centres {
            for _ in 0..40 {
                let jw: f64 = rng.random_range(-0.03..0.03);
                let jh: f64 = rng.random_range(-0.03..0.03);
                boxes.push([c[0] * (1.0 + jw), c[1] * (1.0 + jh)]);
            }
        }
        boxes.shuffle(&mut rng);
        (boxes, centres)
    }

    #[test]
    fn iou_of_corner_aligned_boxes() {
        assert_eq!(iou_wh([2.0, 2.0], [2.0, 2.0]), 1.0);
        assert!((iou_wh([2.0, 1.0], [1.0, 2.0]) - 1.0 / 3.0).abs() < 1e-12);
        assert!((iou_wh([4.0, 4.0], [2.0, 2.0]) - 0.25).abs() < 1e-12);
        assert!((avg_iou(&[[4.0, 4.0], [2.0, 2.0]], &[[2.0, 2.0]]) - 0.625).abs() < 1e-12);
    }

    #[test]
    fn recovers_hand_made_clusters() {
        let (boxes, centres) = clustered(3);
        for seed in 0..5 {
            let r = kmeans(
                &boxes,
                &KmeansConfig {
                    k: 3,
                    seed,
                    max_iter: 100,
                },
            )
            .unwrap();
            assert!(r.converged);
            for (got, want) in r.clusters.iter().zip(&centres) {
                for d in 0..2 {
                    assert!(
                        (got[d] - want[d]).abs() < 0.03 * want[d],
                        "seed {seed}: {:?} vs {centres:?}",
                        r.clusters
                    );
                }
            }
            // every box in its own group, groups numbered by area
            for (b, &a) in boxes.iter().zip(&r.assignment) {
                let want = centres
                    .iter()
                    .position(|c| (b[0] / c[0] - 1.0).abs() < 0.05)
                    .unwrap();
                assert_eq!(a, want);
            }
            assert!(r.avg_iou > 0.95, "{}", r.avg_iou);
        }
    }

    #[test]
    fn the_seed_fixes_the_result() {
        let (boxes, _) = clustered(9);
        let cfg = KmeansConfig {
            k: 9,
            seed: 42,
            max_iter: 1000,
        };
        let a = kmeans(&boxes, &cfg).unwrap();
        let b = kmeans(&boxes, &cfg).unwrap();
        assert_eq!(a, b);
        // sorted by area
        for w in a.clusters.windows(2) {
            assert!(w[0][0] * w[0][1] <= w[1][0] * w[1][1]);
        }
    }

    #[test]
    fn duplicates_and_too_few_boxes() {
        // many equal sizes: the centres still start distinct and none is lost
        let mut boxes = vec![[0.1, 0.1]; 50];
        boxes.extend(vec![[0.5, 0.4]; 5]);
        boxes.push([0.9, 0.9]);
        let r = kmeans(
            &boxes,
            &KmeansConfig {
                k: 3,
                seed: 1,
                max_iter: 10,
            },
        )
        .unwrap();
        assert_eq!(r.clusters, vec![[0.1, 0.1], [0.5, 0.4], [0.9, 0.9]]);
        assert_eq!(r.avg_iou, 1.0);
        let e = kmeans(&boxes[..2], &KmeansConfig::default()).unwrap_err();
        assert!(
            e.to_string().contains("2 boxes cannot make 9 clusters"),
            "{e}"
        );
        assert!(kmeans(
            &[[0.0, 1.0]],
            &KmeansConfig {
                k: 1,
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn anchors_file_text_parses_back() {
        let clusters: Vec<Wh> = (1..=9)
            .map(|i| [i as f64 * 0.05, i as f64 * 0.07])
            .collect();
        let px = to_anchor_pixels(&clusters, (416, 416));
        assert_eq!(px[0], (20, 29)); // 20.8, 29.12 truncated
        let text = anchors_text(&px);
        assert!(text.starts_with("20,29, 41,58, "), "{text}");
        let parsed = yolov3_head::Anchors::parse(&text, "test").unwrap();
        assert_eq!(parsed.pairs()[8], (px[8].0 as f32, px[8].1 as f32));
    }

    #[test]
    fn boxes_from_voc_xml() {
        let dir = tempfile::tempdir().unwrap();
        let obj = |b: [i32; 4]| {
            format!(
                "<object><name>a</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0], b[1], b[2], b[3]
            )
        };
        let doc = |size: &str, objs: &[[i32; 4]]| {
            let o: String = objs.iter().map(|&b| obj(b)).collect();
            format!("<annotation>{size}{o}</annotation>")
        };
        let size = "<size><width>200</width><height>100</height></size>";
        let d = dir.path();
        std::fs::write(d.join("1.xml"), doc(size, &[[0, 0, 100, 50], [5, 5, 5, 9]])).unwrap();
        std::fs::write(d.join("2.xml"), doc("", &[[0, 0, 1, 1]])).unwrap();
        std::fs::write(d.join("3.txt"), "not xml").unwrap();
        let (b, skipped) = boxes_from_voc_dir(d).unwrap();
        assert_eq!(b, vec![[0.5, 0.5]]);
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].contains("1.xml: object 2"));
        assert!(skipped[1].contains("2.xml: no positive <size>"));
        std::fs::write(d.join("4.xml"), "<annotation>").unwrap();
        let e = boxes_from_voc_dir(d).unwrap_err();
        assert!(e.to_string().contains("4.xml"), "{e}");
    }

    #[test]
    fn boxes_are_normalised_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        image::RgbImage::new(200, 100).save(&img).unwrap();
        let ann = dir.path().join("ann.txt");
        let a = img.display();
        std::fs::write(
            &ann,
            format!("{a} 0,0,100,50,0 10,10,30,20,3\n{a} 10,10,5,20,0\nnope.jpg 1,1,2,2,0\n"),
        )
        .unwrap();
        let (b, skipped) = boxes_from_annotations(&[&ann], None, BadLinePolicy::Skip).unwrap();
        assert_eq!(b, vec![[0.5, 0.5], [0.1, 0.1]]);
        assert_eq!(skipped.len(), 2);
        assert!(skipped[0].contains("ann.txt:2:") && skipped[0].contains("inverted"));
        assert!(skipped[1].contains("ann.txt:3:") && skipped[1].contains("does not exist"));
        let e = boxes_from_annotations(&[&ann], Some(2), BadLinePolicy::Refuse).unwrap_err();
        assert!(e.to_string().contains("ann.txt:1:") && e.to_string().contains("class 3"));
    }
}
