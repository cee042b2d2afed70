//! DER as albatross writes it: single-byte tags (universal, and EXPLICIT
//! context-specific `[n]` for n < 31), definite minimal lengths, SET OF
//! elements sorted by their encodings, and no trailing bytes anywhere.
//!
//! The `der` crate reads headers (tag and strict length) and encodes and
//! decodes INTEGERs; the message structure is built here as a tree whose
//! lengths are computed before anything is written, so that a large OCTET
//! STRING (a unikernel image) is copied exactly once, into the output.

use std::borrow::Cow;

use der::{Decode, Encode, Reader as _};

/// Universal tags.
pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const UTF8_STRING: u8 = 0x0c;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;
pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const SET: u8 = 0x31;

/// The tag of EXPLICIT `[n]` (context-specific, constructed).
pub(crate) const fn ctx(n: u8) -> u8 {
    0xa0 | n
}

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not an albatross message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

pub(crate) fn bad<T>(why: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(why.into()))
}

/// A value to encode: a primitive's content, or a constructed value's
/// children.
#[derive(Clone, Debug)]
pub(crate) enum Node<'a> {
    Prim(u8, Cow<'a, [u8]>),
    Cons(u8, Vec<Node<'a>>),
}

/// The length of a DER length field for `len`.
fn length_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - len.leading_zeros() as usize / 8)
    }
}

fn write_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = len.leading_zeros() as usize / 8;
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

impl<'a> Node<'a> {
    /// The length of the content.
    fn content_len(&self) -> usize {
        match self {
            Node::Prim(_, bytes) => bytes.len(),
            Node::Cons(_, children) => children.iter().map(Node::encoded_len).sum(),
        }
    }

    /// The length of the whole encoding.
    pub(crate) fn encoded_len(&self) -> usize {
        let content = self.content_len();
        1 + length_len(content) + content
    }

    /// Appends the encoding to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Prim(tag, bytes) => {
                out.push(*tag);
                write_length(out, bytes.len());
                out.extend_from_slice(bytes);
            }
            Node::Cons(tag, children) => {
                out.push(*tag);
                write_length(out, self.content_len());
                for c in children {
                    c.write(out);
                }
            }
        }
    }

    /// The encoding, in a buffer of exactly its size (`extra` bytes of room
    /// are reserved in front, for a length prefix).
    pub(crate) fn to_vec_with_prefix(&self, prefix: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(prefix.len() + self.encoded_len());
        out.extend_from_slice(prefix);
        self.write(&mut out);
        out
    }

    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.to_vec_with_prefix(&[])
    }
}

/// Builders for the usual shapes.
pub(crate) fn int(v: i64) -> Node<'static> {
    let der = v.to_der().expect("an i64 encodes");
    // The der crate wrote the whole TLV: keep its content.
    Node::Prim(INTEGER, Cow::Owned(der[2..].to_vec()))
}

pub(crate) fn boolean(v: bool) -> Node<'static> {
    Node::Prim(BOOLEAN, Cow::Borrowed(if v { &[0xff] } else { &[0x00] }))
}

pub(crate) fn null() -> Node<'static> {
    Node::Prim(NULL, Cow::Borrowed(&[]))
}

pub(crate) fn octets(bytes: &[u8]) -> Node<'_> {
    Node::Prim(OCTET_STRING, Cow::Borrowed(bytes))
}

pub(crate) fn utf8(s: &str) -> Node<'_> {
    Node::Prim(UTF8_STRING, Cow::Borrowed(s.as_bytes()))
}

pub(crate) fn seq(children: Vec<Node<'_>>) -> Node<'_> {
    Node::Cons(SEQUENCE, children)
}

/// `[n] inner`, EXPLICIT.
pub(crate) fn tagged(n: u8, inner: Node<'_>) -> Node<'_> {
    Node::Cons(ctx(n), vec![inner])
}

/// SET OF: elements sorted by their encodings (shorter before longer
/// when one is a prefix of the other, as byte order gives).
pub(crate) fn set_of(mut children: Vec<Node<'_>>) -> Node<'_> {
    children.sort_by_cached_key(Node::to_vec);
    Node::Cons(SET, children)
}

/// An int64 as albatross writes it: an OCTET STRING of 8 big-endian bytes.
pub(crate) fn int64(v: i64) -> Node<'static> {
    Node::Prim(OCTET_STRING, Cow::Owned(v.to_be_bytes().to_vec()))
}

/// A reader over the elements of one constructed value (or a whole
/// message); [`Reader::finish`] fails if anything is left.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    /// The next element's tag, if any.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element: its tag and content.
    pub(crate) fn any(&mut self) -> Result<(u8, &'a [u8]), DecodeError> {
        let tag = self.peek().ok_or_else(|| DecodeError("a value is missing".into()))?;
        if tag & 0x1f == 0x1f {
            return bad(format!("tag {tag:#04x} (high tag numbers are not used)"));
        }
        let mut reader = der::SliceReader::new(self.rest).map_err(|e| DecodeError(e.to_string()))?;
        let header = der::Header::decode(&mut reader).map_err(|e| DecodeError(format!("a header: {e}")))?;
        let content = reader.read_slice(header.length()).map_err(|e| DecodeError(format!("a value: {e}")))?;
        let used = u32::from(reader.position()) as usize;
        self.rest = &self.rest[used..];
        Ok((tag, content))
    }

    /// The next element, which must have `tag`.
    pub(crate) fn expect(&mut self, tag: u8, what: &str) -> Result<&'a [u8], DecodeError> {
        match self.peek() {
            Some(t) if t == tag => Ok(self.any()?.1),
            Some(t) => bad(format!("{what}: expected tag {tag:#04x}, found {t:#04x}")),
            None => bad(format!("{what} is missing")),
        }
    }

    /// The next element if it has `tag`.
    pub(crate) fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, DecodeError> {
        if self.peek() == Some(tag) {
            Ok(Some(self.any()?.1))
        } else {
            Ok(None)
        }
    }

    pub(crate) fn finish(self, what: &str) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            bad(format!("{} trailing bytes after {what}", self.rest.len()))
        }
    }

    /// The elements of a SET OF (`what`), each a reader over one whole
    /// element, in DER's order: sorted by their encoding, as [`set_of`]
    /// writes them, whatever order they came in (so that what is decoded
    /// encodes back to itself; found by the `albatross_der` fuzz target).
    pub(crate) fn set_elements(&mut self, what: &str) -> Result<Vec<Reader<'a>>, DecodeError> {
        let mut set = self.nested(SET, what)?;
        let mut elements = Vec::new();
        while !set.is_empty() {
            let start = set.rest;
            set.any()?;
            elements.push(&start[..start.len() - set.rest.len()]);
        }
        elements.sort_unstable();
        Ok(elements.into_iter().map(Reader::new).collect())
    }

    /// A constructed element with `tag`, as a reader over its content.
    pub(crate) fn nested(&mut self, tag: u8, what: &str) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.expect(tag, what)?))
    }

    pub(crate) fn int(&mut self, what: &str) -> Result<i64, DecodeError> {
        let content = self.expect(INTEGER, what)?;
        let mut tlv = vec![INTEGER];
        write_length(&mut tlv, content.len());
        tlv.extend_from_slice(content);
        i64::from_der(&tlv).map_err(|e| DecodeError(format!("{what}: {e}")))
    }

    pub(crate) fn boolean(&mut self, what: &str) -> Result<bool, DecodeError> {
        match self.expect(BOOLEAN, what)? {
            [0x00] => Ok(false),
            [0xff] => Ok(true),
            other => bad(format!("{what}: {other:02x?} is not a DER BOOLEAN")),
        }
    }

    pub(crate) fn null(&mut self, what: &str) -> Result<(), DecodeError> {
        match self.expect(NULL, what)? {
            [] => Ok(()),
            _ => bad(format!("{what}: a NULL with content")),
        }
    }

    pub(crate) fn octets(&mut self, what: &str) -> Result<&'a [u8], DecodeError> {
        self.expect(OCTET_STRING, what)
    }

    pub(crate) fn utf8(&mut self, what: &str) -> Result<&'a str, DecodeError> {
        let bytes = self.expect(UTF8_STRING, what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }

    pub(crate) fn int64(&mut self, what: &str) -> Result<i64, DecodeError> {
        let bytes = self.octets(what)?;
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| DecodeError(format!("{what}: an int64 must be 8 bytes")))?;
        Ok(i64::from_be_bytes(bytes))
    }

    /// `[n] X` EXPLICIT: a reader over X (which must be its only content).
    pub(crate) fn explicit(&mut self, n: u8, what: &str) -> Result<Reader<'a>, DecodeError> {
        self.nested(ctx(n), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal_and_long_ones_work() {
        let big = vec![7u8; 300];
        let node = octets(&big);
        let der = node.to_vec();
        assert_eq!(&der[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(node.encoded_len(), der.len());
        let mut r = Reader::new(&der);
        assert_eq!(r.octets("x").unwrap(), &big[..]);
        r.finish("x").unwrap();
        // A non-minimal length is refused.
        let mut r = Reader::new(&[0x04, 0x81, 0x01, 0x00]);
        assert!(r.octets("x").is_err());
    }

    #[test]
    fn integers_sets_and_trailing_bytes() {
        for v in [0i64, 1, 127, 128, 255, 256, -1, -129, i64::MAX, i64::MIN] {
            let der = int(v).to_vec();
            assert_eq!(Reader::new(&der).int("v").unwrap(), v, "{v}");
        }
        assert!(Reader::new(&[0x02, 0x02, 0x00, 0x01]).int("v").is_err(), "non-minimal INTEGER");
        let set = set_of(vec![int(300), int(2), int(1)]).to_vec();
        assert_eq!(set, [0x31, 0x0a, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02, 0x02, 0x02, 0x01, 0x2c]);
        let mut r = Reader::new(&[0x05, 0x00, 0x05]);
        r.null("n").unwrap();
        assert!(r.finish("n").is_err());
    }
}
