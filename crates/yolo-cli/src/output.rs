//! What `yolo-cli run` writes: stdout formats, label files and output names.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use yolov3_head::Detection;

/// `--format`: how results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A human-readable table per image.
    Table,
    /// One JSON object at the end: `{"<path>": [detection, …], …}` in input order.
    Json,
    /// One JSON object per line, per image: `{"path", "width", "height", "detections"}`.
    Jsonl,
}

/// The table rows of one image.
pub fn table(path: &str, size: (u32, u32), detections: &[Detection]) -> String {
    let mut s = format!(
        "{path} ({}x{}): {} detection{}\n",
        size.0,
        size.1,
        detections.len(),
        if detections.len() == 1 { "" } else { "s" }
    );
    if !detections.is_empty() {
        s += &format!(
            "  {:>5}  {:<16} {:>6} {:>8} {:>8} {:>8} {:>8}\n",
            "class", "name", "score", "x1", "y1", "x2", "y2"
        );
    }
    for d in detections {
        s += &format!(
            "  {:>5}  {:<16} {:>6.3} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
            d.class_id, d.class_name, d.score, d.x1, d.y1, d.x2, d.y2
        );
    }
    s
}

/// One `--format jsonl` line (with its newline).
pub fn jsonl(path: &str, size: (u32, u32), detections: &[Detection]) -> anyhow::Result<String> {
    let v = serde_json::json!({
        "path": path,
        "width": size.0,
        "height": size.1,
        "detections": detections,
    });
    Ok(serde_json::to_string(&v)? + "\n")
}

/// The `--format json` document: an object keyed by image path, in the given order.
pub fn json(results: &[(String, Vec<Detection>)]) -> anyhow::Result<String> {
    let mut s = String::from("{");
    for (i, (path, dets)) in results.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s += "\n  ";
        s += &serde_json::to_string(path)?;
        s += ": ";
        s += &serde_json::to_string(dets)?;
    }
    s += if results.is_empty() { "}\n" } else { "\n}\n" };
    Ok(s)
}

/// `--save-txt`: one line per box, `class_id score x1 y1 x2 y2 class_name` (the name
/// last, as it may contain spaces).
pub fn label_lines(detections: &[Detection]) -> String {
    detections
        .iter()
        .map(|d| {
            format!(
                "{} {:.6} {:.2} {:.2} {:.2} {:.2} {}\n",
                d.class_id, d.score, d.x1, d.y1, d.x2, d.y2, d.class_name
            )
        })
        .collect()
}

/// Picks output names in one directory: each input gets its file name (the
/// extension changed to `.jpg` or `.png`), with `-2`, `-3`, … added when the name
/// was already given out in this run or would land on an input file.
#[derive(Debug)]
pub struct OutputNamer {
    dir: PathBuf,
    used: HashSet<OsString>,
    inputs: HashSet<PathBuf>,
}

impl OutputNamer {
    /// A namer for `dir`, never choosing any of `inputs`.
    pub fn new(dir: &Path, inputs: &[PathBuf]) -> Self {
        Self {
            dir: dir.to_path_buf(),
            used: HashSet::new(),
            inputs: inputs
                .iter()
                .filter_map(|p| p.canonicalize().ok())
                .collect(),
        }
    }

    /// The stem to use for `input` (unique in this run), and the drawn image's path.
    pub fn next(&mut self, input: &Path) -> (String, PathBuf) {
        let ext = match input
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jpg" | "jpeg") => "jpg",
            _ => "png",
        };
        self.next_with_extension(input, ext)
    }

    /// [`OutputNamer::next`] for an output with extension `ext` (a drawn video's `mp4`).
    pub fn next_with_extension(&mut self, input: &Path, ext: &str) -> (String, PathBuf) {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        for n in 1.. {
            let candidate = if n == 1 {
                stem.clone()
            } else {
                format!("{stem}-{n}")
            };
            let key = OsString::from(candidate.to_lowercase());
            let path = self.dir.join(format!("{candidate}.{ext}"));
            let is_input = path
                .canonicalize()
                .map(|p| self.inputs.contains(&p))
                .unwrap_or(false);
            if !self.used.contains(&key) && !is_input {
                self.used.insert(key);
                return (candidate, path);
            }
        }
        unreachable!("an unbounded range always yields a free name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detection {
        Detection {
            x1: 1.0,
            y1: 2.5,
            x2: 30.25,
            y2: 40.0,
            score: 0.9,
            class_id: 9,
            class_name: "traffic light".into(),
        }
    }

    #[test]
    fn json_has_exactly_the_keys_under_the_path() {
        let doc = json(&[
            ("a.jpg".into(), vec![det()]),
            ("b \"q\".png".into(), vec![]),
        ])
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 2);
        let d = v["a.jpg"][0].as_object().unwrap();
        let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["class_id", "class_name", "score", "x1", "x2", "y1", "y2"]
        );
        assert_eq!(v["b \"q\".png"], serde_json::json!([]));
        assert_eq!(json(&[]).unwrap(), "{}\n");
        let line = jsonl("a.jpg", (3, 4), &[det()]).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["detections"][0]["class_name"], "traffic light");
        assert_eq!(v["width"], 3);
    }

    #[test]
    fn labels_and_table() {
        assert_eq!(
            label_lines(&[det()]),
            "9 0.900000 1.00 2.50 30.25 40.00 traffic light\n"
        );
        let t = table("a.jpg", (3, 4), &[det()]);
        assert!(t.starts_with("a.jpg (3x4): 1 detection\n"), "{t}");
        assert!(t.contains("traffic light"));
    }

    #[test]
    fn names_never_clash_nor_hit_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("cat.png");
        std::fs::write(&input, b"x").unwrap();
        let mut n = OutputNamer::new(dir.path(), std::slice::from_ref(&input));
        // writing into the input's own directory: cat.png is the input
        assert_eq!(n.next(&input).1, dir.path().join("cat-2.png"));
        assert_eq!(
            n.next(Path::new("other/cat.jpeg")).1,
            dir.path().join("cat.jpg")
        );
        assert_eq!(
            n.next(Path::new("x/CAT.JPG")).1,
            dir.path().join("CAT-3.jpg")
        );
        assert_eq!(n.next(Path::new("x/photo.webp")).0, "photo");
        // a video in the output directory is not overwritten by its drawn copy either
        let clip = dir.path().join("clip.mp4");
        std::fs::write(&clip, b"x").unwrap();
        let mut n = OutputNamer::new(dir.path(), std::slice::from_ref(&clip));
        assert_eq!(
            n.next_with_extension(&clip, "mp4").1,
            dir.path().join("clip-2.mp4")
        );
    }
}
