//! Splitting a byte stream into lines, with a cap: the one line splitter
//! for a target's text (the agent's own stderr, a transport's stderr, the
//! bootstrap's marker lines).
//!
//! A target decides where its newlines are, so a line with none must not
//! grow a buffer without bound: a line longer than the cap comes out in
//! pieces of the cap's length, nothing lost. Complete lines are handed out
//! as slices of the buffer (no copy per line); what was handed out is
//! dropped from the front on the next [`Lines::extend`], so a burst of many
//! short lines costs one move, not one per line.

use alloc::vec::Vec;

/// Bytes fed in, complete lines out.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Where the bytes not yet handed out start.
    start: usize,
    max: usize,
}

impl Lines {
    /// A splitter whose lines are at most `max` bytes (at least 1).
    pub const fn new(max: usize) -> Lines {
        Lines { buf: Vec::new(), start: 0, max: if max == 0 { 1 } else { max } }
    }

    /// Appends `data`.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 {
            let len = self.buf.len();
            self.buf.copy_within(self.start..len, 0);
            self.buf.truncate(len - self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, without its `\n` (a `\r` before it is
    /// kept), or the next `max` bytes if no newline comes within them;
    /// `None` while the rest is a shorter, unfinished line.
    pub fn next_line(&mut self) -> Option<&[u8]> {
        let rest = &self.buf[self.start..];
        let window = &rest[..rest.len().min(self.max + 1)];
        let (len, used) = match window.iter().position(|&c| c == b'\n') {
            Some(i) => (i, i + 1),
            None if rest.len() >= self.max => (self.max, self.max),
            None => return None,
        };
        let at = self.start;
        self.start += used;
        Some(&self.buf[at..at + len])
    }

    /// Everything not handed out yet (empty if none): the last, unfinished
    /// line of a stream that ended, or what follows the line a caller
    /// stopped at; handed out like a line.
    pub fn finish(&mut self) -> &[u8] {
        let at = self.start;
        self.start = self.buf.len();
        &self.buf[at..]
    }

    /// Bytes not handed out yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::Lines;

    fn all(l: &mut Lines) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(line) = l.next_line() {
            out.push(line.to_vec());
        }
        out
    }

    #[test]
    fn lines_across_pieces_and_the_rest() {
        let mut l = Lines::new(100);
        l.extend(b"one\ntw");
        assert_eq!(all(&mut l), [b"one".to_vec()]);
        l.extend(b"o\r\n\nthree");
        assert_eq!(all(&mut l), [b"two\r".to_vec(), b"".to_vec()]);
        assert_eq!(l.pending(), 5);
        assert_eq!(l.finish(), b"three");
        assert_eq!(l.pending(), 0);
        assert_eq!(l.next_line(), None);
    }

    #[test]
    fn a_line_without_newline_comes_out_in_pieces_of_the_cap() {
        let mut l = Lines::new(4);
        l.extend(b"abcdefghij");
        assert_eq!(all(&mut l), [b"abcd".to_vec(), b"efgh".to_vec()]);
        l.extend(b"\n");
        assert_eq!(all(&mut l), [b"ij".to_vec()]);
        // A newline right after the cap ends that line, not an empty one.
        l.extend(b"wxyz\nq");
        assert_eq!(all(&mut l), [b"wxyz".to_vec()]);
        assert_eq!(l.finish(), b"q");
        assert_eq!(l.finish(), b"");
    }

    #[test]
    fn stopping_at_a_line_keeps_what_follows() {
        let mut l = Lines::new(64);
        l.extend(b"noise\nMITO2\n\x00\x01frame");
        assert_eq!(l.next_line(), Some(&b"noise"[..]));
        assert_eq!(l.next_line(), Some(&b"MITO2"[..]));
        assert_eq!(l.finish(), b"\x00\x01frame");
    }
}
