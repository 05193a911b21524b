//! The preamble some senders put before their xbstream.
//!
//! Percona `xtrabackup --fifo-streams` (8.0.33+) sends one control byte on each pipe before the chunks; ours and
//! MariaDB's send none. [`SkipControlByte`] takes a single leading byte off a stream when `XBSTCK01` follows it, so
//! either kind of pipe is read the same way.

use std::io::{self, Read};

/// Percona `xtrabackup --fifo-streams` (8.0.33+) sends one control byte before the xbstream on each pipe: a
/// single leading byte that is followed by `XBSTCK01` is skipped, so such pipes are read like ours.
pub struct SkipControlByte<R> {
    inner: R,
    /// The first bytes, read ahead to decide, not yet handed out.
    head: Vec<u8>,
    decided: bool,
}

impl<R: Read> SkipControlByte<R> {
    /// Wraps the start of a stream.
    pub fn new(inner: R) -> SkipControlByte<R> {
        SkipControlByte { inner, head: Vec::new(), decided: false }
    }

    fn decide(&mut self) -> io::Result<()> {
        let want = 1 + proto::MAGIC.len();
        let mut head = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match self.inner.read(&mut head[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(filled);
        if filled == want && head[0] != proto::MAGIC[0] && head[1..] == proto::MAGIC[..] {
            log::info!("skipping the control byte {:#04x} that Percona's FIFO datasink sends first", head[0]);
            head.remove(0);
        }
        head.reverse();
        self.head = head;
        self.decided = true;
        Ok(())
    }
}

impl<R: Read> Read for SkipControlByte<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.decided {
            self.decide()?;
        }
        if self.head.is_empty() || buf.is_empty() {
            return self.inner.read(buf);
        }
        let mut n = 0;
        while n < buf.len() {
            let Some(byte) = self.head.pop() else { break };
            buf[n] = byte;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        SkipControlByte::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn one_control_byte_before_the_magic_is_skipped_and_nothing_else() {
        assert_eq!(through(b"\x01XBSTCK01\0E"), b"XBSTCK01\0E");
        assert_eq!(through(b"XBSTCK01\0E"), b"XBSTCK01\0E");
        assert_eq!(through(b"\x01XBSTCK0"), b"\x01XBSTCK0", "too short to decide: kept");
        assert_eq!(through(b"\x01\x02XBSTCK01"), b"\x01\x02XBSTCK01", "only a single byte");
        assert_eq!(through(b""), b"");
    }
}
