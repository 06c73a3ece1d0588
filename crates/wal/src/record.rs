//! Framing of one log record: encoding, decoding and the search for a valid record
//! after a damaged one.

use std::fmt;

/// Kind byte of a version-1 entry record. Non-zero so that a zero-filled tail (a common
/// result of a crash during an append) never parses as a record.
pub(crate) const RECORD_KIND_ENTRY: u8 = 0xA7;

/// Bytes of the record header: kind (1) + payload length (4) + index (8) + CRC32C (4).
pub const RECORD_HEADER_BYTES: usize = 17;

/// Bytes of the header covered by the CRC before the payload (kind, length, index).
const RECORD_CRC_COVERED_HEADER_BYTES: usize = 13;

/// Largest payload one record may carry: 64 MiB.
///
/// Cost: recovery and reads allocate up to this much for one record, and a damaged
/// length field can never make them allocate more. Raft entries are small; a large
/// state change belongs in a snapshot.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Encodes the header of a record holding `payload` at `index`.
pub(crate) fn encode_header(index: u64, payload: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
    assert!(
        payload.len() <= RECORD_BYTES_MAX,
        "caller checks the record size limit"
    );
    let len = u32::try_from(payload.len()).expect("RECORD_BYTES_MAX fits in u32");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0] = RECORD_KIND_ENTRY;
    header[1..5].copy_from_slice(&len.to_le_bytes());
    header[5..13].copy_from_slice(&index.to_le_bytes());
    let crc = record_crc(&header, payload);
    header[13..17].copy_from_slice(&crc.to_le_bytes());
    header
}

/// CRC32C over the header fields before the CRC, then the payload.
fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..RECORD_CRC_COVERED_HEADER_BYTES]);
    crc32c::crc32c_append(crc, payload)
}

/// Total bytes a record with a payload of `len_bytes` occupies in a segment.
pub fn record_frame_bytes(len_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + len_bytes
}

/// One record parsed from the front of a byte slice.
#[derive(Debug)]
pub(crate) struct DecodedRecord<'a> {
    pub(crate) index: u64,
    pub(crate) payload: &'a [u8],
    pub(crate) frame_len: usize,
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    HeaderTruncated { available: usize },
    BadKind { kind: u8 },
    LengthTooLarge { len: u64 },
    PayloadTruncated { len: u64, available: usize },
    CrcMismatch { stored: u32, computed: u32 },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::HeaderTruncated { available } => write!(
                f,
                "record header truncated: {available} of {RECORD_HEADER_BYTES} bytes present"
            ),
            DecodeError::BadKind { kind } => write!(
                f,
                "unknown record kind byte {kind:#04x} (expected {RECORD_KIND_ENTRY:#04x})"
            ),
            DecodeError::LengthTooLarge { len } => write!(
                f,
                "record length {len} exceeds the limit of {RECORD_BYTES_MAX} bytes"
            ),
            DecodeError::PayloadTruncated { len, available } => {
                write!(f, "record payload truncated: {available} of {len} bytes present")
            }
            DecodeError::CrcMismatch { stored, computed } => write!(
                f,
                "record CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
        }
    }
}

/// Parses the fields of a header without checking the CRC: (kind, len, index).
fn parse_header(buf: &[u8]) -> Option<(u8, u64, u64)> {
    let header = buf.get(..RECORD_HEADER_BYTES)?;
    let kind = header[0];
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let mut index_bytes = [0u8; 8];
    index_bytes.copy_from_slice(&header[5..13]);
    Some((kind, u64::from(len), u64::from_le_bytes(index_bytes)))
}

/// Decodes the record at the front of `buf`, validating every field and the CRC.
pub(crate) fn decode(buf: &[u8]) -> Result<DecodedRecord<'_>, DecodeError> {
    let Some((kind, len, index)) = parse_header(buf) else {
        return Err(DecodeError::HeaderTruncated { available: buf.len() });
    };
    if kind != RECORD_KIND_ENTRY {
        return Err(DecodeError::BadKind { kind });
    }
    if len > RECORD_BYTES_MAX as u64 {
        return Err(DecodeError::LengthTooLarge { len });
    }
    // `len` is at most RECORD_BYTES_MAX, so it fits in usize.
    let len_usize = len as usize;
    let available = buf.len() - RECORD_HEADER_BYTES;
    if available < len_usize {
        return Err(DecodeError::PayloadTruncated { len, available });
    }
    let payload = &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len_usize];
    let stored = u32::from_le_bytes([buf[13], buf[14], buf[15], buf[16]]);
    let computed = record_crc(buf, payload);
    if stored != computed {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    Ok(DecodedRecord {
        index,
        payload,
        frame_len: RECORD_HEADER_BYTES + len_usize,
    })
}

/// Looks for a fully valid record starting after the damaged record at `bad_offset`,
/// whose index was expected to be `expected_index`. Returns its offset.
///
/// A valid record after damage proves the damage is not a torn tail. To keep the scan
/// linear, a candidate is CRC-checked only when its kind byte matches, its payload fits
/// in the buffer and its index is one a contiguous log could hold at that distance:
/// every record takes at least [`RECORD_HEADER_BYTES`], so at most
/// `(offset - bad_offset) / RECORD_HEADER_BYTES` records fit in between.
pub(crate) fn find_valid_record_after(buf: &[u8], bad_offset: usize, expected_index: u64) -> Option<usize> {
    let start = bad_offset.checked_add(1)?;
    let end = buf.len().checked_sub(RECORD_HEADER_BYTES)?;
    (start..=end).find(|&offset| {
        if buf[offset] != RECORD_KIND_ENTRY {
            return false;
        }
        let Some((_, len, index)) = parse_header(&buf[offset..]) else {
            return false;
        };
        let fits = len <= (buf.len() - offset - RECORD_HEADER_BYTES) as u64;
        let n_between_max = ((offset - bad_offset) / RECORD_HEADER_BYTES) as u64;
        let plausible = index >= expected_index && index - expected_index <= n_between_max;
        fits && plausible && decode(&buf[offset..]).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(index: u64, payload: &[u8]) -> Vec<u8> {
        let mut bytes = encode_header(index, payload).to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn encode_then_decode_roundtrips() {
        // Goal: a record decodes back to the index and payload it was encoded with.
        let bytes = frame(42, b"hello");
        let record = decode(&bytes).expect("valid record");
        assert_eq!(record.index, 42);
        assert_eq!(record.payload, b"hello");
        assert_eq!(record.frame_len, bytes.len());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        // Goal: the CRC and field checks catch a flip of any one bit of a record.
        let bytes = frame(7, b"some payload bytes");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let decoded = decode(&damaged);
            assert!(decoded.is_err(), "bit {bit} flip was not detected: {decoded:?}");
        }
    }

    #[test]
    fn zero_bytes_are_not_a_record() {
        // Goal: a zero-filled region is reported as a bad kind, never as a record.
        let zeros = [0u8; 64];
        assert_eq!(decode(&zeros).unwrap_err(), DecodeError::BadKind { kind: 0 });
    }

    #[test]
    fn truncated_records_are_reported_as_truncated() {
        // Goal: a cut header and a cut payload are told apart.
        let bytes = frame(1, b"abcdef");
        assert!(matches!(
            decode(&bytes[..5]),
            Err(DecodeError::HeaderTruncated { available: 5 })
        ));
        assert!(matches!(
            decode(&bytes[..RECORD_HEADER_BYTES + 2]),
            Err(DecodeError::PayloadTruncated { len: 6, available: 2 })
        ));
    }

    #[test]
    fn valid_record_after_damage_is_found() {
        // Goal: the scan finds the record that follows a damaged one, and nothing in garbage.
        let mut bytes = frame(5, b"first");
        let second_offset = bytes.len();
        bytes.extend_from_slice(&frame(6, b"second"));
        bytes[RECORD_HEADER_BYTES] ^= 0x01;
        assert_eq!(find_valid_record_after(&bytes, 0, 5), Some(second_offset));

        let mut garbage = frame(5, b"first");
        garbage.extend(std::iter::repeat_n(RECORD_KIND_ENTRY, 100));
        garbage[0] = 0;
        assert_eq!(find_valid_record_after(&garbage, 0, 5), None);
    }
}
