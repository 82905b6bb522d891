//! Stream framing: bytes in, [`Message`]s out, and the bounded transmit
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
    /// A large body buffer handed back by the consumer ([`Decoder::recycle`]):
    /// the next large body reuses it instead of mapping fresh pages (musl
    /// maps every large allocation anew, so each 1 MiB chunk page-faulted).
    spare: Option<Vec<u8>>,
}

impl Decoder {
    /// A decoder that accepts payloads up to `max` bytes.
    pub fn new(max: u32) -> Decoder {
        Decoder { buf: vec![0; READ_CHUNK], start: 0, end: 0, body: None, max, offered: 0, spare: None }
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
        let mut body = match self.spare.take() {
            Some(mut v) if v.capacity() >= len => {
                // Only bytes beyond the old length need initialising (at
                // opt-level "z" that is a byte loop: 7 % of the agent's put).
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    v.resize(len, 0);
                }
                v
            }
            _ => vec![0u8; len],
        };
        body[..avail].copy_from_slice(&self.buf[self.start..self.end]);
        self.start = self.end;
        self.body = Some((header, body, avail));
        Ok(None)
    }

    /// Hands back a message's payload buffer once it is no longer needed,
    /// for the next large body to reuse (only large ones are kept).
    pub fn recycle(&mut self, v: Vec<u8>) {
        if v.capacity() >= READ_CHUNK && self.spare.as_ref().is_none_or(|s| s.capacity() < v.capacity()) {
            self.spare = Some(v);
        }
    }

    /// The spare body buffer, if one is held (the master's streams hand
    /// it back to the router's pool after each pump).
    pub fn take_spare(&mut self) -> Option<Vec<u8>> {
        self.spare.take()
    }

    /// Bytes received but not yet returned as messages (for diagnostics).
    pub fn buffered(&self) -> usize {
        self.end - self.start + self.body.as_ref().map_or(0, |(_, _, f)| *f)
    }
}

/// Outgoing bytes not yet written; the owner bounds it by not queueing
/// above its high-water mark.
///
/// A queue of segments: small messages are appended to the last segment,
/// a large frame built in place ([`TxBuffer::push_frame`]) is queued as its
/// own segment without a copy, and once written it is kept as a spare for
/// the next large frame ([`TxBuffer::take_spare`]). Copying large frames
/// into one growing buffer, and mapping a fresh one per chunk, was a tenth
/// of the agent's time in `get` (musl maps every large allocation anew).
/// One is kept, or while the owner streams a file up to [`MAX_SPARES`], a
/// window of chunks ([`TxBuffer::keep_spares`]): with one, every chunk
/// queued behind another still page-faulted a fresh buffer (240,000 faults
/// per GiB of a local `get`).
#[derive(Debug, Default)]
pub struct TxBuffer {
    segs: alloc::collections::VecDeque<Vec<u8>>,
    /// Bytes of the front segment already written.
    pos: usize,
    /// Bytes queued in all segments (including the written prefix).
    total: usize,
    spares: Vec<Vec<u8>>,
    /// Spares kept beyond the first ([`TxBuffer::keep_spares`]).
    extra_spares: usize,
}

/// The reading end of a stream is gone (a write failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerGone;

/// Largest written buffer kept as a spare (bounds what an idle stream holds).
const SPARE_MAX: usize = 2 << 20;

/// Written large frames kept for reuse at most (a transfer's window).
pub const MAX_SPARES: usize = 8;

impl TxBuffer {
    /// The segment small appends go to (a new one after a large frame).
    fn tail(&mut self) -> &mut Vec<u8> {
        let open = self.segs.back().is_some_and(|b| b.capacity() <= 4 * READ_CHUNK || b.len() < b.capacity());
        if !open || (self.segs.len() == 1 && self.pos > 0) {
            // A written large frame's buffer, if one was kept: the rest of
            // a 1 MiB chunk the socket did not take at once is copied here,
            // and a fresh buffer page-faulted on every byte of it (perf: the
            // master's faults in a local put).
            let seg = self.spares.pop().unwrap_or_default();
            self.segs.push_back(seg);
        }
        self.segs.back_mut().expect("pushed above")
    }

    /// Appends one framed message.
    pub fn push(&mut self, header: &Header, payload: &[u8]) {
        let mut h = *header;
        h.len = payload.len() as u32;
        let t = self.tail();
        t.extend_from_slice(&h.encode());
        t.extend_from_slice(payload);
        self.total += HEADER_LEN + payload.len();
    }

    /// Queues an already encoded frame held in `frame[offset..]`, without
    /// copying it.
    pub fn push_frame(&mut self, mut frame: Vec<u8>, offset: usize) {
        if self.is_empty() {
            // Nothing queued (at most an empty small buffer): the frame
            // becomes the front, so `pending` is never an empty slice
            // while bytes wait.
            self.segs.clear();
            self.pos = offset;
            self.total = frame.len();
        } else {
            frame.drain(..offset);
            self.total += frame.len();
        }
        self.segs.push_back(frame);
    }

    /// Appends bytes that are not a frame (the bootstrap marker).
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.tail().extend_from_slice(bytes);
        self.total += bytes.len();
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.total - self.pos
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes to write next (the rest of the front segment).
    pub fn pending(&self) -> &[u8] {
        self.segs.front().map_or(&[], |f| &f[self.pos..])
    }

    /// Marks `n` bytes of [`TxBuffer::pending`] as written.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        let Some(front) = self.segs.front() else { return };
        if self.pos < front.len() {
            return;
        }
        self.total -= front.len();
        self.pos = 0;
        if let Some(mut done) = self.segs.pop_front() {
            if done.capacity() > 4 * READ_CHUNK && done.capacity() <= SPARE_MAX {
                if self.spares.len() <= self.extra_spares {
                    done.clear();
                    self.spares.push(done);
                }
            } else if self.segs.is_empty() && done.capacity() <= 4 * READ_CHUNK {
                // Keep a small buffer for the next small messages.
                done.clear();
                self.segs.push_back(done);
            }
        }
    }

    /// Writes what is queued to the non-blocking `fd` until it would
    /// block or the queue is empty. `Err` when the peer is gone (the
    /// queued bytes stay; the owner decides what that means).
    pub fn write_to(&mut self, fd: rustix::fd::BorrowedFd<'_>) -> Result<(), PeerGone> {
        use crate::core::side::{self, Io};
        while !self.is_empty() {
            match side::write(fd, self.pending()) {
                Ok(Io::Done(n)) => self.consume(n),
                Ok(Io::WouldBlock) => break,
                Ok(Io::Closed) | Err(_) => return Err(PeerGone),
            }
        }
        Ok(())
    }

    /// An empty buffer with room for a large frame, if one was kept.
    pub fn take_spare(&mut self) -> Vec<u8> {
        self.spares.pop().unwrap_or_default()
    }

    /// Keeps up to `n` (1 to [`MAX_SPARES`]) written large frames for
    /// reuse, freeing any beyond that: more while a file streams out, one
    /// when idle (a hop's stream to each child keeps one).
    pub fn keep_spares(&mut self, n: usize) {
        let n = n.clamp(1, MAX_SPARES);
        self.extra_spares = n - 1;
        self.spares.truncate(n);
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

    #[test]
    fn tx_buffer_keeps_a_window_of_spares_only_while_asked() {
        // Eight 1 MiB frames queued behind each other, then written.
        let queue_and_write = |tx: &mut TxBuffer| {
            for _ in 0..8 {
                let mut f = tx.take_spare();
                f.resize(1 << 20, 1);
                tx.push_frame(f, 0);
            }
            while !tx.is_empty() {
                let n = tx.pending().len();
                tx.consume(n);
            }
        };
        let mut tx = TxBuffer::default();
        queue_and_write(&mut tx);
        assert_eq!(tx.spares.len(), 1, "one spare by default");
        tx.keep_spares(MAX_SPARES);
        queue_and_write(&mut tx);
        assert_eq!(tx.spares.len(), MAX_SPARES, "a window while a file streams out");
        // Reused, not allocated: every frame of the next window comes
        // from a kept buffer.
        let kept: Vec<*const u8> = tx.spares.iter().map(|v| v.as_ptr()).collect();
        let mut frames = Vec::new();
        for _ in 0..MAX_SPARES {
            frames.push(tx.take_spare());
        }
        assert!(frames.iter().all(|f| f.capacity() >= 1 << 20 && kept.contains(&f.as_ptr())));
        for mut f in frames {
            f.resize(1 << 20, 2);
            tx.push_frame(f, 0);
        }
        while !tx.is_empty() {
            let n = tx.pending().len();
            tx.consume(n);
        }
        tx.keep_spares(1);
        assert_eq!(tx.spares.len(), 1, "back to one once the transfer ends");
    }

    #[test]
    fn the_rest_of_a_large_frame_is_queued_in_a_kept_buffer() {
        let mut tx = TxBuffer::default();
        let mut f = tx.take_spare();
        f.resize(1 << 20, 1);
        tx.push_frame(f, 0);
        let n = tx.pending().len();
        tx.consume(n);
        let kept = tx.spares.first().map(|v| v.as_ptr()).expect("a written large frame is kept");
        // What a socket did not take of the next chunk: no fresh buffer.
        tx.push_raw(&[2u8; 700_000]);
        assert_eq!(tx.pending().as_ptr(), kept, "queued in the kept buffer");
        assert_eq!(tx.len(), 700_000);
    }

    #[test]
    fn tx_buffer_keeps_order_across_frames_and_partial_writes() {
        let mut tx = TxBuffer::default();
        let mut want = Vec::new();
        let mut got = Vec::new();
        let mut seed = 7u32;
        for i in 0..2000u32 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = if i % 50 == 0 { 300_000 } else { (seed >> 20) as usize };
            let payload: Vec<u8> = (0..len).map(|k| (k as u32 ^ i) as u8).collect();
            let h = Header { handle: i, ..Header::default() };
            want.extend_from_slice(&encode(&h, &payload));
            if i % 3 == 0 {
                // A frame built in place, with 5 bytes of room before it.
                let mut f = vec![0u8; 5];
                f.extend_from_slice(&encode(&h, &payload));
                tx.push_frame(f, 5);
            } else {
                tx.push(&h, &payload);
            }
            // Write a little (sometimes all), as a non-blocking socket would.
            let n = if i % 7 == 0 { tx.len() } else { (seed >> 12) as usize % 70_000 + 1 };
            assert!(!tx.pending().is_empty(), "bytes wait, so there is something to write");
            let n = tx.pending().len().min(n);
            got.extend_from_slice(&tx.pending()[..n]);
            tx.consume(n);
        }
        while !tx.is_empty() {
            let n = tx.pending().len();
            assert!(n > 0);
            got.extend_from_slice(tx.pending());
            tx.consume(n);
        }
        assert_eq!(tx.len(), 0);
        assert!(tx.pending().is_empty());
        assert!(got == want, "bytes out in the order they were queued");
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
