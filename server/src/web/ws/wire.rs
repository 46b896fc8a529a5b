//! The client's side of the WebSocket wire (RFC 6455): frames in, reassembled into messages. The server's side
//! is [`crate::frame::Frame`], built once and shared. No extension is negotiated, so every reserved bit must be
//! clear; every client frame must be masked; a message larger than the limit ends the socket (1009), anything
//! else malformed too (1002), text that is not UTF-8 as well (1007).
//!
//! [`Reader::next`] only ever parses what is already in its buffer: its caller reads more into the buffer and
//! asks again, so a read cancelled midway (the socket's loop serving a tick) loses nothing.

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::opcode::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};

/// A message from the client, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Text(String),
    Binary(Bytes),
}

/// What a client frame (or the last fragment of a message) means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Message(Message),
    /// To be answered with a pong of the same payload.
    Ping(Bytes),
    Pong,
    /// The client is closing, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the socket must close.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WireError {
    /// A message (or a frame of one) larger than the limit.
    TooBig,
    /// A frame no client may send: the reason.
    Protocol(&'static str),
    /// A text message that is not UTF-8.
    NotUtf8,
}

/// The read buffer's unit of growth, and what an idle socket holds.
const CHUNK: usize = 4 * 1024;

/// Reads a client's frames out of the bytes received so far.
pub(crate) struct Reader {
    /// Received, not yet parsed.
    pub buf: BytesMut,
    /// The message whose fragments are arriving: its opcode and the payload so far.
    partial: Option<(u8, BytesMut)>,
    max_message: usize,
}

impl Reader {
    pub fn new(max_message: usize) -> Reader {
        Reader { buf: BytesMut::new(), partial: None, max_message }
    }

    /// Bytes the next read should make room for: a small chunk, or for a large frame as much again as has
    /// arrived of it (the buffer doubles, so a large message costs a few reads), never more than the rest of the
    /// frame. Room follows what arrived, not what a header claims: a header announcing a megabyte costs nothing
    /// until the megabyte comes.
    pub fn wanted(&self) -> usize {
        match header(&self.buf) {
            Some(Ok(h)) if (h.len as usize) <= self.max_message => {
                let rest = (h.start + h.len as usize).saturating_sub(self.buf.len());
                rest.min(self.buf.len().max(CHUNK)).max(CHUNK)
            }
            _ => CHUNK,
        }
    }

    /// Gives back a buffer that grew for a large message, if it is empty: called when the socket has been quiet
    /// for a while, so an idle socket holds a small one.
    pub fn shrink_when_idle(&mut self) {
        if self.buf.is_empty() && self.partial.is_none() && self.buf.capacity() > 16 * CHUNK {
            self.buf = BytesMut::new();
        }
    }

    /// The next event whose bytes have all been received; `Ok(None)` when more must be read first.
    pub fn next(&mut self) -> Result<Option<Event>, WireError> {
        loop {
            let Some(h) = header(&self.buf).transpose()? else { return Ok(None) };
            let control = h.opcode & 0x8 != 0;
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len());
            if h.len > self.max_message as u64 || (!control && so_far as u64 + h.len > self.max_message as u64) {
                return Err(WireError::TooBig);
            }
            let len = h.len as usize;
            if self.buf.len() < h.start + len {
                return Ok(None);
            }
            self.buf.advance(h.start);
            let mut payload = self.buf.split_to(len);
            unmask(&mut payload, h.mask);
            match h.opcode {
                PING => return Ok(Some(Event::Ping(payload.freeze()))),
                PONG => return Ok(Some(Event::Pong)),
                CLOSE => return close_code(&payload).map(|code| Some(Event::Close(code))),
                TEXT | BINARY if self.partial.is_some() => {
                    return Err(WireError::Protocol("a new message began before the last one ended"))
                }
                TEXT | BINARY if h.fin => return message(h.opcode, payload).map(Some),
                TEXT | BINARY => self.partial = Some((h.opcode, payload)),
                CONTINUATION => {
                    let Some((opcode, mut whole)) = self.partial.take() else {
                        return Err(WireError::Protocol("a continuation frame with no message to continue"));
                    };
                    whole.unsplit(payload);
                    if h.fin {
                        return message(opcode, whole).map(Some);
                    }
                    self.partial = Some((opcode, whole));
                }
                _ => return Err(WireError::Protocol("a reserved opcode")),
            }
        }
    }
}

/// A frame's header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: u64,
    /// Where the payload starts.
    start: usize,
}

/// The header at the start of `buf`: `None` until all of it has been received.
fn header(buf: &[u8]) -> Option<Result<Header, WireError>> {
    let [b0, b1, ..] = *buf else { return None };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b0 & 0x70 != 0 {
        return Some(Err(WireError::Protocol("a reserved bit is set")));
    }
    if b1 & 0x80 == 0 {
        return Some(Err(WireError::Protocol("a client frame must be masked")));
    }
    let (len, at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        len => (u64::from(len), 2),
    };
    if opcode & 0x8 != 0 && (!fin || len > 125) {
        return Some(Err(WireError::Protocol("a control frame must be whole and at most 125 bytes")));
    }
    let mask = buf.get(at..at + 4)?.try_into().ok()?;
    Some(Ok(Header { fin, opcode, mask, len, start: at + 4 }))
}

fn message(opcode: u8, payload: BytesMut) -> Result<Event, WireError> {
    Ok(Event::Message(if opcode == TEXT {
        Message::Text(String::from_utf8(payload.into()).map_err(|_| WireError::NotUtf8)?)
    } else {
        Message::Binary(payload.freeze())
    }))
}

fn close_code(payload: &[u8]) -> Result<Option<u16>, WireError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WireError::Protocol("a close frame's code takes two bytes")),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| WireError::NotUtf8)?;
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

/// Undoes the client's masking, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("eight bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: `first` is the header's first byte (FIN, opcode), the payload masked with [`MASK`].
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn reader(bytes: &[u8]) -> Reader {
        let mut r = Reader::new(1024 * 1024);
        r.buf.extend_from_slice(bytes);
        r
    }

    fn text(s: &str) -> Event {
        Event::Message(Message::Text(s.into()))
    }

    #[test]
    fn a_text_message_arrives_whole_however_the_bytes_are_cut() {
        let long = "pulsemap ".repeat(5_000);
        for payload in ["", "hello", long.as_str()] {
            let bytes = frame(0x81, payload.as_bytes());
            let mut r = Reader::new(1024 * 1024);
            for (i, byte) in bytes.iter().enumerate() {
                r.buf.extend_from_slice(&[*byte]);
                let got = r.next().unwrap();
                if i + 1 < bytes.len() {
                    assert_eq!(got, None, "incomplete at {i}");
                } else {
                    assert_eq!(got, Some(text(payload)));
                }
            }
            assert!(r.buf.is_empty());
        }
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between_them() {
        let mut bytes = frame(0x01, b"hel");
        bytes.extend(frame(0x89, b"are you there"));
        bytes.extend(frame(0x00, b"lo "));
        bytes.extend(frame(0x80, b"world"));
        bytes.extend(frame(0x82, &[1, 2, 3]));
        bytes.extend(frame(0x8A, b""));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        let mut r = reader(&bytes);
        assert_eq!(r.next(), Ok(Some(Event::Ping(Bytes::from_static(b"are you there")))));
        assert_eq!(r.next(), Ok(Some(text("hello world"))));
        assert_eq!(r.next(), Ok(Some(Event::Message(Message::Binary(Bytes::from_static(&[1, 2, 3]))))));
        assert_eq!(r.next(), Ok(Some(Event::Pong)));
        assert_eq!(r.next(), Ok(Some(Event::Close(Some(1000)))));
        assert_eq!(r.next(), Ok(None));
    }

    #[test]
    fn more_than_the_limit_is_refused_as_soon_as_a_header_says_so() {
        let mut r = Reader::new(10);
        r.buf.extend_from_slice(&frame(0x81, b"eleven byte")[..6]);
        assert_eq!(r.next(), Err(WireError::TooBig), "before the payload is received");
        let mut bytes = frame(0x01, b"123456");
        bytes.extend(frame(0x80, b"78901"));
        let mut r = Reader::new(10);
        r.buf.extend_from_slice(&bytes);
        assert_eq!(r.next(), Err(WireError::TooBig), "fragments count together");
        let mut r = Reader::new(10);
        r.buf.extend_from_slice(&frame(0x81, b"1234567890"));
        assert_eq!(r.next(), Ok(Some(text("1234567890"))), "the limit itself is allowed");
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert_eq!(reader(&unmasked).next(), Err(WireError::Protocol("a client frame must be masked")));
        assert!(matches!(reader(&frame(0x83, b"x")).next(), Err(WireError::Protocol(_))), "reserved opcode");
        assert!(matches!(reader(&frame(0xC1, b"x")).next(), Err(WireError::Protocol(_))), "RSV1 without extension");
        assert!(matches!(reader(&frame(0x80, b"x")).next(), Err(WireError::Protocol(_))), "nothing to continue");
        assert!(matches!(reader(&frame(0x09, b"x")).next(), Err(WireError::Protocol(_))), "fragmented ping");
        assert!(matches!(reader(&frame(0x89, &[0; 126])).next(), Err(WireError::Protocol(_))), "long ping");
        assert!(matches!(reader(&frame(0x88, &[3])).next(), Err(WireError::Protocol(_))), "one-byte close");
        let mut interleaved = frame(0x01, b"a");
        interleaved.extend(frame(0x81, b"b"));
        assert!(matches!(reader(&interleaved).next(), Err(WireError::Protocol(_))));
        assert_eq!(reader(&frame(0x81, &[0xff, 0xfe])).next(), Err(WireError::NotUtf8));
    }

    #[test]
    fn the_read_size_follows_what_arrived_not_what_the_header_claims() {
        let big = frame(0x81, &[b'a'; 100_000]);
        assert_eq!(reader(&big[..20]).wanted(), CHUNK, "a header alone gets a chunk");
        assert_eq!(reader(&big[..50_000]).wanted(), 50_000, "half the frame: as much again");
        assert_eq!(reader(&big[..90_000]).wanted(), 100_014 - 90_000, "never past the frame's end");
        assert_eq!(reader(&big[..100_010]).wanted(), CHUNK, "at least a chunk");
        assert_eq!(reader(&[]).wanted(), CHUNK);
        let mut r = reader(&big);
        assert_eq!(r.next().unwrap(), Some(text(&"a".repeat(100_000))));
        r.buf.reserve(1 << 20);
        r.shrink_when_idle();
        assert!(r.buf.capacity() < CHUNK, "an idle socket gives the large buffer back");
    }
}
