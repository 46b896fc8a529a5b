//! What the server sends on its WebSockets, as bytes on the wire: a [`Frame`] is one whole text frame (RFC 6455
//! header and payload together), built once when a message is made and shared by reference count with every
//! socket that sends it. A tick's heat delta is framed once per key and tile, not once per viewer, and a socket
//! writes it with no copy (`web::ws` writes a viewer's frames for a tick in one call).

use bytes::{BufMut, Bytes, BytesMut};

/// RFC 6455 opcodes, for the frames the server sends and the reader of the client's (`web::ws::wire`).
pub(crate) mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}
use opcode::{CLOSE, PING, PONG, TEXT};
/// The final fragment of a message: the server never fragments.
const FIN: u8 = 0x80;

/// One whole server frame, ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    bytes: Bytes,
    /// Where the payload starts (after the header).
    header: u8,
}

impl Frame {
    /// A text frame of `text` (UTF-8 by its type).
    pub fn text(text: impl AsRef<str>) -> Frame {
        Frame::new(TEXT, text.as_ref().as_bytes())
    }

    /// A close frame with `code` and `reason` (cut to the 123 bytes a control frame allows).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Frame::new(CLOSE, &payload)
    }

    pub fn ping() -> Frame {
        Frame::new(PING, &[])
    }

    /// The answer to a client's ping: its payload back (at most 125 bytes, as the reader checked).
    pub fn pong(payload: &[u8]) -> Frame {
        Frame::new(PONG, payload)
    }

    fn new(opcode: u8, payload: &[u8]) -> Frame {
        let len = payload.len();
        let mut bytes = BytesMut::with_capacity(len + 10);
        bytes.put_u8(FIN | opcode);
        if len < 126 {
            bytes.put_u8(len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            bytes.put_u8(126);
            bytes.put_u16(len);
        } else {
            bytes.put_u8(127);
            bytes.put_u64(len as u64);
        }
        let header = bytes.len() as u8;
        bytes.put_slice(payload);
        Frame { bytes: bytes.freeze(), header }
    }

    /// The whole frame, header and payload: what goes on the wire.
    pub fn wire(&self) -> &[u8] {
        &self.bytes
    }

    /// The message the frame carries.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.header)..]
    }

    /// The message as text (a text frame's payload is UTF-8 by construction; a control frame's may not be, and
    /// reads as empty).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.payload()).unwrap_or_default()
    }

    pub fn payload_len(&self) -> usize {
        self.bytes.len() - usize::from(self.header)
    }
}

/// A text frame reads as its message (for the places that look into one: the tests, relaying it to Redis).
impl std::ops::Deref for Frame {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Frame {
        Frame::text(text)
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_takes_one_three_or_nine_bytes_of_header() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let frame = Frame::text("x".repeat(len));
            assert_eq!(frame.wire().len(), len + header, "{len}");
            assert_eq!(frame.wire()[0], 0x81, "final text frame");
            assert_eq!(frame.payload_len(), len);
        }
        assert_eq!(Frame::text("hi").wire(), b"\x81\x02hi");
        assert_eq!(&Frame::text("x".repeat(300)).wire()[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(&Frame::text("x".repeat(65_536)).wire()[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn control_frames() {
        assert_eq!(Frame::close(1001, "bye").wire(), b"\x88\x05\x03\xe9bye");
        assert_eq!(Frame::close(1000, &"é".repeat(100)).payload_len(), 2 + 122, "cut on a character boundary");
        assert_eq!(Frame::ping().wire(), b"\x89\x00");
        assert_eq!(Frame::pong(b"abc").wire(), b"\x8a\x03abc");
    }
}
