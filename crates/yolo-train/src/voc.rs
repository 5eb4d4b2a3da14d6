//! A VOCdevkit folder to annotation files, as the reference's `voc_annotation.py`.
//!
//! Layout: `VOCdevkit/VOC{year}/Annotations/ID.xml`, `JPEGImages/ID.jpg`,
//! `ImageSets/Main/{train,val,trainval,test}.txt`. Two steps, either or both
//! (`annotation_mode` 0, 1, 2 in the reference):
//!
//! 1. [`write_image_sets`]: a seeded split of the XML files into trainval/test
//!    (`trainval_percent`, 0.9) and of trainval into train/val (`train_percent`, 0.9),
//!    written as the four lists in `ImageSets/Main` (ids in name order);
//! 2. [`write_annotation_files`]: for each set (`train`, `val`), `{year}_{set}.txt` with
//!    one line per image, `DEVKIT/VOC{year}/JPEGImages/ID.jpg x1,y1,x2,y2,cls ...`, leaving
//!    out `difficult` objects and objects whose class is not in the list, as the reference
//!    (which does so silently; here each unknown class is reported).
//!
//! Differences: the reference lists the XML files in `os.listdir` order (whatever the file
//! system gives) and draws with Python's `random`; here the names are sorted and the draw is
//! a seeded ChaCha8, so a split is the same on every machine. A malformed XML file, a
//! missing `name` or `bndbox`, or a coordinate that is not a number stops with an error
//! naming the file (the reference dies with a Python traceback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use yolo_io::Overwrite;

use crate::{Error, Result};

/// One `<object>` of a VOC XML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocObject {
    /// `<name>`.
    pub name: String,
    /// `<difficult>` is 1 (absent: false).
    pub difficult: bool,
    /// `<bndbox>` `xmin, ymin, xmax, ymax`, truncated to integers as the reference's
    /// `int(float(text))`.
    pub bbox: [i64; 4],
}

/// What a VOC XML file holds that the tools use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocXml {
    /// `<size><width>`, when present and a number.
    pub width: Option<i64>,
    /// `<size><height>`, when present and a number.
    pub height: Option<i64>,
    /// The objects, in file order.
    pub objects: Vec<VocObject>,
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

fn child_text<'a>(n: roxmltree::Node<'a, '_>, tag: &str) -> Option<&'a str> {
    child(n, tag).and_then(|c| c.text()).map(str::trim)
}

/// `int(float(text))`: a decimal number truncated towards zero.
fn int_of_float(s: &str) -> Option<i64> {
    let v: f64 = s.trim().parse().ok()?;
    v.is_finite().then_some(v.trunc() as i64)
}

/// Parses VOC XML text; `path` names the file in errors.
pub fn parse_voc_str(text: &str, path: &Path) -> Result<VocXml> {
    let bad = |message: String| Error::Voc {
        path: path.to_path_buf(),
        message,
    };
    let doc = roxmltree::Document::parse(text).map_err(|e| Error::Voc {
        path: path.to_path_buf(),
        message: format!("not well-formed XML: {e}"),
    })?;
    let root = doc.root_element();
    let size = child(root, "size");
    let dim = |tag: &str| size.and_then(|s| child_text(s, tag)).and_then(int_of_float);
    let mut objects = Vec::new();
    for (k, obj) in root
        .descendants()
        .filter(|n| n.has_tag_name("object"))
        .enumerate()
    {
        let what = |m: &str| bad(format!("object {}: {m}", k + 1));
        let name = child_text(obj, "name").ok_or_else(|| what("no <name>"))?;
        let difficult = match child(obj, "difficult") {
            None => false,
            Some(d) => {
                let t = d.text().unwrap_or("").trim();
                t.parse::<i64>()
                    .map_err(|_| what(&format!("<difficult> `{t}` is not an integer")))?
                    == 1
            }
        };
        let bb = child(obj, "bndbox").ok_or_else(|| what("no <bndbox>"))?;
        let mut bbox = [0i64; 4];
        for (slot, tag) in bbox.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            let t = child_text(bb, tag).ok_or_else(|| what(&format!("no <bndbox><{tag}>")))?;
            *slot =
                int_of_float(t).ok_or_else(|| what(&format!("<{tag}> `{t}` is not a number")))?;
        }
        objects.push(VocObject {
            name: name.to_string(),
            difficult,
            bbox,
        });
    }
    Ok(VocXml {
        width: dim("width"),
        height: dim("height"),
        objects,
    })
}

/// Reads and parses a VOC XML file; errors name it.
pub fn parse_voc_xml(path: &Path) -> Result<VocXml> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_voc_str(&text, path)
}

/// The `*.xml` files of a folder, sorted by name.
pub fn xml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "xml") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// The split settings (the reference's defaults: 0.9, 0.9, seed 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitConfig {
    /// Fraction of the images in train + val (the rest is test).
    pub trainval_percent: f64,
    /// Fraction of train + val in train (the rest is val).
    pub train_percent: f64,
    /// Seed of the draw.
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            trainval_percent: 0.9,
            train_percent: 0.9,
            seed: 0,
        }
    }
}

/// Image ids of each list, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// `trainval.txt`.
    pub trainval: Vec<String>,
    /// `train.txt`.
    pub train: Vec<String>,
    /// `val.txt`.
    pub val: Vec<String>,
    /// `test.txt`.
    pub test: Vec<String>,
}

/// Splits `ids` as the reference: `tv = int(n * trainval_percent)` ids drawn at random
/// for trainval, `int(tv * train_percent)` of those for train; each list keeps the order
/// of `ids`.
pub fn split_ids(ids: &[String], cfg: &SplitConfig) -> Result<Split> {
    for (name, p) in [
        ("trainval_percent", cfg.trainval_percent),
        ("train_percent", cfg.train_percent),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Config(format!("{name} {p} is not within 0..1")));
        }
    }
    let n = ids.len();
    let tv = (n as f64 * cfg.trainval_percent) as usize;
    let tr = (tv as f64 * cfg.train_percent) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let trainval = rand::seq::index::sample(&mut rng, n, tv).into_vec();
    let train: Vec<usize> = rand::seq::index::sample(&mut rng, tv, tr)
        .into_iter()
        .map(|i| trainval[i])
        .collect();
    let (mut in_tv, mut in_tr) = (vec![false; n], vec![false; n]);
    trainval.iter().for_each(|&i| in_tv[i] = true);
    train.iter().for_each(|&i| in_tr[i] = true);
    let mut s = Split::default();
    for (i, id) in ids.iter().enumerate() {
        if in_tv[i] {
            s.trainval.push(id.clone());
            if in_tr[i] {
                s.train.push(id.clone());
            } else {
                s.val.push(id.clone());
            }
        } else {
            s.test.push(id.clone());
        }
    }
    Ok(s)
}

/// `devkit/VOC{year}`.
pub fn voc_dir(devkit: &Path, year: &str) -> PathBuf {
    devkit.join(format!("VOC{year}"))
}

/// Step 1: splits `Annotations/*.xml` and writes `ImageSets/Main/{trainval,train,val,test}.txt`
/// (one id per line, as the reference).
pub fn write_image_sets(devkit: &Path, year: &str, cfg: &SplitConfig) -> Result<Split> {
    let voc = voc_dir(devkit, year);
    let ids: Vec<String> = xml_files(&voc.join("Annotations"))?
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let split = split_ids(&ids, cfg)?;
    let main = voc.join("ImageSets").join("Main");
    std::fs::create_dir_all(&main).map_err(|e| Error::io(&main, e))?;
    for (name, list) in [
        ("trainval", &split.trainval),
        ("train", &split.train),
        ("val", &split.val),
        ("test", &split.test),
    ] {
        let p = main.join(format!("{name}.txt"));
        let text: String = list.iter().map(|id| format!("{id}\n")).collect();
        yolo_io::write_bytes_atomic(&p, Overwrite::Allow, text.as_bytes())?;
    }
    Ok(split)
}

/// The class names found in `Annotations/*.xml` (every object, difficult ones included),
/// sorted: for a data set that comes without a class list.
pub fn discover_classes(devkit: &Path, year: &str) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for p in xml_files(&voc_dir(devkit, year).join("Annotations"))? {
        for o in parse_voc_xml(&p)?.objects {
            names.insert(o.name);
        }
    }
    Ok(names.into_iter().collect())
}

/// What [`write_annotation_files`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnnotationReport {
    /// Each file written and its number of images.
    pub files: Vec<(PathBuf, usize)>,
    /// Objects written per class (in class-list order).
    pub class_counts: Vec<usize>,
    /// Difficult objects left out.
    pub difficult: usize,
    /// Objects left out because their class is not in the list, per class name.
    pub unknown: BTreeMap<String, usize>,
    /// `file.xml: object N: class `x` is not in the class list` for each such object.
    pub unknown_objects: Vec<String>,
    /// Images listed in a set whose `JPEGImages/ID.jpg` does not exist.
    pub missing_images: Vec<PathBuf>,
}

/// Step 2: writes `out_dir/{year}_{set}.txt` for each of `sets` from
/// `ImageSets/Main/{set}.txt`. Image paths start with `devkit` made absolute when
/// `absolute` (as the reference), or as given otherwise; a path with white space is refused
/// (the annotation format separates fields with it). Class ids are indexes in `classes`.
pub fn write_annotation_files(
    devkit: &Path,
    year: &str,
    sets: &[&str],
    classes: &[String],
    out_dir: &Path,
    absolute: bool,
) -> Result<AnnotationReport> {
    let base = if absolute {
        std::path::absolute(devkit).map_err(|e| Error::io(devkit, e))?
    } else {
        devkit.to_path_buf()
    };
    let base_str = base.display().to_string();
    if base_str.chars().any(char::is_whitespace) {
        return Err(Error::Config(format!(
            "the data set path `{base_str}` contains white space, which the annotation format cannot hold: move or rename it"
        )));
    }
    let voc = voc_dir(devkit, year);
    let mut rep = AnnotationReport {
        class_counts: vec![0; classes.len()],
        ..Default::default()
    };
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    for set in sets {
        let list = voc
            .join("ImageSets")
            .join("Main")
            .join(format!("{set}.txt"));
        let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
        let ids: Vec<&str> = text.split_whitespace().collect();
        let mut out = String::new();
        for id in &ids {
            let image = voc.join("JPEGImages").join(format!("{id}.jpg"));
            if !image.is_file() {
                rep.missing_images.push(image);
            }
            out.push_str(&format!("{base_str}/VOC{year}/JPEGImages/{id}.jpg"));
            let xml = voc.join("Annotations").join(format!("{id}.xml"));
            for (k, o) in parse_voc_xml(&xml)?.objects.iter().enumerate() {
                let Some(c) = classes.iter().position(|n| *n == o.name) else {
                    *rep.unknown.entry(o.name.clone()).or_default() += 1;
                    rep.unknown_objects.push(format!(
                        "{}: object {}: class `{}` is not in the class list",
                        xml.display(),
                        k + 1,
                        o.name
                    ));
                    continue;
                };
                if o.difficult {
                    rep.difficult += 1;
                    continue;
                }
                let [x1, y1, x2, y2] = o.bbox;
                out.push_str(&format!(" {x1},{y1},{x2},{y2},{c}"));
                rep.class_counts[c] += 1;
            }
            out.push('\n');
        }
        let path = out_dir.join(format!("{year}_{set}.txt"));
        yolo_io::write_bytes_atomic(&path, Overwrite::Allow, out.as_bytes())?;
        rep.files.push((path, ids.len()));
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(objects: &[(&str, u8, [&str; 4])]) -> String {
        let mut s = String::from(
            "<annotation><folder>VOC2007</folder><size><width>100</width><height>80</height><depth>3</depth></size>",
        );
        for (name, diff, b) in objects {
            s.push_str(&format!(
                "<object><name>{name}</name><pose>Left</pose><difficult>{diff}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                b[0], b[1], b[2], b[3]
            ));
        }
        s + "</annotation>"
    }

    /// A VOCdevkit with `n` images `000000`.. whose XML the test controls.
    fn devkit(root: &Path, xmls: &[String]) -> PathBuf {
        let dk = root.join("VOCdevkit");
        let voc = dk.join("VOC2007");
        for d in ["Annotations", "JPEGImages", "ImageSets/Main"] {
            std::fs::create_dir_all(voc.join(d)).unwrap();
        }
        for (i, x) in xmls.iter().enumerate() {
            std::fs::write(voc.join(format!("Annotations/{i:06}.xml")), x).unwrap();
            std::fs::write(voc.join(format!("JPEGImages/{i:06}.jpg")), b"").unwrap();
        }
        dk
    }

    #[test]
    fn parses_objects_as_the_reference() {
        let p = Path::new("a.xml");
        let x = parse_voc_str(
            &xml(&[
                ("dog", 0, ["1", "2.9", "30.5", "40"]),
                ("cat", 1, ["5", "6", "7", "8"]),
            ]),
            p,
        )
        .unwrap();
        assert_eq!((x.width, x.height), (Some(100), Some(80)));
        assert_eq!(x.objects.len(), 2);
        assert_eq!(x.objects[0].bbox, [1, 2, 30, 40]);
        assert!(!x.objects[0].difficult && x.objects[1].difficult);
        // <difficult> may be missing; <part> boxes inside an object are not objects
        let x = parse_voc_str(
            "<annotation><object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox><part><name>head</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></part></object></annotation>",
            p,
        )
        .unwrap();
        assert_eq!(x.objects.len(), 1);
        assert_eq!(x.width, None);
        let e = parse_voc_str(&xml(&[("dog", 0, ["1", "x", "3", "4"])]), p).unwrap_err();
        assert!(
            e.to_string().contains("a.xml") && e.to_string().contains("<ymin> `x`"),
            "{e}"
        );
    }

    #[test]
    fn split_is_seeded_and_sized_as_the_reference() {
        let ids: Vec<String> = (0..100).map(|i| format!("{i:06}")).collect();
        let cfg = SplitConfig::default();
        let a = split_ids(&ids, &cfg).unwrap();
        assert_eq!(
            (a.trainval.len(), a.train.len(), a.val.len(), a.test.len()),
            (90, 81, 9, 10)
        );
        assert_eq!(a, split_ids(&ids, &cfg).unwrap());
        let b = split_ids(&ids, &SplitConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(a.test, b.test);
        let mut all: Vec<_> = a
            .train
            .iter()
            .chain(&a.val)
            .chain(&a.test)
            .cloned()
            .collect();
        all.sort();
        assert_eq!(all, ids);
        assert!(a.train.windows(2).all(|w| w[0] < w[1]));
        assert!(split_ids(
            &ids,
            &SplitConfig {
                train_percent: 1.5,
                ..cfg
            }
        )
        .is_err());
    }

    #[test]
    fn devkit_to_annotation_files() {
        let dir = tempfile::tempdir().unwrap();
        let xmls: Vec<String> = (0..10)
            .map(|i| {
                xml(&[
                    ("dog", 0, ["1", "2", "30", "40"]),
                    ("cat", (i % 2) as u8, ["5", "6", "70", "60"]),
                    ("zebra", 0, ["0", "0", "5", "5"]),
                ])
            })
            .collect();
        let dk = devkit(dir.path(), &xmls);
        let split = write_image_sets(&dk, "2007", &SplitConfig::default()).unwrap();
        assert_eq!(
            (split.train.len(), split.val.len(), split.test.len()),
            (8, 1, 1)
        );
        let main = dk.join("VOC2007/ImageSets/Main");
        assert_eq!(
            std::fs::read_to_string(main.join("val.txt")).unwrap(),
            format!("{}\n", split.val[0])
        );
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let out = dir.path().join("out");
        let rep =
            write_annotation_files(&dk, "2007", &["train", "val"], &classes, &out, false).unwrap();
        assert_eq!(rep.files.len(), 2);
        assert_eq!(rep.files[0], (out.join("2007_train.txt"), 8));
        assert_eq!(rep.unknown.get("zebra"), Some(&9));
        assert_eq!(rep.unknown_objects.len(), 9);
        assert!(rep.unknown_objects[0].contains(".xml: object 3: class `zebra`"));
        assert!(rep.missing_images.is_empty());
        let text = std::fs::read_to_string(out.join("2007_train.txt")).unwrap();
        let first = text.lines().next().unwrap();
        let id = &split.train[0];
        let odd = id.ends_with(['1', '3', '5', '7', '9']);
        let want = format!(
            "{}/VOC2007/JPEGImages/{id}.jpg 1,2,30,40,1{}",
            dk.display(),
            if odd { "" } else { " 5,6,70,60,0" }
        );
        assert_eq!(first, want);
        assert_eq!(rep.class_counts[1], 9);
        assert_eq!(rep.class_counts[0] + rep.difficult, 9);
        // absolute paths as the reference
        let rep = write_annotation_files(&dk, "2007", &["val"], &classes, &out, true).unwrap();
        let text = std::fs::read_to_string(&rep.files[0].0).unwrap();
        assert!(Path::new(text.split(' ').next().unwrap()).is_absolute());
        assert_eq!(
            discover_classes(&dk, "2007").unwrap(),
            vec!["cat", "dog", "zebra"]
        );
    }

    #[test]
    fn malformed_xml_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut xmls = vec![xml(&[("dog", 0, ["1", "2", "30", "40"])]); 3];
        xmls[1] = "<annotation><object><name>dog</name></annotation>".into();
        let dk = devkit(dir.path(), &xmls);
        let main = dk.join("VOC2007/ImageSets/Main");
        std::fs::write(main.join("train.txt"), "000000\n000001\n000002\n").unwrap();
        let e = write_annotation_files(
            &dk,
            "2007",
            &["train"],
            &["dog".to_string()],
            &dir.path().join("out"),
            false,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("000001.xml") && msg.contains("not well-formed XML"),
            "{msg}"
        );
        let e = discover_classes(&dk, "2007").unwrap_err();
        assert!(e.to_string().contains("000001.xml"), "{e}");
        // a path with a space is refused
        let spaced = dir.path().join("my data");
        std::fs::create_dir_all(&spaced).unwrap();
        let e =
            write_annotation_files(&spaced, "2007", &["train"], &[], &spaced, false).unwrap_err();
        assert!(e.to_string().contains("white space"), "{e}");
    }
}
