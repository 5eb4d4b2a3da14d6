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
        if pos + size > len {
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
