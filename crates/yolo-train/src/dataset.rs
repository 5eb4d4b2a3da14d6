//! Annotation files in the reference's format: one image per line,
//! `path x1,y1,x2,y2,cls x1,y1,x2,y2,cls ...` (pixels of the original image, integers).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// One box of an annotation line: corners in original-image pixels and the class id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnnBox {
    /// Left.
    pub x1: f32,
    /// Top.
    pub y1: f32,
    /// Right.
    pub x2: f32,
    /// Bottom.
    pub y2: f32,
    /// Class id.
    pub class_id: usize,
}

/// One annotated image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Its boxes (possibly none).
    pub boxes: Vec<AnnBox>,
    /// `(width, height)` of the image, read from its header.
    pub image_size: (u32, u32),
    /// Where it came from: `file:line`.
    pub origin: String,
}

/// What to do with a bad line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLinePolicy {
    /// Report it (a warning) and leave it out.
    #[default]
    Skip,
    /// Stop with an error naming the file and line.
    Refuse,
}

/// What [`load_annotations`] read: the good samples and a warning per skipped line.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    /// The usable images.
    pub samples: Vec<Sample>,
    /// `file:line: what was wrong` for each skipped line.
    pub skipped: Vec<String>,
}

/// Reads an annotation file. Relative image paths are taken as they are (relative to the
/// working directory, as the reference does) unless missing, then relative to the file's
/// folder. Checks every line: the image exists and its header can be read, boxes have five
/// integer fields, are not inverted, lie inside the image, and name a class below
/// `num_classes`. Blank lines are ignored.
pub fn load_annotations(
    path: &Path,
    num_classes: usize,
    policy: BadLinePolicy,
) -> Result<Annotations> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_annotations(&text, path, num_classes, policy, |file| {
        locate_image(file, &base)
    })
}

/// The image a line names: `file` as it is (relative to the working directory) unless
/// missing, then relative to `base`; with its `(width, height)` from its header.
fn locate_image(file: &str, base: &Path) -> std::result::Result<(PathBuf, (u32, u32)), String> {
    let mut p = PathBuf::from(file);
    if !p.is_file() && p.is_relative() && base.join(&p).is_file() {
        p = base.join(&p);
    }
    if !p.is_file() {
        return Err(format!("image {file} does not exist"));
    }
    let size =
        image::image_dimensions(&p).map_err(|e| format!("image {file} cannot be read: {e}"))?;
    Ok((p, size))
}

/// [`load_annotations`] on the text of an annotation file (`path` names it in errors and
/// origins). `locate` finds the image of a line from its path as written: the image's
/// path and `(width, height)`, or why it cannot be used (the line is then bad).
pub fn parse_annotations(
    text: &str,
    path: &Path,
    num_classes: usize,
    policy: BadLinePolicy,
    mut locate: impl FnMut(&str) -> std::result::Result<(PathBuf, (u32, u32)), String>,
) -> Result<Annotations> {
    let mut out = Annotations::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, num_classes, &mut locate) {
            Ok(mut s) => {
                s.origin = format!("{}:{line_no}", path.display());
                out.samples.push(s)
            }
            Err(message) => match policy {
                BadLinePolicy::Refuse => {
                    return Err(Error::Annotation {
                        path: path.to_path_buf(),
                        line: line_no,
                        message,
                    })
                }
                BadLinePolicy::Skip => out
                    .skipped
                    .push(format!("{}:{line_no}: {message}", path.display())),
            },
        }
    }
    Ok(out)
}

fn parse_line(
    line: &str,
    num_classes: usize,
    locate: &mut impl FnMut(&str) -> std::result::Result<(PathBuf, (u32, u32)), String>,
) -> std::result::Result<Sample, String> {
    let mut parts = line.split_whitespace();
    let file = parts.next().ok_or("blank line")?;
    let (p, (iw, ih)) = locate(file)?;
    let mut boxes = Vec::new();
    for (k, b) in parts.enumerate() {
        let v: Vec<&str> = b.split(',').collect();
        if v.len() != 5 {
            return Err(format!("box {} `{b}` must be x1,y1,x2,y2,class", k + 1));
        }
        let mut n = [0i64; 5];
        for (slot, s) in n.iter_mut().zip(&v) {
            *slot = s
                .parse::<i64>()
                .map_err(|_| format!("box {} `{b}`: `{s}` is not an integer", k + 1))?;
        }
        let [x1, y1, x2, y2, c] = n;
        if x2 <= x1 || y2 <= y1 {
            return Err(format!("box {} `{b}` is inverted or empty", k + 1));
        }
        if x1 < 0 || y1 < 0 || x2 > iw as i64 || y2 > ih as i64 {
            return Err(format!(
                "box {} `{b}` lies outside the {iw}x{ih} image",
                k + 1
            ));
        }
        if c < 0 || c as usize >= num_classes {
            return Err(format!(
                "box {} `{b}`: class {c} is not one of the {num_classes} classes",
                k + 1
            ));
        }
        boxes.push(AnnBox {
            x1: x1 as f32,
            y1: y1 as f32,
            x2: x2 as f32,
            y2: y2 as f32,
            class_id: c as usize,
        });
    }
    Ok(Sample {
        path: p,
        boxes,
        image_size: (iw, ih),
        origin: String::new(),
    })
}

/// Writes samples as an annotation file (the reference's format).
pub fn format_line(path: &str, boxes: &[AnnBox]) -> String {
    let mut s = path.to_string();
    for b in boxes {
        s.push_str(&format!(
            " {},{},{},{},{}",
            b.x1.round() as i64,
            b.y1.round() as i64,
            b.x2.round() as i64,
            b.y2.round() as i64,
            b.class_id
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_parsed_with_the_images_the_caller_locates() {
        let text = "a.jpg 1,2,10,20,0\n\nb.jpg 0,0,100,5,1\nnone.jpg\n";
        let mut asked = Vec::new();
        let got = parse_annotations(text, Path::new("t.txt"), 2, BadLinePolicy::Skip, |f| {
            asked.push(f.to_string());
            match f {
                "none.jpg" => Err(format!("image {f} does not exist")),
                _ => Ok((PathBuf::from("imgs").join(f), (50, 40))),
            }
        })
        .unwrap();
        assert_eq!(asked, ["a.jpg", "b.jpg", "none.jpg"]);
        assert_eq!(got.samples.len(), 1);
        assert_eq!(got.samples[0].path, Path::new("imgs/a.jpg"));
        assert_eq!(got.samples[0].image_size, (50, 40));
        assert_eq!(got.samples[0].origin, "t.txt:1");
        assert_eq!(
            got.skipped,
            [
                "t.txt:3: box 1 `0,0,100,5,1` lies outside the 50x40 image",
                "t.txt:4: image none.jpg does not exist"
            ]
        );
    }

    #[test]
    fn reports_every_kind_of_bad_line_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        image::RgbImage::new(40, 30).save(&img).unwrap();
        let ann = dir.path().join("train.txt");
        let a = img.display().to_string();
        let text = format!(
            "{a} 1,2,10,20,0 5,5,39,29,1\n\n{a}\nmissing.png 1,1,2,2,0\n{a} 10,10,5,20,0\n{a} 1,1,50,20,0\n{a} 1,1,5,5,7\n{a} 1,1,5\n{a} a,b,c,d,e\n"
        );
        std::fs::write(&ann, text).unwrap();
        let got = load_annotations(&ann, 2, BadLinePolicy::Skip).unwrap();
        assert_eq!(got.samples.len(), 2);
        assert_eq!(got.samples[0].boxes.len(), 2);
        assert!(got.samples[1].boxes.is_empty());
        let want = [
            (4, "does not exist"),
            (5, "inverted"),
            (6, "outside the 40x30"),
            (7, "class 7"),
            (8, "x1,y1,x2,y2,class"),
            (9, "not an integer"),
        ];
        assert_eq!(got.skipped.len(), want.len(), "{:?}", got.skipped);
        for (s, (line, what)) in got.skipped.iter().zip(want) {
            assert!(
                s.contains(&format!("train.txt:{line}:")) && s.contains(what),
                "{s}"
            );
        }
        let e = load_annotations(&ann, 2, BadLinePolicy::Refuse).unwrap_err();
        assert!(
            e.to_string()
                .contains("train.txt:4: image missing.png does not exist"),
            "{e}"
        );
    }
}
