//! The H.264 track of an MP4 file: its parameters (from `avc1`/`avcC`) and its samples in
//! decoding order, walked through the sample tables in one pass (offset, size and
//! presentation time of each), and the conversion of a sample's length-prefixed NAL
//! units (AVCC) into the start-code form (Annex B) the decoder reads.

use std::path::Path;

use crate::Error;

/// Annex B start code.
const START: [u8; 4] = [0, 0, 0, 1];

/// What the reader needs of the H.264 track.
#[derive(Debug)]
pub(crate) struct H264Track {
    /// Ticks per second of the sample times.
    pub timescale: u32,
    /// The track's length in ticks (`mdhd`).
    pub duration: u64,
    /// Coded size from the sample entry.
    pub width: u16,
    /// Coded size from the sample entry.
    pub height: u16,
    /// `AVCProfileIndication` of `avcC`.
    pub profile: u8,
    /// Bytes of each NAL unit's length prefix (1, 2 or 4).
    pub nal_length_size: usize,
    /// The SPS and PPS NAL units of `avcC`, in Annex B form.
    pub parameter_sets: Vec<u8>,
    /// Presentation time of the first shown sample (the edit list's media time).
    pub start_pts: i64,
    /// The sample tables.
    pub table: SampleTable,
}

/// The sample tables of a track (`stts`, `ctts`, `stsc`, `stsz`, `stco`/`co64`).
#[derive(Debug)]
pub(crate) struct SampleTable {
    /// `(count, delta)` runs of decoding-time deltas.
    stts: Vec<(u32, u32)>,
    /// `(count, offset)` runs of composition offsets (empty: none).
    ctts: Vec<(u32, i32)>,
    /// `(first chunk from 1, samples per chunk)` runs.
    stsc: Vec<(u32, u32)>,
    /// One size for all samples, or
    fixed_size: u32,
    /// one size per sample.
    sizes: Vec<u32>,
    /// File offset of each chunk.
    chunks: Vec<u64>,
    /// Number of samples.
    pub count: u32,
}

/// One sample in decoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// From 0, in decoding order.
    pub index: u32,
    /// File offset.
    pub offset: u64,
    /// Bytes.
    pub size: u32,
    /// Presentation time in track ticks (decoding time + composition offset).
    pub pts: i64,
}

impl H264Track {
    /// The H.264 track of `track` (its sample entry must be `avc1`).
    pub fn from_track(path: &Path, track: &mp4::Mp4Track) -> Result<Self, Error> {
        let trak = &track.trak;
        let stbl = &trak.mdia.minf.stbl;
        let avc1 =
            stbl.stsd.avc1.as_ref().ok_or_else(|| {
                Error::malformed(path, "the H.264 track has no avc1 sample entry")
            })?;
        let avcc = &avc1.avcc;
        let mut parameter_sets = Vec::new();
        for nal in avcc
            .sequence_parameter_sets
            .iter()
            .chain(&avcc.picture_parameter_sets)
        {
            parameter_sets.extend_from_slice(&START);
            parameter_sets.extend_from_slice(&nal.bytes);
        }
        if avcc.sequence_parameter_sets.is_empty() || avcc.picture_parameter_sets.is_empty() {
            return Err(Error::malformed(path, "the avcC box has no SPS or no PPS"));
        }
        let chunks = match (&stbl.stco, &stbl.co64) {
            (_, Some(co64)) => co64.entries.clone(),
            (Some(stco), None) => stco.entries.iter().map(|&o| o as u64).collect(),
            (None, None) => return Err(Error::malformed(path, "no chunk offsets (stco/co64)")),
        };
        let table = SampleTable {
            stts: stbl
                .stts
                .entries
                .iter()
                .map(|e| (e.sample_count, e.sample_delta))
                .collect(),
            ctts: stbl
                .ctts
                .as_ref()
                .map(|c| {
                    c.entries
                        .iter()
                        .map(|e| (e.sample_count, e.sample_offset))
                        .collect()
                })
                .unwrap_or_default(),
            stsc: stbl
                .stsc
                .entries
                .iter()
                .map(|e| (e.first_chunk, e.samples_per_chunk))
                .collect(),
            fixed_size: stbl.stsz.sample_size,
            sizes: stbl.stsz.sample_sizes.clone(),
            chunks,
            count: stbl.stsz.sample_count,
        };
        if table.fixed_size == 0 && table.sizes.len() != table.count as usize {
            return Err(Error::malformed(path, "the sample size table is short"));
        }
        // The first edit that is not an empty one says where the presentation starts.
        let start_pts = trak
            .edts
            .as_ref()
            .and_then(|e| e.elst.as_ref())
            .and_then(|elst| {
                elst.entries
                    .iter()
                    .map(|e| e.media_time as i64)
                    .find(|&t| t >= 0 && t != u32::MAX as i64)
            })
            .unwrap_or(0);
        Ok(Self {
            timescale: trak.mdia.mdhd.timescale.max(1),
            duration: trak.mdia.mdhd.duration,
            width: avc1.width,
            height: avc1.height,
            profile: avcc.avc_profile_indication,
            nal_length_size: avcc.length_size_minus_one as usize % 4 + 1,
            parameter_sets,
            start_pts,
            table,
        })
    }
}

/// Walks a [`SampleTable`] in decoding order, each table once.
#[derive(Debug, Default)]
pub(crate) struct SampleCursor {
    index: u32,
    started: bool,
    dts: i64,
    stts_i: usize,
    stts_used: u32,
    ctts_i: usize,
    ctts_used: u32,
    chunk: usize,
    stsc_i: usize,
    in_chunk_left: u32,
    offset: u64,
}

impl SampleCursor {
    /// The next sample of `t`, `Ok(None)` after the last; an error text when the tables
    /// do not add up.
    pub fn next(&mut self, t: &SampleTable) -> Result<Option<Sample>, String> {
        if self.index >= t.count {
            return Ok(None);
        }
        // chunk: move on when the current one is used up (empty chunks are passed over)
        while self.in_chunk_left == 0 {
            if self.started {
                self.chunk += 1;
            }
            self.started = true;
            while self.stsc_i + 1 < t.stsc.len()
                && t.stsc[self.stsc_i + 1].0 as usize <= self.chunk + 1
            {
                self.stsc_i += 1;
            }
            let Some(&(_, per_chunk)) = t.stsc.get(self.stsc_i) else {
                return Err("the sample-to-chunk table is empty".into());
            };
            let Some(&offset) = t.chunks.get(self.chunk) else {
                return Err(format!(
                    "sample {} of {} lies past the last chunk ({})",
                    self.index + 1,
                    t.count,
                    t.chunks.len()
                ));
            };
            self.offset = offset;
            self.in_chunk_left = per_chunk;
        }
        let size = if t.fixed_size != 0 {
            t.fixed_size
        } else {
            t.sizes[self.index as usize]
        };
        // composition offset
        let mut cts = 0i64;
        if !t.ctts.is_empty() {
            while self.ctts_i < t.ctts.len() && self.ctts_used >= t.ctts[self.ctts_i].0 {
                self.ctts_i += 1;
                self.ctts_used = 0;
            }
            let Some(&(_, off)) = t.ctts.get(self.ctts_i) else {
                return Err(format!("no composition offset for sample {}", self.index));
            };
            cts = off as i64;
            self.ctts_used += 1;
        }
        let sample = Sample {
            index: self.index,
            offset: self.offset,
            size,
            pts: self.dts + cts,
        };
        // decoding time of the next one
        while self.stts_i < t.stts.len() && self.stts_used >= t.stts[self.stts_i].0 {
            self.stts_i += 1;
            self.stts_used = 0;
        }
        let Some(&(_, delta)) = t.stts.get(self.stts_i) else {
            return Err(format!("no decoding time for sample {}", self.index));
        };
        self.stts_used += 1;
        self.dts += delta as i64;
        self.offset += size as u64;
        self.in_chunk_left -= 1;
        self.index += 1;
        Ok(Some(sample))
    }
}

/// Appends the NAL units of an AVCC `sample` (each prefixed by its length in
/// `length_size` bytes) to `out` in Annex B form; an error text when a length runs past
/// the sample.
pub(crate) fn avcc_to_annex_b(
    sample: &[u8],
    length_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(format!("{} stray bytes at the end of a sample", rest.len()));
        }
        let len = rest[..length_size]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        rest = &rest[length_size..];
        if len > rest.len() {
            return Err(format!(
                "a NAL unit of {len} bytes where {} are left",
                rest.len()
            ));
        }
        out.extend_from_slice(&START);
        out.extend_from_slice(&rest[..len]);
        rest = &rest[len..];
    }
    Ok(())
}

/// The NAL units of an Annex B stream, without their start codes.
pub(crate) fn annex_b_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
            // a four-byte start code's leading zero, and trailing zeros, are not the unit's
            while end > s && stream[end - 1] == 0 {
                end -= 1;
            }
            &stream[s..end]
        })
        .collect()
}
