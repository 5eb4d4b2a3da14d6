//! A first look at an MP4 file's boxes, before the `mp4` crate parses them: the
//! top-level boxes must fit in the file (a truncated file is named as such), and each
//! track's handler and sample-entry code say whether there is a video track and in which
//! codec, including codecs the `mp4` crate does not know.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::Error;

/// The largest `moov` box read into memory (its sample tables grow with the video's
/// length: about 12 bytes per frame, so 256 MiB is over 20 million frames).
const MAX_MOOV: u64 = 256 << 20;

/// A track as its `hdlr` and `stsd` boxes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrackKind {
    /// The handler: `vide`, `soun`, …
    pub handler: [u8; 4],
    /// The first sample entry's code: `avc1`, `hev1`, `mp4a`, … (`None` if missing).
    pub codec: Option<[u8; 4]>,
}

/// One box header in a byte slice or a file: `(code, header length, total length)`;
/// `len` is what is left from the box's start. A size of 0 runs to the end.
fn header(bytes: &[u8], len: u64) -> Option<([u8; 4], u64, u64)> {
    let size32 = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?) as u64;
    let code: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
    match size32 {
        0 => Some((code, 8, len)),
        1 => {
            let size = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
            Some((code, 16, size))
        }
        s => Some((code, 8, s)),
    }
}

/// The top-level boxes of `file` (`len` bytes): checks that each fits in the file and
/// returns the `moov` box's body.
pub(crate) fn read_moov(path: &Path, file: &mut File, len: u64) -> Result<Vec<u8>, Error> {
    let mut pos = 0u64;
    let mut moov = None;
    while pos < len {
        let mut head = [0u8; 16];
        let n = (len - pos).min(16) as usize;
        file.seek(SeekFrom::Start(pos))
            .and_then(|_| file.read_exact(&mut head[..n]))
            .map_err(|e| Error::io(path, e))?;
        let (code, hlen, size) = header(&head[..n], len - pos).ok_or_else(|| {
            Error::malformed(
                path,
                format!("a box header at byte {pos} is cut short (the file ends there)"),
            )
        })?;
        if size < hlen {
            return Err(Error::malformed(
                path,
                format!("the box at byte {pos} has an impossible size {size}"),
            ));
        }
        if size > len - pos {
            return Err(Error::malformed(
                path,
                format!(
                    "the '{}' box at byte {pos} needs {size} bytes but the file ends after {} (truncated?)",
                    String::from_utf8_lossy(&code),
                    len - pos
                ),
            ));
        }
        if &code == b"moov" {
            // The mp4 crate reads every moov box, this check only one: a file has one.
            if moov.is_some() {
                return Err(Error::malformed(
                    path,
                    format!("a second moov box at byte {pos}: a file has one"),
                ));
            }
            if size - hlen > MAX_MOOV {
                return Err(Error::malformed(
                    path,
                    format!("the moov box is {size} bytes, over {MAX_MOOV}"),
                ));
            }
            let mut body = vec![0u8; (size - hlen) as usize];
            file.seek(SeekFrom::Start(pos + hlen))
                .and_then(|_| file.read_exact(&mut body))
                .map_err(|e| Error::io(path, e))?;
            moov = Some(body);
        }
        pos += size;
    }
    moov.ok_or_else(|| Error::malformed(path, "no moov box (the index of the samples): truncated?"))
}

/// The boxes whose children the `mp4` crate reads in a loop that skips each child by its
/// declared size: a child of size 0 there would be read again and again, for ever.
const LOOPED_CONTAINERS: [&[u8; 4]; 13] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"mvex", b"udta", b"moof", b"traf",
    b"meta", b"ilst", b"dref",
];

/// Checks the boxes inside `moov` before the `mp4` crate walks them: in every container it
/// reads in a loop, each child must have a size of at least its header and fit in its
/// parent. A size of 0 ("to the end of the file") is only meaningful for a top-level
/// box; inside `moov` the crate would loop on it for ever (a finding of the `mp4` fuzz
/// target).
pub(crate) fn check_nested(path: &Path, moov: &[u8]) -> Result<(), Error> {
    check_children(path, b"moov", moov, 0)
}

/// [`check_nested`] for the children of one container body.
fn check_children(path: &Path, parent: &[u8; 4], body: &[u8], depth: usize) -> Result<(), Error> {
    // Real files nest a few levels deep; a deeper tree is made up.
    if depth > 16 {
        return Err(Error::malformed(path, "boxes nested more than 16 deep"));
    }
    let mut pos = 0usize;
    while pos < body.len() {
        let rest = &body[pos..];
        let bad = |what: String| {
            Error::malformed(
                path,
                format!(
                    "inside the '{}' box: {what}",
                    String::from_utf8_lossy(parent)
                ),
            )
        };
        let Some(head) = rest.get(0..8) else {
            return Err(bad(format!("{} stray bytes at the end", rest.len())));
        };
        let code: [u8; 4] = head[4..8].try_into().expect("4 bytes");
        let name = String::from_utf8_lossy(&code).into_owned();
        let (hlen, size) = match u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) {
            0 => return Err(bad(format!("the '{name}' box has size 0 (to the end of the file), which only a top-level box may have"))),
            1 => {
                let Some(large) = rest.get(8..16) else {
                    return Err(bad(format!("the '{name}' box's 64-bit size is cut short")));
                };
                (16u64, u64::from_be_bytes(large.try_into().expect("8 bytes")))
            }
            n => (8u64, u64::from(n)),
        };
        if size < hlen || size > rest.len() as u64 {
            return Err(bad(format!(
                "the '{name}' box has size {size}, but {} bytes are left",
                rest.len()
            )));
        }
        if LOOPED_CONTAINERS.contains(&&code) {
            let inner = &rest[hlen as usize..size as usize];
            // `meta` is a full box (4 bytes of version and flags) in MP4, a plain one in
            // QuickTime: the crate tells them apart by a zero first word.
            // `dref` has version, flags and an entry count (8 bytes) before its entries.
            let inner = if &code == b"meta" && inner.get(0..4) == Some(&[0; 4]) {
                &inner[4..]
            } else if &code == b"dref" {
                inner.get(8..).unwrap_or_default()
            } else {
                inner
            };
            check_children(path, &code, inner, depth + 1)?;
        }
        pos += size as usize;
    }
    Ok(())
}

/// The children of a box body: `(code, body)` for each box that fits.
fn children(body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = body.get(pos..)?;
        let (code, hlen, size) = header(rest, rest.len() as u64)?;
        if size < hlen || size > rest.len() as u64 {
            return None;
        }
        pos += size as usize;
        Some((code, &rest[hlen as usize..size as usize]))
    })
}

/// The first child of `body` with `code`.
fn child<'a>(body: &'a [u8], code: &[u8; 4]) -> Option<&'a [u8]> {
    children(body).find(|(c, _)| c == code).map(|(_, b)| b)
}

/// The handler and codec of each track of a `moov` body.
pub(crate) fn tracks(moov: &[u8]) -> Vec<TrackKind> {
    children(moov)
        .filter(|(c, _)| c == b"trak")
        .filter_map(|(_, trak)| {
            let mdia = child(trak, b"mdia")?;
            // hdlr: version and flags (4), pre_defined (4), handler_type (4)
            let handler: [u8; 4] = child(mdia, b"hdlr")?.get(8..12)?.try_into().ok()?;
            let codec = child(mdia, b"minf")
                .and_then(|m| child(m, b"stbl"))
                .and_then(|s| child(s, b"stsd"))
                // stsd: version and flags (4), entry count (4), then the first entry's box
                .and_then(|s| s.get(8..))
                .and_then(|entries| header(entries, entries.len() as u64))
                .map(|(code, _, _)| code);
            Some(TrackKind { handler, codec })
        })
        .collect()
}

/// A codec's name for the errors, from its sample-entry code.
pub(crate) fn codec_name(code: &[u8; 4]) -> String {
    let name = match code {
        b"avc1" | b"avc3" => "H.264",
        b"hev1" | b"hvc1" => "H.265/HEVC",
        b"av01" => "AV1",
        b"vp09" => "VP9",
        b"vp08" => "VP8",
        b"mp4v" => "MPEG-4 Part 2",
        b"jpeg" | b"mjpa" | b"mjpb" => "Motion JPEG",
        b"apch" | b"apcn" | b"apcs" | b"apco" | b"ap4h" | b"ap4x" => "Apple ProRes",
        b"s263" | b"h263" => "H.263",
        b"dvh1" | b"dvhe" => "Dolby Vision",
        _ => "an unknown codec",
    };
    format!("{name} ({})", String::from_utf8_lossy(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(code: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(code);
        v.extend_from_slice(body);
        v
    }

    fn trak(handler: &[u8; 4], entry: &[u8; 4]) -> Vec<u8> {
        let hdlr = bx(b"hdlr", &[&[0u8; 8][..], handler, &[0u8; 13]].concat());
        let stsd = bx(
            b"stsd",
            &[&[0u8, 0, 0, 0, 0, 0, 0, 1][..], &bx(entry, &[0; 8])].concat(),
        );
        let minf = bx(b"minf", &bx(b"stbl", &stsd));
        bx(b"trak", &bx(b"mdia", &[hdlr, minf].concat()))
    }

    #[test]
    fn handlers_and_codecs_of_the_tracks() {
        let moov = [trak(b"soun", b"mp4a"), trak(b"vide", b"hev1")].concat();
        assert_eq!(
            tracks(&moov),
            [
                TrackKind {
                    handler: *b"soun",
                    codec: Some(*b"mp4a")
                },
                TrackKind {
                    handler: *b"vide",
                    codec: Some(*b"hev1")
                }
            ]
        );
        assert_eq!(codec_name(b"hev1"), "H.265/HEVC (hev1)");
        // a box that claims more than there is ends the walk instead of panicking
        let mut cut = trak(b"vide", b"avc1");
        cut.truncate(cut.len() - 5);
        assert!(tracks(&cut).is_empty());
    }

    #[test]
    fn a_box_of_size_zero_inside_moov_is_refused() {
        let p = Path::new("loop.mp4");
        let good = trak(b"vide", b"avc1");
        assert!(check_nested(p, &good).is_ok());
        // an `stbl` holding a child of size 0, as the `mp4` fuzz target's input had
        let zero = [0u8, 0, 0, 0, b'f', b'r', b'e', b'e'];
        let stbl = bx(b"stbl", &zero);
        let bad = bx(b"trak", &bx(b"mdia", &bx(b"minf", &stbl)));
        let e = check_nested(p, &bad).unwrap_err().to_string();
        assert!(
            e.contains("'stbl'") && e.contains("size 0") && e.contains("loop.mp4"),
            "{e}"
        );
        // a child larger than its parent, and one smaller than its header
        let mut over = bx(b"trak", &bx(b"mdia", &[]));
        over[11] = 200;
        assert!(check_nested(p, &over)
            .unwrap_err()
            .to_string()
            .contains("size 200"));
        // a `dref` entry of size 0 (the second finding: the crate re-reads it up to the
        // entry count, 2^32 times)
        let dref = bx(b"dref", &[&[0u8, 0, 0, 0, 0, 0, 0, 9][..], &zero].concat());
        let bad = bx(b"trak", &bx(b"mdia", &bx(b"minf", &bx(b"dinf", &dref))));
        let e = check_nested(p, &bad).unwrap_err().to_string();
        assert!(e.contains("'dref'") && e.contains("size 0"), "{e}");
        let tiny = bx(b"trak", &[0, 0, 0, 3, b'a', b'b', b'c', b'd']);
        assert!(check_nested(p, &tiny)
            .unwrap_err()
            .to_string()
            .contains("size 3"));
    }

    #[test]
    fn a_box_past_the_end_is_a_truncated_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cut.mp4");
        let mut bytes = bx(b"ftyp", b"isom\0\0\0\0");
        bytes.extend_from_slice(&bx(b"mdat", &[7; 100])[..60]);
        std::fs::write(&p, &bytes).unwrap();
        let mut f = File::open(&p).unwrap();
        let e = read_moov(&p, &mut f, bytes.len() as u64).unwrap_err();
        assert!(
            e.to_string()
                .contains("'mdat' box at byte 16 needs 108 bytes"),
            "{e}"
        );
        assert!(e.to_string().contains("cut.mp4"), "{e}");
    }
}
