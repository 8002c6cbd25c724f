//! Splitting one output stream of the shell into the running command's bytes and markers.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// What was seen on one stream of the shell.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// Output of the command being waited for.
    Data(Bytes),
    /// The shell is ready; its pid.
    Ready(u32),
    /// The command with this sequence number ended with this code.
    End(u64, i32),
}

/// Splits one output stream of the shell into the current command's bytes and markers.
pub(super) struct Framer {
    /// `TOKEN ` as bytes.
    prefix: memmem::Finder<'static>,
    prefix_len: usize,
    buf: BytesMut,
    /// The sequence number whose output is wanted.
    pub(super) want: u64,
    inside: bool,
}

impl Framer {
    pub(super) fn new(token: &str) -> Self {
        let prefix = format!("{token} ").into_bytes();
        Self {
            prefix_len: prefix.len(),
            prefix: memmem::Finder::new(&prefix).into_owned(),
            buf: BytesMut::new(),
            want: 0,
            inside: false,
        }
    }

    fn emit(&mut self, upto: usize, events: &mut Vec<Event>) {
        let bytes = self.buf.split_to(upto).freeze();
        if self.inside && !bytes.is_empty() {
            events.push(Event::Data(bytes));
        }
    }

    pub(super) fn push(&mut self, chunk: &[u8], events: &mut Vec<Event>) {
        self.buf.extend_from_slice(chunk);
        loop {
            let Some(at) = self.prefix.find(&self.buf) else {
                // Keep what could be the start of a marker split across chunks.
                let keep = (self.prefix_len - 1).min(self.buf.len());
                self.emit(self.buf.len() - keep, events);
                return;
            };
            self.emit(at, events);
            let Some(nl) = memchr::memchr(b'\n', &self.buf[self.prefix_len..]) else {
                return;
            };
            let line = self.buf.split_to(self.prefix_len + nl + 1);
            let text = String::from_utf8_lossy(&line[self.prefix_len..line.len() - 1]);
            let mut words = text.split(' ');
            match (words.next(), words.next(), words.next()) {
                (Some("R"), Some(pid), None) => {
                    if let Ok(pid) = pid.parse() {
                        events.push(Event::Ready(pid));
                    }
                }
                (Some("S"), Some(n), None) => {
                    self.inside = n.parse() == Ok(self.want);
                }
                (Some("E"), Some(n), Some(rc)) => {
                    self.inside = false;
                    if let (Ok(n), Ok(rc)) = (n.parse(), rc.parse()) {
                        events.push(Event::End(n, rc));
                    }
                }
                // Not a marker of ours (only a command that read the token can print this).
                _ => {
                    if self.inside {
                        events.push(Event::Data(line.freeze()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framer: &mut Framer, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut events = Vec::new();
        for p in pieces {
            framer.push(p, &mut events);
        }
        let mut data = Vec::new();
        let mut rest = Vec::new();
        for e in events {
            match e {
                Event::Data(d) => data.extend_from_slice(&d),
                other => rest.push(other),
            }
        }
        (data, rest)
    }

    /// Markers split anywhere across chunks are found; stray bytes outside the wanted frame
    /// are dropped; marker-like text with another token, and no trailing newline, pass.
    #[test]
    fn framer_splits_output_and_markers_at_any_chunk_boundary() {
        let token = "berthT0K";
        let stream: Vec<u8> =
            b"stray berthT0K R 42\nberthT0K S 1\nold\nberthT0K E 1 0\nbg\nberthT0K S 2\nberthX E 2 5\n\x00\xffno newlineberthT0K E 2 7\nlate"
                .to_vec();
        for cut in 0..stream.len() {
            let mut framer = Framer::new(token);
            framer.want = 2;
            let (data, events) = feed(&mut framer, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                data,
                b"berthX E 2 5\n\x00\xffno newline".to_vec(),
                "cut at {cut}"
            );
            assert_eq!(
                events,
                [Event::Ready(42), Event::End(1, 0), Event::End(2, 7)],
                "cut at {cut}"
            );
        }
    }
}
