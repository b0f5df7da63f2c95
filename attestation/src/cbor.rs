//! A bounded pre-scan of untrusted CBOR, with ciborium-ll's tokenizer, before any tree is built:
//! one top-level item and nothing after it, nesting at most [`MAX_DEPTH`], definite lengths only,
//! no tags except one outer COSE_Sign1 tag (18) where allowed, no floats or unassigned simple
//! values, and no declared length longer than the bytes left. It runs in time linear in the
//! input and without recursion, so 10,000 nested tags or arrays end here, not in a stack
//! overflow further on.

use crate::error::Malformed;
use ciborium_ll::{Decoder, Header};

/// Deepest nesting the Nitro profile needs is 3 (COSE array → payload map → pcrs map); leave room.
pub(crate) const MAX_DEPTH: usize = 8;

/// The COSE_Sign1 tag.
pub(crate) const COSE_SIGN1_TAG: u64 = 18;

/// Checks `input` holds exactly one CBOR item within the profile. With `allow_cose_tag`, the
/// item may be wrapped in one tag 18.
pub(crate) fn scan(input: &[u8], allow_cose_tag: bool) -> Result<(), Malformed> {
    let mut dec = Decoder::from(input);
    // Items still expected at each open nesting level; the bottom entry is the single top item.
    let mut pending: Vec<u64> = vec![1];
    let mut first = true;
    let mut scratch = [0u8; 256];
    while let Some(last) = pending.last_mut() {
        if *last == 0 {
            pending.pop();
            continue;
        }
        *last -= 1;
        let header = dec.pull().map_err(|_| Malformed::CborSyntax)?;
        let was_first = first;
        first = false;
        let remaining = input.len().saturating_sub(dec.offset());
        match header {
            Header::Tag(COSE_SIGN1_TAG) if allow_cose_tag && was_first => {
                // The tag wraps the next item: expect one more at this level.
                *last += 1;
            }
            Header::Tag(t) => return Err(Malformed::CborTag(t)),
            Header::Break => return Err(Malformed::CborIndefinite),
            Header::Bytes(None) | Header::Text(None) | Header::Array(None) | Header::Map(None) => {
                return Err(Malformed::CborIndefinite);
            }
            Header::Bytes(Some(len)) | Header::Text(Some(len)) => {
                if len > remaining {
                    return Err(Malformed::CborSyntax);
                }
                let mut left = len;
                while left > 0 {
                    let n = left.min(scratch.len());
                    let chunk = scratch.get_mut(..n).ok_or(Malformed::CborSyntax)?;
                    ciborium_io::Read::read_exact(&mut dec, chunk).map_err(|_| Malformed::CborSyntax)?;
                    left -= n;
                }
            }
            Header::Array(Some(n)) | Header::Map(Some(n)) => {
                let items = if matches!(header, Header::Map(_)) { (n as u64).saturating_mul(2) } else { n as u64 };
                // Every item takes at least one byte.
                if items > remaining as u64 {
                    return Err(Malformed::CborSyntax);
                }
                if pending.len() > MAX_DEPTH {
                    return Err(Malformed::CborDepth);
                }
                pending.push(items);
            }
            Header::Positive(_) | Header::Negative(_) => {}
            // false, true, null
            Header::Simple(20..=22) => {}
            Header::Simple(_) | Header::Float(_) => return Err(Malformed::CborUnsupported),
        }
    }
    if dec.offset() != input.len() {
        return Err(Malformed::TrailingBytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tags_are_refused_without_recursion() {
        let mut v = vec![0xc6u8; 10_000];
        v.push(0x00);
        assert_eq!(scan(&v, true), Err(Malformed::CborTag(6)));
        let mut v = vec![0xd2u8; 10_000];
        v.push(0x00);
        assert_eq!(scan(&v, true), Err(Malformed::CborTag(18)));
    }

    #[test]
    fn nested_arrays_stop_at_the_depth_limit() {
        let mut v = vec![0x81u8; 10_000];
        v.push(0x00);
        assert_eq!(scan(&v, false), Err(Malformed::CborDepth));
        let mut v = vec![0x81u8; MAX_DEPTH];
        v.push(0x00);
        assert_eq!(scan(&v, false), Ok(()));
    }

    #[test]
    fn indefinite_lengths_and_trailing_bytes_are_refused() {
        assert_eq!(scan(&[0x9f, 0x01, 0xff], false), Err(Malformed::CborIndefinite));
        assert_eq!(scan(&[0x5f, 0x41, 0x00, 0xff], false), Err(Malformed::CborIndefinite));
        assert_eq!(scan(&[0x01, 0x02], false), Err(Malformed::TrailingBytes));
        assert_eq!(scan(&[], false), Err(Malformed::CborSyntax));
        // a byte string claiming more bytes than there are
        assert_eq!(scan(&[0x5a, 0xff, 0xff, 0xff, 0xff], false), Err(Malformed::CborSyntax));
        // an array claiming 2^32 items
        assert_eq!(scan(&[0x9a, 0xff, 0xff, 0xff, 0xff], false), Err(Malformed::CborSyntax));
        assert_eq!(scan(&[0xf9, 0x3c, 0x00], false), Err(Malformed::CborUnsupported));
    }

    #[test]
    fn the_cose_tag_is_allowed_only_outermost_and_once() {
        assert_eq!(scan(&[0xd2, 0x80], true), Ok(()));
        assert_eq!(scan(&[0xd2, 0x80], false), Err(Malformed::CborTag(18)));
        assert_eq!(scan(&[0x81, 0xd2, 0x80], true), Err(Malformed::CborTag(18)));
    }
}
