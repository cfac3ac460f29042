//! Where a body ends. The proxy forwards bodies byte for byte (chunked stays chunked, trailers
//! included) and only needs to know where each one ends: [`BodyProgress`] is told about the
//! bytes as they pass and says how many of them belong to the body.
//!
//! The chunked parser is strict (CRLF line ends, hex sizes without sign or spaces, bounded
//! extensions and trailers): a lenient one is how a proxy and a backend come to disagree about
//! where a body ends.

use std::ops::Range;

use crate::head::Framing;

/// Longest chunk-size line (size, extensions, CRLF) and longest trailer section accepted.
pub(crate) const MAX_CHUNK_LINE_BYTES: usize = 4096;
pub(crate) const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why a body's framing is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub(crate) struct FramingError(&'static str);

/// How far through its body a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyProgress {
    /// This many bytes to go.
    Length(u64),
    Chunked(Chunked),
    /// Until the sender closes.
    UntilClose,
    Done,
}

impl BodyProgress {
    pub(crate) fn new(framing: Framing) -> BodyProgress {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyProgress::Done,
            Framing::Length(n) => BodyProgress::Length(n),
            Framing::Chunked => BodyProgress::Chunked(Chunked::new()),
            Framing::UntilClose => BodyProgress::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyProgress::Done)
    }

    /// Takes in the next bytes of the stream: how many of them (from the front) are body. Fewer
    /// than offered means the body ended there ([`is_done`](Self::is_done) is then true) and the
    /// rest belongs to whatever comes next.
    pub(crate) fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match self {
            BodyProgress::Done => Ok(0),
            BodyProgress::UntilClose => Ok(input.len()),
            BodyProgress::Length(remaining) => {
                let n = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                *remaining -= n as u64;
                if *remaining == 0 {
                    *self = BodyProgress::Done;
                }
                Ok(n)
            }
            BodyProgress::Chunked(chunked) => {
                let n = chunked.advance(input)?;
                if chunked.is_done() {
                    *self = BodyProgress::Done;
                }
                Ok(n)
            }
        }
    }

    /// Takes in the next bytes of the stream as [`advance`](Self::advance) does, for a
    /// receiver that needs the payload without the framing (HTTP/2 DATA frames): returns how
    /// many bytes were consumed, and which of them (one run) are payload.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(usize, Range<usize>), FramingError> {
        match self {
            BodyProgress::Chunked(chunked) => {
                let decoded = chunked.decode(input)?;
                if chunked.is_done() {
                    *self = BodyProgress::Done;
                }
                Ok(decoded)
            }
            _ => {
                let n = self.advance(input)?;
                Ok((n, 0..n))
            }
        }
    }

    /// A chunked body past its last chunk: the bytes still to come are its trailer section.
    pub(crate) fn in_trailers(&self) -> bool {
        matches!(self, BodyProgress::Chunked(chunked) if chunked.in_trailers())
    }

    /// Bytes left of a body of known length.
    pub(crate) fn remaining_length(&self) -> Option<u64> {
        match self {
            BodyProgress::Length(n) => Some(*n),
            _ => None,
        }
    }

    /// The stream ended: fine only for a body that runs until close.
    pub(crate) fn finish_at_eof(&mut self) -> bool {
        match self {
            BodyProgress::UntilClose | BodyProgress::Done => {
                *self = BodyProgress::Done;
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size (at least one seen if `digits > 0`).
    Size,
    /// After `;`: extensions up to CR.
    Extension,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// Chunk data.
    Data,
    /// CR after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body's parser state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: State,
    /// Size being read, then data left in the current chunk.
    size: u64,
    digits: u8,
    /// Bytes of the current size line, or of the trailer section so far.
    line: usize,
    last: bool,
}

impl Chunked {
    fn new() -> Chunked {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            last: false,
        }
    }

    fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let n =
                    usize::try_from(self.size).map_or(input.len() - i, |s| s.min(input.len() - i));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.step(input[i])?;
            i += 1;
            if self.state == State::Done {
                break;
            }
        }
        Ok(i)
    }

    /// Consumes a prefix of `input`: a run of chunk data (its range returned), or the framing
    /// bytes up to the next chunk data, the trailer section or the end (an empty range).
    fn decode(&mut self, input: &[u8]) -> Result<(usize, Range<usize>), FramingError> {
        if self.state == State::Data {
            let n = usize::try_from(self.size).map_or(input.len(), |s| s.min(input.len()));
            self.size -= n as u64;
            if self.size == 0 {
                self.state = State::DataCr;
            }
            return Ok((n, 0..n));
        }
        let mut i = 0;
        while i < input.len() && self.state != State::Data && self.state != State::Done {
            let before_trailers = !self.in_trailers();
            self.step(input[i])?;
            i += 1;
            if before_trailers && self.in_trailers() {
                // The trailer section starts with the next call.
                break;
            }
        }
        Ok((i, i..i))
    }

    /// Past the last chunk: what follows is the trailer section.
    fn in_trailers(&self) -> bool {
        self.last && self.state != State::Done
    }

    /// Takes one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), FramingError> {
        match self.state {
            State::Size => {
                self.line += 1;
                if let Some(digit) = (b as char).to_digit(16) {
                    if self.digits == 16 {
                        return Err(FramingError("chunk size too large"));
                    }
                    self.size = (self.size << 4) | u64::from(digit);
                    self.digits += 1;
                } else if self.digits == 0 {
                    return Err(FramingError("missing chunk size"));
                } else if b == b';' {
                    self.state = State::Extension;
                } else if b == b'\r' {
                    self.state = State::SizeLf;
                } else {
                    return Err(FramingError("invalid chunk size"));
                }
            }
            State::Extension => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE_BYTES {
                    return Err(FramingError("chunk extension too long"));
                }
                match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' | 0 => return Err(FramingError("bare LF or NUL in chunk extension")),
                    _ => {}
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(FramingError("chunk size line not ended by CRLF"));
                }
                self.line = 0;
                self.digits = 0;
                if self.size == 0 {
                    self.last = true;
                    self.state = State::TrailerStart;
                } else {
                    self.state = State::Data;
                }
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(FramingError("chunk data not followed by CRLF"));
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(FramingError("chunk data not followed by CRLF"));
                }
                self.state = State::Size;
            }
            State::TrailerStart => {
                self.line += 1;
                match b {
                    b'\r' => self.state = State::EndLf,
                    b' ' | b'\t' => return Err(FramingError("folded trailer line")),
                    b'\n' | 0 => return Err(FramingError("bare LF or NUL in trailers")),
                    _ => self.state = State::TrailerLine,
                }
            }
            State::TrailerLine => {
                self.line += 1;
                if self.line > MAX_TRAILER_BYTES {
                    return Err(FramingError("trailers too large"));
                }
                match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' | 0 => return Err(FramingError("bare LF or NUL in trailers")),
                    _ => {}
                }
            }
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(FramingError("trailer line not ended by CRLF"));
                }
                self.state = State::TrailerStart;
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(FramingError("chunked body not ended by CRLF"));
                }
                self.state = State::Done;
            }
            State::Data | State::Done => unreachable!("handled above"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split at `at`; returns the body length found and whether it ended.
    fn body_len(input: &[u8], at: usize) -> Result<(usize, bool), FramingError> {
        let mut progress = BodyProgress::new(Framing::Chunked);
        let first = progress.advance(&input[..at])?;
        if progress.is_done() {
            return Ok((first, true));
        }
        let second = progress.advance(&input[at..])?;
        Ok((first + second, progress.is_done()))
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_split_anywhere() {
        let body =
            b"5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
        let mut stream = body.to_vec();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for at in 0..=stream.len() {
            assert_eq!(
                body_len(&stream, at),
                Ok((body.len(), true)),
                "split at {at}"
            );
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(body_len(b"5\r\nhel", 2), Ok((6, false)));
        assert_eq!(body_len(b"0\r\n\r", 4), Ok((4, false)));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"\r\n"[..],
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nx: a\nb\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                BodyProgress::new(Framing::Chunked).advance(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_extensions_and_trailers_are_refused() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE_BYTES + 10, b'a');
        assert!(BodyProgress::new(Framing::Chunked).advance(&line).is_err());
        let mut trailers = b"0\r\nx: ".to_vec();
        trailers.resize(MAX_TRAILER_BYTES + 10, b'a');
        assert!(BodyProgress::new(Framing::Chunked)
            .advance(&trailers)
            .is_err());
    }

    #[test]
    fn decoding_yields_the_payload_and_the_trailers_split_anywhere() {
        let body =
            b"5\r\nhello\r\n1a;x=y\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for at in 0..=body.len() {
            let mut progress = BodyProgress::new(Framing::Chunked);
            let (mut payload, mut trailers) = (Vec::new(), Vec::new());
            let mut consumed = 0;
            for piece in [&body[..at], &body[at..]] {
                let mut offset = 0;
                while offset < piece.len() && !progress.is_done() {
                    let was_trailers = progress.in_trailers();
                    let (n, data) = progress.decode(&piece[offset..]).expect("valid");
                    payload.extend_from_slice(&piece[offset..][data]);
                    if was_trailers {
                        trailers.extend_from_slice(&piece[offset..offset + n]);
                    }
                    offset += n;
                }
                consumed += offset;
            }
            assert!(progress.is_done(), "split at {at}");
            assert_eq!(consumed, body.len() - 4, "split at {at}: NEXT is not body");
            assert_eq!(payload, b"helloabcdefghijklmnopqrstuvwxyz", "split at {at}");
            assert_eq!(trailers, b"x-sum: 1\r\n\r\n", "split at {at}");
        }
    }

    #[test]
    fn lengths_and_until_close() {
        let mut length = BodyProgress::new(Framing::Length(5));
        assert_eq!(length.advance(b"abc"), Ok(3));
        assert_eq!(length.advance(b"defgh"), Ok(2));
        assert!(length.is_done());
        assert_eq!(length.advance(b"x"), Ok(0));
        assert!(BodyProgress::new(Framing::Empty).is_done());
        let mut short = BodyProgress::new(Framing::Length(5));
        assert_eq!(short.advance(b"ab"), Ok(2));
        assert!(!short.finish_at_eof(), "a short body is an error");
        let mut until_close = BodyProgress::new(Framing::UntilClose);
        assert_eq!(until_close.advance(b"anything"), Ok(8));
        assert!(until_close.finish_at_eof());
        assert!(until_close.is_done());
    }
}
