//! Header fields of HTTP/1.1 heads kept where they were read: their places in the head
//! ([`FieldSpans`]), a request's fields as read ([`RequestFields`], [`Known`]), and an
//! answer's field lines passed on as read ([`RawFields`]).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use smallvec::SmallVec;

use super::{append_fields, encode_field, maps, slice, span, MAX_HEADERS};

/// Where a part of a head lies in it: start and end offsets.
pub type Span = (u32, u32);

/// Where a parsed head's field names and values lie in its buffer, so that once the head is
/// taken off the buffer (frozen), the header map's values can share its bytes. Inline for
/// the usual number of fields: an array for [`MAX_HEADERS`] was zeroed and copied (3 KiB)
/// for every head.
#[derive(Clone)]
pub struct FieldSpans(SmallVec<[(Span, Span); 24]>);

impl FieldSpans {
    /// The spans of `fields`, parsed by httparse from `buf`, which is shorter than 4 GiB
    /// (the callers' head limits see to it).
    pub fn of(buf: &[u8], fields: &[httparse::Header<'_>]) -> FieldSpans {
        FieldSpans::of_where(buf, fields, |_| true)
    }

    /// The spans of those of `fields` whose index `keep` accepts.
    pub fn of_where(
        buf: &[u8],
        fields: &[httparse::Header<'_>],
        keep: impl Fn(usize) -> bool,
    ) -> FieldSpans {
        FieldSpans(
            fields
                .iter()
                .enumerate()
                .filter(|&(i, _)| keep(i))
                .map(|(_, field)| (span(buf, field.name.as_bytes()), span(buf, field.value)))
                .collect(),
        )
    }

    /// The fields as a header map over `head` (the buffer, frozen), with room for `extra`
    /// more; `None` when a name or value is not valid for `http`.
    pub fn to_map(&self, head: &Bytes, extra: usize) -> Option<HeaderMap> {
        let mut map = maps::take(self.0.len() + extra);
        for &(name, value) in &self.0 {
            let name = HeaderName::from_bytes(&head[name.0 as usize..name.1 as usize]).ok()?;
            let value = HeaderValue::from_maybe_shared(slice(head, value)).ok()?;
            map.append(name, value);
        }
        Some(map)
    }
}

/// The fields of a request that baton's HTTP/1.1 server read, kept as read: the request
/// path looks up the few it needs by their place ([`Known`]), and the upstream request
/// carries the lines that stay on as they are ([`RequestFields::encode`]). Building a
/// header map of them and encoding it again cost about 1,800 instructions for a small
/// request, 7% of all baton did for it. A map is made only for the stages that read fields
/// by name (the cache, idempotency keys, rate limits, hash keys, an HTTP/2 upstream).
///
/// Only plain heads are kept so (see the server's head checks): every line ends in CRLF,
/// no known field comes twice, and no hop-by-hop field is there but `Keep-Alive` and a
/// `Connection` of `keep-alive` or `close`, which are left out whole.
#[derive(Clone)]
pub struct RequestFields {
    /// The head, from its request line to its empty line.
    head: Bytes,
    spans: FieldSpans,
    /// Where each [`Known`] field is in `spans`, plus one; 0 when there is none.
    known: [u8; Known::COUNT],
    /// The end of the last field line's CRLF, where the empty line starts.
    end: u32,
    /// The `Content-Length` declared, when one is.
    content_length: Option<u64>,
}

/// The fields baton reads or leaves out of a plain request ([`RequestFields`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    Host,
    Accept,
    RequestId,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    Forwarded,
    Expect,
    Connection,
    KeepAlive,
}

impl Known {
    pub const COUNT: usize = 10;
    const ALL: [Known; Known::COUNT] = [
        Known::Host,
        Known::Accept,
        Known::RequestId,
        Known::ForwardedFor,
        Known::ForwardedProto,
        Known::ForwardedHost,
        Known::Forwarded,
        Known::Expect,
        Known::Connection,
        Known::KeepAlive,
    ];

    /// The field a name (a token, in any case) is, if it is one of these.
    pub fn of(name: &str) -> Option<Known> {
        Known::ALL
            .into_iter()
            .find(|known| super::name_is(name.as_bytes(), known.as_str().as_bytes()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Known::Host => "host",
            Known::Accept => "accept",
            Known::RequestId => "x-request-id",
            Known::ForwardedFor => "x-forwarded-for",
            Known::ForwardedProto => "x-forwarded-proto",
            Known::ForwardedHost => "x-forwarded-host",
            Known::Forwarded => "forwarded",
            Known::Expect => "expect",
            Known::Connection => "connection",
            Known::KeepAlive => "keep-alive",
        }
    }
}

// Which lines are left out is kept as bits of a u128.
const _: () = assert!(MAX_HEADERS <= 128);

impl RequestFields {
    /// The fields at `spans` of `head` (the head, frozen, whose fields end at `end`), with
    /// the places of the known ones (`known`, each plus one).
    pub fn new(
        head: Bytes,
        spans: FieldSpans,
        known: [u8; Known::COUNT],
        end: u32,
        content_length: Option<u64>,
    ) -> RequestFields {
        RequestFields {
            head,
            spans,
            known,
            end,
            content_length,
        }
    }

    /// The value of the known field `field`, if the request has it (and `http` takes it).
    pub fn get(&self, field: Known) -> Option<HeaderValue> {
        let at = usize::from(self.known[field as usize].checked_sub(1)?);
        let (_, value) = *self.spans.0.get(at)?;
        HeaderValue::from_maybe_shared(slice(&self.head, value)).ok()
    }

    /// Whether the request has the known field `field`.
    pub fn has(&self, field: Known) -> bool {
        self.known[field as usize] != 0
    }

    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// All the fields in a header map, for the stages that read them by name, with room
    /// for one more; `None` when a name or value is not valid for `http` (the server's
    /// checks leave none such).
    pub fn to_map(&self) -> Option<HeaderMap> {
        self.spans.to_map(&self.head, 1)
    }

    /// The field lines that stay, as they were read: all but those of the known fields
    /// `leave_out` picks.
    pub fn encode(&self, out: &mut BytesMut, leave_out: impl Fn(Known) -> bool) {
        let mut skip = 0u128;
        for (field, &at) in Known::ALL.iter().zip(&self.known) {
            if at != 0 && leave_out(*field) {
                skip |= 1 << (at - 1);
            }
        }
        let fields = &self.spans.0;
        let Some(&((first, _), _)) = fields.first() else {
            return;
        };
        let mut from = first as usize;
        while skip != 0 {
            let at = skip.trailing_zeros() as usize;
            skip &= skip - 1;
            let ((start, _), _) = fields[at];
            let next = fields
                .get(at + 1)
                .map_or(self.end, |&((start, _), _)| start);
            out.extend_from_slice(&self.head[from..start as usize]);
            from = next as usize;
        }
        out.extend_from_slice(&self.head[from..self.end as usize]);
    }
}

/// Header field lines passed on as they were read, for an answer that goes from an
/// HTTP/1.1 upstream to an HTTP/1.1 client with nothing on the way that reads its fields:
/// building a header map for it and encoding the map again cost about a tenth of all the
/// work baton did for a small proxied request.
///
/// The lines are a block of the head (each checked to end in CRLF), less the lines of
/// fields left out (hop-by-hop ones, and those baton sets itself).
pub struct RawFields {
    head: Bytes,
    /// From the first field line's start to the end of the last one's CRLF.
    lines: Span,
    /// Lines within `lines` that are not passed on, in order.
    left_out: [Span; RawFields::MOST_LEFT_OUT],
    left_out_len: u8,
    /// The `Content-Length` the fields declare.
    content_length: Option<u64>,
    /// Whether there is a `Date` field.
    date: bool,
    /// Fields baton adds, written after the lines ([`RawFields::add`]).
    added: SmallVec<[(HeaderName, HeaderValue); 2]>,
}

impl RawFields {
    /// The most lines that can be left out; a head with more is put in a map instead.
    pub const MOST_LEFT_OUT: usize = 4;

    /// The field lines of `fields`, parsed by httparse from `buf` (shorter than 4 GiB),
    /// whose head ends at `len`, less those whose index `keep` refuses. `None` when a line
    /// does not end in CRLF or more than [`RawFields::MOST_LEFT_OUT`] are left out: such
    /// heads go into a header map, which is re-encoded.
    pub fn of(
        buf: &[u8],
        fields: &[httparse::Header<'_>],
        len: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Option<RawFields> {
        let end = len.checked_sub(2)?;
        let start = fields
            .first()
            .map_or(end, |f| span(buf, f.name.as_bytes()).0 as usize);
        let mut raw = RawFields {
            head: Bytes::new(),
            lines: (start as u32, end as u32),
            left_out: [(0, 0); RawFields::MOST_LEFT_OUT],
            left_out_len: 0,
            content_length: None,
            date: false,
            added: SmallVec::new(),
        };
        for (i, field) in fields.iter().enumerate() {
            let line_start = span(buf, field.name.as_bytes()).0;
            let line_end = fields
                .get(i + 1)
                .map_or(end as u32, |next| span(buf, next.name.as_bytes()).0);
            if buf.get((line_end as usize).saturating_sub(2)..line_end as usize) != Some(b"\r\n") {
                return None;
            }
            if !keep(i) {
                let slot = raw.left_out.get_mut(usize::from(raw.left_out_len))?;
                *slot = (line_start, line_end);
                raw.left_out_len += 1;
            }
        }
        (buf.get(end..len) == Some(b"\r\n")).then_some(raw)
    }

    /// Takes the head the lines are in (the buffer given to [`RawFields::of`], frozen),
    /// the `Content-Length` its fields declare, and whether one of them is `Date`.
    pub fn set_head(&mut self, head: Bytes, content_length: Option<u64>, date: bool) {
        self.head = head;
        self.content_length = content_length;
        self.date = date;
    }

    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    pub fn has_date(&self) -> bool {
        self.date
    }

    /// Adds a field to write after the lines passed on: for the fields baton sets on every
    /// answer, which then need no header map.
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.added.push((name, value));
    }

    /// The lines passed on, as they were read, and baton's own after them.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut at = self.lines.0 as usize;
        for &(start, end) in &self.left_out[..usize::from(self.left_out_len)] {
            out.extend_from_slice(&self.head[at..start as usize]);
            at = end as usize;
        }
        out.extend_from_slice(&self.head[at..self.lines.1 as usize]);
        for (name, value) in &self.added {
            encode_field(out, name.as_str(), value.as_bytes());
        }
    }

    /// The fields passed on, appended to `map` (for an answer that goes out over HTTP/2
    /// after all); `None` when a name or value is not valid for `http` (the others are
    /// appended).
    pub fn append_to(&self, map: &mut HeaderMap) -> Option<()> {
        let mut block = BytesMut::with_capacity(self.head.len());
        self.encode(&mut block);
        block.extend_from_slice(b"\r\n");
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let httparse::Status::Complete((_, fields)) =
            httparse::parse_headers(&block, &mut fields).ok()?
        else {
            return None;
        };
        append_fields(map, fields).then_some(())
    }
}
