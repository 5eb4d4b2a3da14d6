//! Anchor boxes: the reference's `model_data/yolo_anchors.txt` (a copy is this crate's
//! `data/yolo_anchors.txt`).

use std::path::Path;

use crate::config::YOLO_ANCHORS;
use crate::{Error, Result};

/// Anchor boxes `(w, h)` in network-input pixels, in file order (smallest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Anchors(Vec<(f32, f32)>);

impl Default for Anchors {
    fn default() -> Self {
        Self(YOLO_ANCHORS.to_vec())
    }
}

impl Anchors {
    /// The standard YOLOv3 anchors ([`YOLO_ANCHORS`]).
    pub fn yolov3() -> Self {
        Self::default()
    }

    /// Anchors from explicit `(w, h)` pairs; each side must be positive and finite.
    pub fn new(pairs: Vec<(f32, f32)>) -> Result<Self> {
        if let Some(i) = pairs
            .iter()
            .position(|&(w, h)| !(w.is_finite() && h.is_finite() && w > 0.0 && h > 0.0))
        {
            return Err(Error::Config(format!(
                "anchor {i} {:?} is not a pair of positive numbers",
                pairs[i]
            )));
        }
        Ok(Self(pairs))
    }

    /// The `(w, h)` pairs.
    pub fn pairs(&self) -> &[(f32, f32)] {
        &self.0
    }

    /// Number of anchors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no anchor.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads an anchors file (see [`Anchors::parse`]); errors name the file and line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `10,13, 16,30, …`: comma-separated numbers, `w,h` pairs, over one or more
    /// lines (blank lines and `#` comments are skipped). There must be exactly 9 pairs,
    /// the count the YOLOv3 anchors mask indexes. `source_name` names the text in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let err = |line: Option<usize>, message: String| Error::Anchors {
            source_name: source_name.to_string(),
            line,
            message,
        };
        let mut values = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let mut on_line = 0usize;
            for tok in content.split(',') {
                let tok = tok.trim();
                if tok.is_empty() {
                    // A trailing comma is tolerated; an empty field inside is not.
                    continue;
                }
                let v: f32 = tok
                    .parse()
                    .map_err(|_| err(Some(line_no), format!("`{tok}` is not a number")))?;
                if !(v.is_finite() && v > 0.0) {
                    return Err(err(
                        Some(line_no),
                        format!("`{tok}` is not a positive anchor side"),
                    ));
                }
                values.push(v);
                on_line += 1;
            }
            if on_line % 2 == 1 {
                return Err(err(
                    Some(line_no),
                    format!("{on_line} numbers on this line: anchors are w,h pairs"),
                ));
            }
        }
        if values.len() != 2 * YOLO_ANCHORS.len() {
            return Err(err(
                None,
                format!(
                    "found {} numbers, expected {} ({} w,h pairs)",
                    values.len(),
                    2 * YOLO_ANCHORS.len(),
                    YOLO_ANCHORS.len()
                ),
            ));
        }
        Ok(Self(values.chunks(2).map(|p| (p[0], p[1])).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_reference_file() {
        let text = include_str!("../data/yolo_anchors.txt");
        assert_eq!(
            Anchors::parse(text, "yolo_anchors.txt").unwrap(),
            Anchors::yolov3()
        );
        let multi =
            "10,13, 16,30, 33,23\n\n30,61, 62,45, 59,119 # mid\n116,90, 156,198, 373,326,\n";
        assert_eq!(Anchors::parse(multi, "x").unwrap(), Anchors::yolov3());
    }

    #[test]
    fn malformed_files_name_the_line() {
        let e = Anchors::parse("10,13, 16,30\n33,2x3, 30,61\n", "a.txt").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("a.txt line 2"), "{msg}");
        assert!(msg.contains("`2x3`"), "{msg}");
        let msg = Anchors::parse("10,13\n16\n", "a.txt")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
        let msg = Anchors::parse("10,-13\n", "a.txt").unwrap_err().to_string();
        assert!(msg.contains("line 1") && msg.contains("positive"), "{msg}");
        let msg = Anchors::parse("10,13, 16,30\n", "a.txt")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("found 4 numbers, expected 18"), "{msg}");
        assert!(Anchors::parse("", "a.txt").is_err());
    }

    #[test]
    fn new_refuses_non_positive_sides() {
        assert!(Anchors::new(vec![(1.0, 0.0)]).is_err());
        assert!(Anchors::new(vec![(f32::NAN, 1.0)]).is_err());
        assert_eq!(Anchors::new(vec![(1.0, 2.0)]).unwrap().len(), 1);
    }
}
