//! The frame header: magic, flags, dst, src, auth, handle, reply_to, length.
//!
//! Fixed size and little-endian so that a router can route on it without
//! touching the payload, and so that a garbled stream is caught at once by
//! the magic check.

/// First two bytes of every frame ("m7" read as little-endian u16).
pub const MAGIC: u16 = 0x376d;
/// Size of the encoded header in bytes.
pub const HEADER_LEN: usize = 28;
/// The payload is deflate-compressed (see [`crate::proto::compress`]).
pub const FLAG_COMPRESSED: u16 = 1;
/// The payload is a [`crate::proto::RemoteError`] instead of the reply type.
pub const FLAG_ERROR: u16 = 2;
/// Flags this version understands; a frame with others is rejected.
pub const KNOWN_FLAGS: u16 = FLAG_COMPRESSED | FLAG_ERROR;

/// Routing information of one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Bit set of `FLAG_*`.
    pub flags: u16,
    /// Context the message is for.
    pub dst: u32,
    /// Context that sent it.
    pub src: u32,
    /// Context whose authority the message carries (the sender unless a
    /// parent forwards on behalf of someone above it).
    pub auth: u32,
    /// Mailbox in `dst`.
    pub handle: u32,
    /// Mailbox in `src` that the reply goes to; 0 means "no reply wanted".
    pub reply_to: u32,
    /// Payload length in bytes.
    pub len: u32,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The first two bytes were not [`MAGIC`]: the stream is not ours or is
    /// out of step.
    BadMagic(u16),
    /// The announced payload is larger than the stream's maximum.
    TooLarge {
        /// Announced length.
        len: u32,
        /// The stream's limit.
        max: u32,
    },
    /// Flags this version does not know.
    UnknownFlags(u16),
}

impl Header {
    /// Encodes the header into its 28 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.dst.to_le_bytes());
        b[8..12].copy_from_slice(&self.src.to_le_bytes());
        b[12..16].copy_from_slice(&self.auth.to_le_bytes());
        b[16..20].copy_from_slice(&self.handle.to_le_bytes());
        b[20..24].copy_from_slice(&self.reply_to.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and validates a header; `max` is the largest payload accepted.
    pub fn decode(b: &[u8; HEADER_LEN], max: u32) -> Result<Header, HeaderError> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let magic = u16_at(0);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let flags = u16_at(2);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let len = u32_at(24);
        if len > max {
            return Err(HeaderError::TooLarge { len, max });
        }
        Ok(Header {
            flags,
            dst: u32_at(4),
            src: u32_at(8),
            auth: u32_at(12),
            handle: u32_at(16),
            reply_to: u32_at(20),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header { flags: FLAG_ERROR, dst: 1, src: 2, auth: 3, handle: 4, reply_to: 5, len: 6 };
        assert_eq!(Header::decode(&h.encode(), 6), Ok(h));
        assert_eq!(Header::decode(&h.encode(), 5), Err(HeaderError::TooLarge { len: 6, max: 5 }));
        let mut bad = h.encode();
        bad[0] = b'x';
        assert!(matches!(Header::decode(&bad, 10), Err(HeaderError::BadMagic(_))));
        let mut flags = h.encode();
        flags[3] = 0x80;
        assert!(matches!(Header::decode(&flags, 10), Err(HeaderError::UnknownFlags(_))));
    }
}
