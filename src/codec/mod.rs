//! HTTP/1.1 message bodies on the wire (RFC 9112 §6–7), for both sides of baton: the
//! upstream client decodes response bodies with [`Decoder`], the client-facing server
//! request bodies; both encode what they send with the `encode_` functions. The fields of
//! heads, kept where they were read, are in [`fields`].

use std::fmt::Write;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

mod fields;

pub use fields::{FieldSpans, Known, RawFields, RequestFields, Span};

/// The largest head (or trailer section) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a head may have.
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Free room made in a read buffer before a read.
const READ_MIN: usize = 8 * 1024;
/// The most room made for one read of body bytes whose length is known.
const READ_MAX: usize = 64 * 1024;

/// Where a message body ends, and how far it has been read.
#[derive(Clone, Copy, Debug)]
pub enum Decoder {
    /// No body, or all of it read.
    Done,
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes (responses only).
    Close,
}

#[derive(Clone, Copy, Debug)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this much left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields and the final CRLF.
    Trailers,
}

impl Decoder {
    pub fn chunked() -> Decoder {
        Decoder::Chunked(Chunk::Size)
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// How much a read of body bytes should make room for, between [`READ_MIN`] and
    /// `READ_MAX`: when the length of the rest is known, one byte more than that. The read
    /// that completes the body then comes up short if nothing follows, which is how the
    /// runtime learns that the socket is drained; a read that exactly fills the room leaves
    /// the socket marked readable, and the next look at it (the pool's check that an idle
    /// connection is still open) costs a failing system call.
    pub fn read_room(&self) -> usize {
        match *self {
            Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                usize::try_from(left.saturating_add(1))
                    .map_or(READ_MAX, |room| room.clamp(READ_MIN, READ_MAX))
            }
            _ => READ_MIN,
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match *self {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }

    /// The next frame of body from the front of `buf`: `Ok(None)` when more must be read,
    /// `Ok(Some(None))` at the end. An error says what is malformed; the decoder is then
    /// `Done`.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Frame<Bytes>>>, &'static str> {
        let decoded = self.decode_inner(buf);
        if decoded.is_err() {
            *self = Decoder::Done;
        }
        decoded
    }

    fn decode_inner(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Option<Frame<Bytes>>>, &'static str> {
        loop {
            match *self {
                Decoder::Done => return Ok(Some(None)),
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Some(Frame::data(buf.split().freeze()))));
                }
                Decoder::Length(left) => {
                    let Some((data, left)) = take_data(buf, left) else {
                        return Ok(None);
                    };
                    *self = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(left)
                    };
                    return Ok(Some(Some(Frame::data(data))));
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(None);
                    };
                    let line = &buf[..end];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let digits = line
                        .iter()
                        .position(|&b| b == b';' || b == b' ' || b == b'\t')
                        .map_or(line, |i| &line[..i]);
                    let size = parse_hex(digits).ok_or("bad chunk size")?;
                    buf.advance(end + 1);
                    *self = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    let Some((data, left)) = take_data(buf, left) else {
                        return Ok(None);
                    };
                    *self = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(Some(Frame::data(data))));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                    } else if buf.starts_with(b"\n") {
                        buf.advance(1);
                    } else if buf.is_empty() || &buf[..] == b"\r" {
                        return Ok(None);
                    } else {
                        return Err("no CRLF after chunk data");
                    }
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::new();
                            // A trailer field `http` refuses is dropped; the rest are kept.
                            append_fields(&mut trailers, fields);
                            (len, trailers)
                        }
                        Ok(httparse::Status::Partial) => {
                            if buf.len() > MAX_HEAD_BYTES {
                                return Err("trailers too large");
                            }
                            return Ok(None);
                        }
                        Err(_) => return Err("malformed trailers"),
                    };
                    buf.advance(len);
                    *self = Decoder::Done;
                    if trailers.is_empty() {
                        return Ok(Some(None));
                    }
                    return Ok(Some(Some(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// Up to `left` bytes of body from the front of `buf`, and how many are left after them;
/// `None` when `buf` is empty.
fn take_data(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    Some((buf.split_to(take).freeze(), left - take as u64))
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = (digit as char).to_digit(16)?;
        size = size.checked_mul(16)?.checked_add(u64::from(value))?;
    }
    Some(size)
}

/// Appends the parsed `fields` that `http` takes to `map`; whether it took them all.
fn append_fields(map: &mut HeaderMap, fields: &[httparse::Header<'_>]) -> bool {
    let mut all = true;
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        match (name, value) {
            (Ok(name), Ok(value)) => {
                map.append(name, value);
            }
            _ => all = false,
        }
    }
    all
}

/// Header maps kept for reuse on their thread. A map for seven fields or more holds its
/// entries in over a kilobyte, more than glibc's per-thread cache serves, so each one made
/// and dropped went through the allocator's bins (and made it consolidate its fast bins):
/// about 1,300 instructions per proxied request for the request's and the answer's maps.
/// The maps of heads baton has written are cleared and handed to the next heads it reads.
pub mod maps {
    use std::cell::RefCell;

    use http::HeaderMap;

    use super::kept;

    /// Maps kept per thread: as many as requests in flight at once on a busy core take
    /// turns with (two maps each), at 1.3–5.3 KiB each (12 to 48 fields). With 64, 256
    /// client connections at once dropped and made maps again: about 650 instructions a
    /// request more than at 32 connections.
    const KEPT: usize = 256;
    /// Maps larger than this many fields are dropped, not kept.
    const LARGEST: usize = 48;

    thread_local! {
        static KEPT_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty map with room for `fields`: a kept one if there is one.
    pub fn take(fields: usize) -> HeaderMap {
        match kept::pop(&KEPT_MAPS) {
            Some(mut map) => {
                map.reserve(fields);
                map
            }
            // Never smaller than a map worth keeping: `with_capacity(8)` makes room for 12
            // fields, the least that `give` keeps.
            None => HeaderMap::with_capacity(fields.max(8)),
        }
    }

    /// Keeps `map`, emptied, for a later [`take`] on this thread.
    pub fn give(mut map: HeaderMap) {
        let capacity = map.capacity();
        if !(12..=LARGEST).contains(&capacity) {
            return;
        }
        map.clear();
        kept::push(&KEPT_MAPS, map, KEPT);
    }
}

/// Buffers that heads are encoded into, kept for reuse on their thread. Each proxied request
/// encodes two, the upstream request's head and the client's answer (its head, and a small
/// body with it), writes each out and drops it: with many requests in flight that is more
/// than glibc's per-thread cache holds of their size, and the two came from its bins at about
/// 300 instructions each to make and free again. A buffer grown past [`bufs::LARGEST`] is
/// not kept.
pub mod bufs {
    use std::cell::RefCell;

    use bytes::BytesMut;

    use super::kept;

    /// As many as requests in flight at once on a busy core take turns with (two each).
    const KEPT: usize = 256;
    /// Buffers larger than this are freed, not kept: at most 4 MiB a thread after a burst
    /// of large answers, about 256 KiB for small ones.
    pub const LARGEST: usize = 16 * 1024;

    thread_local! {
        static KEPT_BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for `capacity` bytes: a kept one if there is one.
    pub fn take(capacity: usize) -> BytesMut {
        match kept::pop(&KEPT_BUFS) {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => BytesMut::with_capacity(capacity),
        }
    }

    /// How many buffers this thread keeps.
    #[cfg(test)]
    pub fn kept() -> usize {
        KEPT_BUFS.with_borrow(Vec::len)
    }

    /// Keeps `buf`, emptied, for a later [`take`] on this thread. `buf` must not have been
    /// split: its capacity is then the whole of its memory.
    pub fn give(mut buf: BytesMut) {
        if !(1..=LARGEST).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        kept::push(&KEPT_BUFS, buf, KEPT);
    }
}

/// What [`maps`] and [`bufs`] share: a per-thread list of values kept for reuse. Neither
/// fails: during the thread's teardown, or should the list be borrowed already, nothing is
/// taken and a value given is dropped.
mod kept {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    pub(super) fn pop<T: 'static>(list: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
        list.try_with(|kept| kept.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
    }

    /// Keeps `value` unless `limit` are kept already.
    pub(super) fn push<T: 'static>(
        list: &'static LocalKey<RefCell<Vec<T>>>,
        value: T,
        limit: usize,
    ) {
        let _ = list.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut() {
                if kept.len() < limit {
                    kept.push(value);
                }
            }
        });
    }
}

/// Whether the field name `name`, a token (RFC 9110 §5.1, as httparse takes it), is `lower`
/// in any case. `lower` holds only lowercase letters, digits and `-`, each with bit 5 set;
/// setting that bit in a token byte gives one of them only when the byte is that very one
/// or its uppercase letter (the other candidates, CR and control bytes, are no token's),
/// so eight bytes compare with one instruction. `eq_ignore_ascii_case` lowercases byte by
/// byte: every field of every head is matched against the few names baton reads, and that
/// cost about 400 instructions a proxied request.
#[inline]
pub fn name_is(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    const CASE: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let (mut names, mut lowers) = (name.chunks_exact(8), lower.chunks_exact(8));
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
    if !(&mut names)
        .zip(&mut lowers)
        .all(|(n, l)| word(n) | CASE == word(l))
    {
        return false;
    }
    let rest = names.remainder().iter().zip(lowers.remainder());
    rest.fold(true, |same, (&n, &l)| same & (n | 0x20 == l))
}

/// Where `part`, a slice of `buf` shorter than 4 GiB, lies in it.
pub fn span(buf: &[u8], part: &[u8]) -> Span {
    let start = (part.as_ptr() as usize - buf.as_ptr() as usize) as u32;
    (start, start + part.len() as u32)
}

/// The bytes of `head` at `span`, sharing its memory.
pub fn slice(head: &Bytes, (start, end): Span) -> Bytes {
    head.slice(start as usize..end as usize)
}

/// Header or trailer fields and the empty line that ends them.
pub fn encode_fields(out: &mut BytesMut, fields: &HeaderMap) {
    encode_field_lines(out, fields);
    out.extend_from_slice(b"\r\n");
}

/// Header fields, a line each.
pub fn encode_field_lines(out: &mut BytesMut, fields: &HeaderMap) {
    for (name, value) in fields {
        encode_field(out, name.as_str(), value.as_bytes());
    }
}

/// One header field line.
pub fn encode_field(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The line that starts a chunk of `len` bytes.
pub fn encode_chunk_size(out: &mut BytesMut, len: usize) {
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Data, as is or as one chunk.
pub fn encode_data(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if !chunked {
        out.extend_from_slice(data);
    } else if !data.is_empty() {
        encode_chunk_size(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

/// The last chunk of a chunked body, with its trailer fields.
pub fn encode_trailers(out: &mut BytesMut, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    encode_fields(out, trailers);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Token bytes (RFC 9110 §5.6.2).
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

    proptest! {
        /// For any token of a known name's length, `name_is` says what
        /// `eq_ignore_ascii_case` says, be it a variant of the name or another token.
        #[test]
        fn name_is_matches_eq_ignore_ascii_case(
            target in prop::sample::select(vec![
                "te", "date", "host", "accept", "expect", "upgrade", "connection", "keep-alive",
                "x-request-id", "content-length", "http2-settings", "x-forwarded-for",
                "transfer-encoding", "x-forwarded-proto",
            ]),
            picks in prop::collection::vec((any::<bool>(), any::<bool>(), 0..TCHAR.len()), 17),
        ) {
            // Each byte: the target's, in either case, or any token byte.
            let name: Vec<u8> = target
                .bytes()
                .zip(&picks)
                .map(|(b, &(keep, upper, other))| match (keep, upper) {
                    (true, true) => b.to_ascii_uppercase(),
                    (true, false) => b,
                    (false, _) => TCHAR[other],
                })
                .collect();
            prop_assert_eq!(
                name_is(&name, target.as_bytes()),
                name.eq_ignore_ascii_case(target.as_bytes())
            );
        }
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_a_large_one_is_not_kept() {
        let mut buf = bufs::take(512);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let place = buf.as_ptr();
        bufs::give(buf);
        let again = bufs::take(512);
        assert_eq!(again.as_ptr(), place, "the same memory");
        assert!(again.is_empty() && again.capacity() >= 512);

        let kept = bufs::kept();
        bufs::give(BytesMut::with_capacity(bufs::LARGEST + 1));
        assert_eq!(bufs::kept(), kept, "a large buffer is freed");
        bufs::give(again);
        assert_eq!(bufs::kept(), kept + 1);
    }

    #[test]
    fn name_is_takes_any_case_of_the_name_and_nothing_else() {
        assert!(name_is(b"Content-Length", b"content-length"));
        assert!(name_is(b"X-REQUEST-ID", b"x-request-id"));
        assert!(!name_is(b"content-lengtH2", b"content-length"));
        assert!(!name_is(b"content_length", b"content-length"));
        assert!(!name_is(b"Date", b"data"));
        assert!(!name_is(b"Host", b"hosts"));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_hex(b"1a"), Some(26));
        assert_eq!(parse_hex(b"FFFFFFFFFFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_hex(b"10000000000000000"), None);
        assert_eq!(parse_hex(b""), None);
        assert_eq!(parse_hex(b"-1"), None);
    }

    /// Decodes `wire` fed in pieces of `step` bytes; the data, the trailers, and what is
    /// left after the body.
    fn decode_in_pieces(
        mut decoder: Decoder,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, usize, Vec<u8>), &'static str> {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = 0;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Some(frame)) => match frame.into_data() {
                    Ok(bytes) => data.extend_from_slice(&bytes),
                    Err(frame) => trailers += frame.into_trailers().map_or(0, |t| t.len()),
                },
                Some(None) => break,
                None if fed == wire.len() => return Err("ran out"),
                None => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
        let mut rest = buf.to_vec();
        rest.extend_from_slice(&wire[fed..]);
        Ok((data, trailers, rest))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_split() {
        let wire = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: x\r\n\r\nGET /next";
        for step in 1..wire.len() {
            let (data, trailers, rest) = decode_in_pieces(Decoder::chunked(), wire, step).unwrap();
            assert_eq!(data, b"helloabc", "step {step}");
            assert_eq!(trailers, 1);
            assert_eq!(rest, b"GET /next");
        }
        assert!(decode_in_pieces(Decoder::chunked(), b"zz\r\n", 4).is_err());
        assert!(decode_in_pieces(Decoder::chunked(), b"11111111111111111\r\n", 4).is_err());
        assert!(decode_in_pieces(Decoder::chunked(), b"1\r\nab\r\n", 8).is_err());
        let (data, _, rest) = decode_in_pieces(Decoder::Length(3), b"abcdef", 2).unwrap();
        assert_eq!((&data[..], &rest[..]), (&b"abc"[..], &b"def"[..]));
    }
}
