//! [`Stream`] framing: bytes in, [`Message`]s out, and the bounded transmit
//! buffer.
//!
//! The decoder never trusts the wire: the header is validated (magic, flags,
//! length against the stream's maximum) before anything is allocated for
//! the body, and any violation is a [`FrameError`] after which the stream
//! must be closed. Large bodies are read straight into their final buffer,
//! so a 100 MB message is copied once.

use alloc::vec;
use alloc::vec::Vec;

use crate::proto::header::{Header, HeaderError, HEADER_LEN};
use crate::proto::Message;

/// Size of the staging buffer for headers and small messages.
pub const READ_CHUNK: usize = 64 * 1024;

/// A frame that breaks the rules; the stream must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// See [`HeaderError`].
    Header(HeaderError),
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    body: Option<(Header, Vec<u8>, usize)>,
    max: u32,
    offered: usize,
}

impl Decoder {
    /// A decoder that accepts payloads up to `max` bytes.
    pub fn new(max: u32) -> Decoder {
        Decoder { buf: vec![0; READ_CHUNK], start: 0, end: 0, body: None, max, offered: 0 }
    }

    /// Reads once from `read` (which fills a slice and returns how much it
    /// filled, or the reader's own outcome type) into the decoder.
    pub fn read_with<T, F: FnOnce(&mut [u8]) -> T>(&mut self, read: F) -> T {
        // A large body in progress with nothing staged: read straight into it.
        if self.start == self.end {
            if let Some((_, body, filled)) = &mut self.body {
                if body.len() - *filled >= READ_CHUNK {
                    self.start = 0;
                    self.end = 0;
                    self.offered = body.len() - *filled;
                    return read(&mut body[*filled..]);
                }
            }
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < HEADER_LEN {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.offered = self.buf.len() - self.end;
        read(&mut self.buf[self.end..])
    }

    /// Size of the slice the last `read_with` offered; a read shorter than
    /// this drained the fd, so the caller can skip the read that would
    /// only return EAGAIN.
    pub fn last_offer(&self) -> usize {
        self.offered
    }

    /// Records that the last `read_with` put `n` bytes in place.
    pub fn filled(&mut self, n: usize) {
        if self.start == 0 && self.end == 0 {
            if let Some((_, body, filled)) = &mut self.body {
                if body.len() - *filled >= READ_CHUNK {
                    *filled += n;
                    return;
                }
            }
        }
        self.end += n;
    }

    /// Copies `data` in (for tests and fuzzing; the fast path is `read_with`).
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Result<Message, FrameError>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.read_with(|b| {
                let n = b.len().min(data.len());
                b[..n].copy_from_slice(&data[..n]);
                n
            });
            self.filled(n);
            data = &data[n..];
            loop {
                match self.next_message() {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if let Some((_, body, filled)) = &mut self.body {
            let take = (body.len() - *filled).min(self.end - self.start);
            body[*filled..*filled + take].copy_from_slice(&self.buf[self.start..self.start + take]);
            *filled += take;
            self.start += take;
            if *filled < body.len() {
                return Ok(None);
            }
            let (header, data, _) = self.body.take().expect("checked above");
            return Ok(Some(Message { header, data }));
        }
        if self.end - self.start < HEADER_LEN {
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        let header = Header::decode(&raw, self.max).map_err(FrameError::Header)?;
        let len = header.len as usize;
        let avail = self.end - self.start - HEADER_LEN;
        self.start += HEADER_LEN;
        if avail >= len {
            let data = self.buf[self.start..self.start + len].to_vec();
            self.start += len;
            return Ok(Some(Message { header, data }));
        }
        let mut body = vec![0u8; len];
        body[..avail].copy_from_slice(&self.buf[self.start..self.end]);
        self.start = self.end;
        self.body = Some((header, body, avail));
        Ok(None)
    }

    /// Bytes received but not yet returned as messages (for diagnostics).
    pub fn buffered(&self) -> usize {
        self.end - self.start + self.body.as_ref().map_or(0, |(_, _, f)| *f)
    }
}

/// Outgoing bytes not yet written; the owner bounds it by not queueing
/// above its high-water mark.
#[derive(Debug, Default)]
pub struct TxBuffer {
    buf: Vec<u8>,
    pos: usize,
}

impl TxBuffer {
    /// Drops the written prefix before appending, when it is most of the
    /// buffer (here, not in `consume`: compacting while a large frame drains
    /// in small writes would move the rest again and again).
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Appends one framed message.
    pub fn push(&mut self, header: &Header, payload: &[u8]) {
        self.compact();
        let mut h = *header;
        h.len = payload.len() as u32;
        self.buf.extend_from_slice(&h.encode());
        self.buf.extend_from_slice(payload);
    }

    /// Queues an already encoded frame held in `frame[offset..]`; when
    /// nothing else is queued the vector is taken as is, without a copy.
    pub fn push_frame(&mut self, frame: Vec<u8>, offset: usize) {
        if self.is_empty() {
            self.buf = frame;
            self.pos = offset;
        } else {
            self.compact();
            self.buf.extend_from_slice(&frame[offset..]);
        }
    }

    /// Appends bytes that are not a frame (the bootstrap marker).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes to write next.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > 4 * READ_CHUNK {
                self.buf.shrink_to(READ_CHUNK);
            }
        }
    }
}

/// Encodes one framed message into a fresh vector (header + payload).
pub fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut h = *header;
    h.len = payload.len() as u32;
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&h.encode());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::header::MAGIC;

    fn frame(handle: u32, payload: &[u8]) -> Vec<u8> {
        encode(&Header { handle, ..Header::default() }, payload)
    }

    #[test]
    fn split_anywhere() {
        let mut wire = Vec::new();
        let big = vec![0xabu8; 300_000];
        wire.extend(frame(1, b"hello"));
        wire.extend(frame(2, &big));
        wire.extend(frame(3, b""));
        for chunk in [1usize, 7, 28, 4096, 65536, 1 << 20] {
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                got.extend(d.feed(part));
            }
            let got: Vec<Message> = got.into_iter().map(|r| r.expect("valid")).collect();
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[0].data, b"hello");
            assert_eq!(got[1].data, big);
            assert_eq!(got[2].header.handle, 3);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn rejects_before_allocating() {
        let mut d = Decoder::new(1000);
        let h = Header { len: u32::MAX, ..Header::default() };
        let r = d.feed(&h.encode());
        assert_eq!(r, vec![Err(FrameError::Header(HeaderError::TooLarge { len: u32::MAX, max: 1000 }))]);
        let mut d = Decoder::new(1000);
        let r = d.feed(b"SSH-2.0-OpenSSH_9.2 garbage garbage garbage\n");
        assert!(matches!(r[0], Err(FrameError::Header(HeaderError::BadMagic(m))) if m != MAGIC));
    }

    /// Random bytes, random frames with random corruption: the decoder
    /// returns messages or an error, never panics or over-allocates.
    #[test]
    fn fuzz_decoder_100k() {
        let mut rng = fastrand::Rng::with_seed(0x6d69746f);
        for case in 0..100_000u32 {
            let mut input = Vec::new();
            match case % 3 {
                0 => input.extend((0..rng.usize(0..200)).map(|_| rng.u8(..))),
                _ => {
                    for _ in 0..rng.usize(1..4) {
                        let payload: Vec<u8> = (0..rng.usize(0..100)).map(|_| rng.u8(..)).collect();
                        input.extend(frame(rng.u32(..), &payload));
                    }
                    for _ in 0..rng.usize(0..3) {
                        if !input.is_empty() {
                            let i = rng.usize(..input.len());
                            input[i] = rng.u8(..);
                        }
                    }
                    input.truncate(rng.usize(0..=input.len()));
                }
            }
            let mut d = Decoder::new(4096);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len());
                let out = d.feed(&rest[..n]);
                rest = &rest[n..];
                if out.iter().any(|r| r.is_err()) {
                    break;
                }
                for m in out.into_iter().flatten() {
                    assert!(m.data.len() <= 4096);
                    assert_eq!(m.data.len(), m.header.len as usize);
                }
            }
        }
    }
}
