//! Reading frames from a stream, the one way the agent does it: from its
//! parent and from each child it carries (multi-hop).
//!
//! A [`FrameReader`] is a stream's read side and its decoder; [`read_frames`]
//! reads it a bounded number of times per wake-up (so one busy stream
//! cannot starve the others in the loop) and hands every whole frame to the
//! caller, then says why it stopped ([`ReadEnd`]). What a frame means, and
//! what an end means, is the caller's: the parent's end is the agent's, a
//! child's is that child's.

use alloc::vec::Vec;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::core::side::{self, Io};
use crate::core::stream::Decoder;
use crate::proto::Message;

/// Reads per wake-up, at most.
const READS_PER_EVENT: usize = 16;

/// The read side of a stream of frames.
pub struct FrameReader {
    fd: OwnedFd,
    decoder: Decoder,
}

impl FrameReader {
    /// A reader of `fd` accepting payloads up to `max` bytes.
    pub fn new(fd: OwnedFd, max: u32) -> FrameReader {
        FrameReader { fd, decoder: Decoder::new(max) }
    }

    /// The stream's fd, to register it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Hands back a frame's payload buffer, for the next large frame.
    pub fn recycle(&mut self, v: Vec<u8>) {
        self.decoder.recycle(v);
    }
}

/// Why [`read_frames`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Nothing more for now: the stream is drained, or this wake-up's
    /// reads are used up (the poller is level-triggered and calls again),
    /// or the caller asked to stop.
    Later,
    /// End of file.
    Closed,
    /// A read failed with this errno.
    Failed(i32),
    /// A frame did not decode: the stream cannot be trusted any further.
    Malformed,
    /// The reader went away while its frames were handled.
    Gone,
}

/// Reads the stream that `reader` finds in `cx` and calls `on_frame` for
/// every whole frame; after each read's frames, stops if `stop` says so.
/// The reader is looked up again after each frame, since handling one may
/// change `cx`.
pub fn read_frames<C, R, F, S>(cx: &mut C, reader: R, mut on_frame: F, stop: S) -> ReadEnd
where
    R: for<'a> Fn(&'a mut C) -> Option<&'a mut FrameReader>,
    F: FnMut(&mut C, Message),
    S: Fn(&C) -> bool,
{
    for _ in 0..READS_PER_EVENT {
        let Some(r) = reader(cx) else { return ReadEnd::Gone };
        let fd = r.fd.as_fd();
        match r.decoder.read_with(|b| side::read(fd, b)) {
            Ok(Io::Done(n)) => {
                let drained = n < r.decoder.last_offer();
                r.decoder.filled(n);
                loop {
                    let Some(r) = reader(cx) else { return ReadEnd::Gone };
                    match r.decoder.next_message() {
                        Ok(Some(m)) => on_frame(cx, m),
                        Ok(None) => break,
                        Err(_) => return ReadEnd::Malformed,
                    }
                }
                if stop(cx) || drained {
                    return ReadEnd::Later;
                }
            }
            Ok(Io::WouldBlock) => return ReadEnd::Later,
            Ok(Io::Closed) => return ReadEnd::Closed,
            Err(e) => return ReadEnd::Failed(e.raw_os_error()),
        }
    }
    ReadEnd::Later
}
