//! Text from a target, made fit for a person's terminal.
//!
//! Log lines, error messages and bootstrap noise come from contexts we do
//! not trust (ARCHITECTURE.md, "Security"): an escape sequence in them
//! could retitle, clear or reprogram the operator's terminal, and a line
//! with no end could fill the screen or the master's memory. Command
//! output that the user asked for (`mito run`) is passed through raw, as
//! ssh does; everything mito prints *about* a target goes through here.

use alloc::string::String;

/// `bytes` as text with control characters (other than tab) escaped as
/// `\u{..}` and at most `max_chars` characters kept, followed by a note of
/// how many were cut. Invalid UTF-8 becomes U+FFFD.
pub fn printable(bytes: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(max_chars + 32));
    // Writing to a String cannot fail.
    let rest = crate::proto::error::write_escaped_text(&mut out, &text, max_chars).unwrap_or(0);
    if rest > 0 {
        out.push_str(" … (");
        let mut digits = alloc::vec::Vec::new();
        crate::core::num::push_decimal(&mut digits, rest as u64);
        out.push_str(core::str::from_utf8(&digits).unwrap_or("?"));
        out.push_str(" more characters)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_control_characters_and_cuts_long_lines() {
        assert_eq!(printable(b"\x1b]0;owned\x07\x1b[2Jok\tfine", 100), "\\u{1b}]0;owned\\u{7}\\u{1b}[2Jok\tfine");
        assert_eq!(printable(b"abcdef", 3), "abc … (3 more characters)");
        assert_eq!(printable(b"caf\xc3\xa9 \xff", 10), "café \u{fffd}");
    }
}
