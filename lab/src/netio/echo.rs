//! The line protocol between `serve` and `probe`: a request line (capped at 1 KiB), the
//! one-line answer naming the server and what it saw, and the bulk "sink" mode used
//! for transfer tests.

use std::io::{self, Read};
use std::net::SocketAddr;

use super::probe::Proto;

/// The longest request line the server reads; longer input is cut there.
pub(crate) const MAX_LINE_LEN: usize = 1024;
/// What probes send; the server answers any line the same way.
pub(crate) const PROBE_REQUEST: &[u8] = b"hello\n";
/// A first line asking the server to count bytes until EOF.
pub(crate) const SINK_REQUEST: &[u8] = b"sink";
pub(crate) const RECEIVED_PREFIX: &str = "received ";

/// One request line, and whatever arrived after its newline in the same reads.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) text: Vec<u8>,
    pub(crate) rest: Vec<u8>,
}

/// Reads up to the first newline, EOF or `MAX_LINE_LEN` bytes, whichever comes first;
/// never reads more than `MAX_LINE_LEN` bytes.
pub(crate) fn read_line(reader: &mut impl Read) -> io::Result<Line> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; MAX_LINE_LEN];
    loop {
        if let Some(newline) = buf.iter().position(|&b| b == b'\n') {
            let rest = buf.split_off(newline + 1);
            buf.pop();
            return Ok(Line { text: buf, rest });
        }
        let room = MAX_LINE_LEN - buf.len();
        if room == 0 {
            return Ok(Line {
                text: buf,
                rest: Vec::new(),
            });
        }
        match reader.read(&mut chunk[..room]) {
            Ok(0) => {
                return Ok(Line {
                    text: buf,
                    rest: Vec::new(),
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// The server's answer: who answered, whom it saw, over what.
pub(crate) fn reply_line(name: &str, peer: SocketAddr, proto: Proto, port: u16) -> String {
    format!("lumen-echo name={name} peer={peer} proto={proto} port={port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_line_from_rest() {
        let mut input: &[u8] = b"sink\nabcdef";
        let line = read_line(&mut input).unwrap();
        assert_eq!(line.text, b"sink");
        assert_eq!(line.rest, b"abcdef");
    }

    #[test]
    fn eof_and_cap_end_the_line() {
        let mut input: &[u8] = b"no newline";
        assert_eq!(read_line(&mut input).unwrap().text, b"no newline");
        let long = vec![b'x'; 3000];
        let mut input: &[u8] = &long;
        let line = read_line(&mut input).unwrap();
        assert_eq!(line.text.len(), MAX_LINE_LEN);
        assert_eq!(
            input.len(),
            3000 - MAX_LINE_LEN,
            "nothing read beyond the cap"
        );
    }

    #[test]
    fn reply_names_server_peer_and_port() {
        let peer: SocketAddr = "10.244.1.5:40000".parse().unwrap();
        assert_eq!(
            reply_line("pod-a", peer, Proto::Udp, 81),
            "lumen-echo name=pod-a peer=10.244.1.5:40000 proto=udp port=81\n"
        );
    }
}
