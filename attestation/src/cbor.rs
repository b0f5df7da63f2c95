//! A bounded pre-scan of untrusted CBOR, with ciborium-ll's tokenizer, before any tree is built:
//! one top-level item and nothing after it, nesting at most [`MAX_DEPTH`], no tags except one
//! outer COSE_Sign1 tag (18) where allowed, no floats or unassigned simple values, and no declared
//! length longer than the bytes left. Indefinite-length items are accepted, as AWS's own
//! verification accepts them (the NSM has signed payloads that are indefinite-length maps,
//! `0xbf … 0xff`): a `break` must close an open indefinite item (a map after a whole number of
//! pairs), and an indefinite string holds only definite strings of its own type. It runs in time
//! linear in the input and without recursion, so 10,000 nested tags or arrays end here, not in a
//! stack overflow further on.

use crate::error::Malformed;
use ciborium_ll::{Decoder, Header};

/// Deepest nesting the Nitro profile needs is 3 (COSE array → payload map → pcrs map); leave room.
pub(crate) const MAX_DEPTH: usize = 8;

/// The COSE_Sign1 tag.
pub(crate) const COSE_SIGN1_TAG: u64 = 18;

/// An open nesting level: what it still expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// This many more items (a definite array or map, or the single top item).
    Items(u64),
    /// Items until a `break`; a map's items come in pairs (`map`), `seen` so far.
    Indefinite { map: bool, seen: u64 },
    /// Definite chunks of one string type until a `break` (`text`: text, else bytes).
    Chunks { text: bool },
}

/// Checks `input` holds exactly one CBOR item within the profile. With `allow_cose_tag`, the
/// item may be wrapped in one tag 18.
pub(crate) fn scan(input: &[u8], allow_cose_tag: bool) -> Result<(), Malformed> {
    let mut dec = Decoder::from(input);
    // The bottom entry is the single top item.
    let mut pending: Vec<Level> = vec![Level::Items(1)];
    let mut first = true;
    let mut scratch = [0u8; 256];
    while let Some(level) = pending.last_mut() {
        if *level == Level::Items(0) {
            pending.pop();
            continue;
        }
        let header = dec.pull().map_err(|_| Malformed::CborSyntax)?;
        match (level, header) {
            (Level::Indefinite { map, seen }, Header::Break) if !*map || *seen % 2 == 0 => {
                pending.pop();
                continue;
            }
            (Level::Chunks { .. }, Header::Break) => {
                pending.pop();
                continue;
            }
            (_, Header::Break) => return Err(Malformed::CborIndefinite),
            (Level::Chunks { text }, h) => {
                let len = match (h, *text) {
                    (Header::Text(Some(len)), true) | (Header::Bytes(Some(len)), false) => len,
                    _ => return Err(Malformed::CborIndefinite),
                };
                skip(&mut dec, input.len(), len, &mut scratch)?;
                continue;
            }
            (Level::Items(n), _) => *n -= 1,
            (Level::Indefinite { seen, .. }, _) => *seen += 1,
        }
        let was_first = first;
        first = false;
        let remaining = input.len().saturating_sub(dec.offset());
        let open = |pending: &Vec<Level>| if pending.len() > MAX_DEPTH { Err(Malformed::CborDepth) } else { Ok(()) };
        match header {
            Header::Tag(COSE_SIGN1_TAG) if allow_cose_tag && was_first => {
                // The tag wraps the next item: expect it at a level of its own.
                pending.push(Level::Items(1));
            }
            Header::Tag(t) => return Err(Malformed::CborTag(t)),
            Header::Break => return Err(Malformed::CborIndefinite),
            Header::Bytes(None) | Header::Text(None) => {
                open(&pending)?;
                pending.push(Level::Chunks { text: matches!(header, Header::Text(None)) });
            }
            Header::Array(None) | Header::Map(None) => {
                open(&pending)?;
                pending.push(Level::Indefinite { map: matches!(header, Header::Map(None)), seen: 0 });
            }
            Header::Bytes(Some(len)) | Header::Text(Some(len)) => skip(&mut dec, input.len(), len, &mut scratch)?,
            Header::Array(Some(n)) | Header::Map(Some(n)) => {
                let items = if matches!(header, Header::Map(_)) { (n as u64).saturating_mul(2) } else { n as u64 };
                // Every item takes at least one byte.
                if items > remaining as u64 {
                    return Err(Malformed::CborSyntax);
                }
                open(&pending)?;
                pending.push(Level::Items(items));
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

/// Skips a definite string's `len` bytes, refusing one longer than the input left.
fn skip(dec: &mut Decoder<&[u8]>, total: usize, len: usize, scratch: &mut [u8; 256]) -> Result<(), Malformed> {
    if len > total.saturating_sub(dec.offset()) {
        return Err(Malformed::CborSyntax);
    }
    let mut left = len;
    while left > 0 {
        let n = left.min(scratch.len());
        let chunk = scratch.get_mut(..n).ok_or(Malformed::CborSyntax)?;
        ciborium_io::Read::read_exact(dec, chunk).map_err(|_| Malformed::CborSyntax)?;
        left -= n;
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

    /// Indefinite-length items as the NSM writes them are accepted (a payload map `0xbf … 0xff`);
    /// a `break` that closes nothing, an odd map, a chunk of the wrong type, an unclosed item
    /// and nesting past the limit are not.
    #[test]
    fn indefinite_lengths_are_accepted_when_well_formed() {
        assert_eq!(scan(&[0x9f, 0x01, 0xff], false), Ok(()));
        assert_eq!(scan(&[0x5f, 0x41, 0x00, 0xff], false), Ok(()));
        assert_eq!(scan(&[0x7f, 0x61, 0x61, 0x60, 0xff], false), Ok(()));
        // {_ "a": null, "b": [_ 1, 2] }
        assert_eq!(scan(&[0xbf, 0x61, 0x61, 0xf6, 0x61, 0x62, 0x9f, 0x01, 0x02, 0xff, 0xff], false), Ok(()));
        assert_eq!(scan(&[0xbf, 0x61, 0x61, 0xff], false), Err(Malformed::CborIndefinite), "odd map");
        assert_eq!(scan(&[0x5f, 0x61, 0x61, 0xff], false), Err(Malformed::CborIndefinite), "text chunk in bytes");
        assert_eq!(scan(&[0x5f, 0x5f, 0xff, 0xff], false), Err(Malformed::CborIndefinite), "nested chunks");
        assert_eq!(scan(&[0x81, 0xff], false), Err(Malformed::CborIndefinite), "break in a definite array");
        assert_eq!(scan(&[0xff], false), Err(Malformed::CborIndefinite));
        assert_eq!(scan(&[0x9f, 0x01], false), Err(Malformed::CborSyntax), "never closed");
        assert_eq!(scan(&[0x9f, 0x01, 0xff, 0x00], false), Err(Malformed::TrailingBytes));
        let mut deep = vec![0x9fu8; 10_000];
        deep.push(0x00);
        assert_eq!(scan(&deep, false), Err(Malformed::CborDepth));
    }

    #[test]
    fn trailing_bytes_and_overlong_lengths_are_refused() {
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
