//! Where a request body ends: `Content-Length` counting and a chunked-coding state
//! machine (RFC 9112 §7.1), fed bytes as they arrive, in pieces of any size.

/// Hex digits of the largest chunk size accepted (2^64 - 1).
const MAX_CHUNK_SIZE_DIGITS: u8 = 16;

pub(super) enum Framing {
    Length(u64),
    Chunked(Chunk),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Chunk {
    Size { digits: u8, value: u64 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
    Invalid,
}

impl Chunk {
    pub(super) fn start() -> Chunk {
        Chunk::Size {
            digits: 0,
            value: 0,
        }
    }

    /// Advances over `bytes`; returns how many belong to the body (all of them unless the
    /// body ends inside `bytes`).
    pub(super) fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunk::Data(remaining) = self {
                let take = (*remaining).min((bytes.len() - i) as u64);
                *remaining -= take;
                i += take as usize;
                if *remaining == 0 {
                    *self = Chunk::DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunk::Size { digits, value }, b) if b.is_ascii_hexdigit() => {
                    if digits >= MAX_CHUNK_SIZE_DIGITS {
                        Chunk::Invalid
                    } else {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        Chunk::Size {
                            digits: digits + 1,
                            value: (value << 4) | digit,
                        }
                    }
                }
                (Chunk::Size { digits, value }, b';' | b' ' | b'\t') if digits > 0 => {
                    Chunk::Extension { value }
                }
                (Chunk::Size { digits, value }, b'\r') if digits > 0 => Chunk::SizeLf { value },
                (Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value },
                (Chunk::Extension { value }, b) if b != b'\n' => Chunk::Extension { value },
                (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::TrailerStart,
                (Chunk::SizeLf { value }, b'\n') => Chunk::Data(value),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::start(),
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::TrailerStart | Chunk::Trailer, b) if b != b'\r' && b != b'\n' => {
                    Chunk::Trailer
                }
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::EndLf, b'\n') => {
                    *self = Chunk::Done;
                    return i;
                }
                _ => Chunk::Invalid,
            };
            if *self == Chunk::Invalid {
                return bytes.len();
            }
        }
        i
    }
}

impl Framing {
    /// Advances over `bytes`; returns how many belong to the body.
    pub(super) fn advance(&mut self, bytes: &[u8]) -> usize {
        match self {
            Framing::Length(remaining) => {
                let take = (*remaining).min(bytes.len() as u64);
                *remaining -= take;
                take as usize
            }
            Framing::Chunked(chunk) => chunk.advance(bytes),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    pub(super) fn is_invalid(&self) -> bool {
        matches!(self, Framing::Chunked(Chunk::Invalid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\ntrailer: x\r\n\r\nGET /next";
        let mut chunk = Chunk::start();
        let used = chunk.advance(body);
        assert_eq!(chunk, Chunk::Done);
        assert_eq!(&body[used..], b"GET /next");

        // Byte by byte gives the same answer.
        let mut chunk = Chunk::start();
        let mut used = 0;
        for b in body.iter() {
            if chunk == Chunk::Done {
                break;
            }
            used += chunk.advance(std::slice::from_ref(b));
        }
        assert_eq!(&body[used..], b"GET /next");

        let mut bad = Chunk::start();
        bad.advance(b"zz\r\n");
        assert_eq!(bad, Chunk::Invalid);
        let mut huge = Chunk::start();
        huge.advance(b"11111111111111111\r\n");
        assert_eq!(huge, Chunk::Invalid);
    }
}
