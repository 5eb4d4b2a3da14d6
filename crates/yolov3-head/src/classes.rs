//! Class names: the reference's `model_data/*_classes.txt`, built in from this crate's
//! `data/` (the workspace's `model_data/` holds identical copies, checked by a test).

use std::path::Path;

use crate::{Error, Result};

const COCO: &str = include_str!("../data/coco_classes.txt");
const VOC: &str = include_str!("../data/voc_classes.txt");

/// Class names, one per class id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassNames(Vec<String>);

impl ClassNames {
    /// Names from a list; there must be at least one.
    pub fn new(names: Vec<String>) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::Classes {
                source_name: "<list>".into(),
                message: "no class names".into(),
            });
        }
        Ok(Self(names))
    }

    /// The 80 COCO classes (built in: `data/coco_classes.txt`, the reference's
    /// `model_data/coco_classes.txt`).
    pub fn coco() -> Self {
        Self::parse(COCO, "coco_classes.txt").expect("embedded COCO class list parses")
    }

    /// The 20 Pascal VOC classes (built in: `data/voc_classes.txt`, the reference's
    /// `model_data/voc_classes.txt`).
    pub fn voc() -> Self {
        Self::parse(VOC, "voc_classes.txt").expect("embedded VOC class list parses")
    }

    /// Reads a classes file (see [`ClassNames::parse`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// One name per line, trimmed; blank lines are skipped. `source_name` names the
    /// text in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Err(Error::Classes {
                source_name: source_name.to_string(),
                message: "no class names (expected one name per line)".into(),
            });
        }
        Ok(Self(names))
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a list has at least one name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of class `id`, or `class{id}` past the end.
    pub fn name(&self, id: usize) -> String {
        self.0
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("class{id}"))
    }

    /// All names.
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lists() {
        let coco = ClassNames::coco();
        assert_eq!(coco.len(), 80);
        assert_eq!(coco.name(0), "person");
        assert_eq!(coco.name(16), "dog");
        let voc = ClassNames::voc();
        assert_eq!(voc.len(), 20);
        assert_eq!(voc.name(0), "aeroplane");
        assert_eq!(voc.name(20), "class20");
    }

    #[test]
    fn parse_trims_and_skips_blank_lines() {
        let c = ClassNames::parse(" cat \r\n\ntraffic light\n", "c.txt").unwrap();
        assert_eq!(c.names(), ["cat", "traffic light"]);
        let msg = ClassNames::parse("\n \n", "c.txt").unwrap_err().to_string();
        assert!(
            msg.contains("c.txt") && msg.contains("no class names"),
            "{msg}"
        );
    }
}
