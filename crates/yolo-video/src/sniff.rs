//! Telling video files from images by their first bytes.

use std::io::Read;
use std::path::Path;

use crate::Error;

/// The container a file's first bytes announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// ISO base media (MP4, M4V, 3GP) or QuickTime (MOV): the supported one.
    Mp4,
    /// Another video container, by name (`Matroska/WebM`, `AVI`, …): refused with a hint.
    Other(&'static str),
}

/// How many of a file's first bytes [`sniff`] looks at.
pub const SNIFF_LEN: usize = 377;

/// Brands of `ftyp` that are still images (HEIF, AVIF), not videos.
const IMAGE_BRANDS: &[&[u8; 4]] = &[b"heic", b"heix", b"mif1", b"msf1", b"avif", b"heim"];

/// The video container `head` (the file's first bytes: [`SNIFF_LEN`] are enough, fewer
/// are accepted) starts with, or `None` when it does not look like a video.
pub fn sniff(head: &[u8]) -> Option<Container> {
    let at = |i: usize, magic: &[u8]| head.get(i..i + magic.len()) == Some(magic);
    if at(4, b"ftyp") {
        let brand = head.get(8..12)?;
        return (!IMAGE_BRANDS.iter().any(|b| b.as_slice() == brand)).then_some(Container::Mp4);
    }
    // QuickTime files of old may start with another top-level box.
    if [&b"moov"[..], b"mdat", b"wide", b"free", b"skip", b"pnot"]
        .iter()
        .any(|m| at(4, m))
    {
        return Some(Container::Mp4);
    }
    let name = if at(0, &[0x1a, 0x45, 0xdf, 0xa3]) {
        "Matroska/WebM"
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        "AVI"
    } else if at(0, b"FLV\x01") {
        "FLV"
    } else if at(0, b"OggS") {
        "Ogg"
    } else if at(0, &[0x30, 0x26, 0xb2, 0x75, 0x8e, 0x66, 0xcf, 0x11]) {
        "ASF/WMV"
    } else if at(0, &[0, 0, 1, 0xba]) {
        "MPEG program stream"
    } else if is_ts(head) {
        "MPEG transport stream"
    } else if at(0, &[0, 0, 0, 1]) && head.get(4).is_some_and(|b| b & 0x1f == 7 || b & 0x1f == 9) {
        "raw H.264 (Annex B)"
    } else {
        return None;
    };
    Some(Container::Other(name))
}

/// Three MPEG-TS packet headers: the sync byte at 0, 188 and 376 (a GIF also starts with
/// 0x47, `G`; one stray `G` 188 bytes on is not enough).
fn is_ts(head: &[u8]) -> bool {
    !head.starts_with(b"GIF8") && [0, 188, 376].iter().all(|&i| head.get(i) == Some(&0x47))
}

/// [`sniff`] of the first bytes of the file at `path`.
pub fn sniff_file(path: &Path) -> Result<Option<Container>, Error> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    std::fs::File::open(path)
        .and_then(|f| f.take(SNIFF_LEN as u64).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(sniff(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_by_their_magic() {
        let mut mp4 = b"\0\0\0\x20ftypisom\0\0\x02\0".to_vec();
        assert_eq!(sniff(&mp4), Some(Container::Mp4));
        mp4[8..12].copy_from_slice(b"avif");
        assert_eq!(sniff(&mp4), None, "AVIF is an image");
        assert_eq!(sniff(b"\0\0\0\x08wide\0\0\0\0mdat"), Some(Container::Mp4));
        assert_eq!(
            sniff(&[0x1a, 0x45, 0xdf, 0xa3, 1, 2, 3]),
            Some(Container::Other("Matroska/WebM"))
        );
        assert_eq!(
            sniff(b"RIFF\0\0\0\0AVI LIST"),
            Some(Container::Other("AVI"))
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), None, "WebP is an image");
        let mut ts = vec![0u8; SNIFF_LEN];
        ts[0] = 0x47;
        ts[188] = 0x47;
        assert_eq!(sniff(&ts), None, "one packet is not a stream");
        ts[376] = 0x47;
        assert_eq!(sniff(&ts), Some(Container::Other("MPEG transport stream")));
        let mut gif = ts.clone();
        gif[..6].copy_from_slice(b"GIF89a");
        assert_eq!(sniff(&gif), None, "a GIF with G at 188 and 376 is a GIF");
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), None);
        assert_eq!(sniff(b"\xff\xd8\xff\xe0"), None);
        assert_eq!(sniff(b""), None);
    }
}
