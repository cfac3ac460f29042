//! The byte buffer each side of a connection reads into: bytes are parsed in place and consumed
//! from the front, so a keep-alive connection reuses one allocation for every request.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// A fixed-capacity buffer holding `data[start..end]`, grown only on request (a request head
/// larger than the first capacity) and never past the caller's limit.
pub(crate) struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    pub(crate) fn with_capacity(capacity: usize) -> Buf {
        Buf {
            data: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Drops `n` bytes from the front.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether there is room to read more (after moving unread bytes to the front if needed).
    pub(crate) fn is_full(&self) -> bool {
        self.len() == self.data.len()
    }

    /// Doubles the capacity, up to `max`; `false` if it already is `max` or more.
    pub(crate) fn grow(&mut self, max: usize) -> bool {
        if self.data.len() >= max {
            return false;
        }
        let capacity = (self.data.len() * 2).clamp(1, max);
        let mut data = vec![0; capacity].into_boxed_slice();
        data[..self.len()].copy_from_slice(self.data());
        self.end = self.len();
        self.start = 0;
        self.data = data;
        true
    }

    /// The free space at the back, after moving unread bytes to the front when that frees some.
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    /// One read from `reader` into the free space: the bytes read, 0 at end of stream (or when
    /// the buffer is full; callers check [`Buf::is_full`] first).
    pub(crate) async fn read_from<R>(&mut self, reader: &mut R) -> io::Result<usize>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        poll_fn(|cx| self.poll_read_from(cx, reader)).await
    }

    /// [`read_from`](Self::read_from) as a poll, for callers that poll several things at once.
    pub(crate) fn poll_read_from<R>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let spare = self.spare();
        if spare.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut read = ReadBuf::new(spare);
        ready!(Pin::new(reader).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// A non-blocking read from `stream` into the free space: `Ok(None)` if nothing is ready
    /// (or there is no room), `Ok(Some(0))` at the end of the stream.
    pub(crate) fn try_read_from(&mut self, stream: &TcpStream) -> io::Result<Option<usize>> {
        let spare = self.spare();
        if spare.is_empty() {
            return Ok(None);
        }
        match stream.try_read(spare) {
            Ok(n) => {
                self.end += n;
                Ok(Some(n))
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_consumes_compacts_and_grows() {
        let mut buf = Buf::with_capacity(4);
        let mut input: &[u8] = b"abcdefgh";
        assert_eq!(buf.read_from(&mut input).await.expect("read"), 4);
        assert!(buf.is_full());
        assert_eq!(buf.read_from(&mut input).await.expect("full"), 0);
        buf.consume(2);
        assert_eq!(buf.data(), b"cd");
        assert_eq!(buf.read_from(&mut input).await.expect("read"), 2);
        assert_eq!(buf.data(), b"cdef");
        assert!(buf.grow(6));
        assert_eq!(buf.capacity(), 6);
        assert!(!buf.grow(6));
        assert_eq!(buf.read_from(&mut input).await.expect("read"), 2);
        assert_eq!(buf.data(), b"cdefgh");
        buf.consume(6);
        assert!(buf.is_empty());
    }
}
