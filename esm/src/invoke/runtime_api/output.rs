//! A worker's stdout and stderr, line by line, into esm's log.
//!
//! On Lambda a function's output goes to CloudWatch Logs; here each line becomes a
//! tracing event with target `esm::worker` and the fields `mapping`, `worker` and
//! `stream`, so that `ESM_LOG=esm::worker=warn` can quiet it. The pipes are always
//! drained (a worker blocked on a full pipe would look hung), and a line is cut at
//! [`MAX_LINE`] bytes so that a worker printing without newlines cannot grow esm's
//! memory.

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// The longest line logged, in bytes; the rest of a longer line is dropped.
const MAX_LINE: usize = 16 * 1024;

/// Logs each line `reader` yields until it ends (the worker exited).
pub(super) async fn forward(
    reader: impl AsyncRead + Unpin,
    mapping: String,
    worker: usize,
    stream: &'static str,
) {
    let mut lines = Lines::new(reader);
    while let Some(line) = lines.next().await {
        tracing::info!(target: "esm::worker", mapping, worker, stream, "{line}");
    }
}

/// Lines of text from a pipe, each cut at [`MAX_LINE`] bytes.
struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(reader: R) -> Self {
        Self {
            reader: BufReader::new(reader),
            line: Vec::new(),
        }
    }

    /// The next line (invalid UTF-8 replaced, a cut line marked), or `None` at the
    /// end of the input.
    async fn next(&mut self) -> Option<String> {
        let mut cut = false;
        loop {
            let buffer = match self.reader.fill_buf().await {
                Ok([]) | Err(_) if self.line.is_empty() => return None,
                Ok([]) | Err(_) => break,
                Ok(buffer) => buffer,
            };
            let (chunk, consumed, end_of_line) = match buffer.iter().position(|&b| b == b'\n') {
                Some(at) => (&buffer[..at], at + 1, true),
                None => (buffer, buffer.len(), false),
            };
            let room = MAX_LINE - self.line.len();
            cut |= chunk.len() > room;
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(consumed);
            if end_of_line {
                break;
            }
        }
        let mut line = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        self.line.clear();
        if cut {
            line.push_str(" … (line cut)");
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_cuts_long_ones() {
        let mut input = b"one\r\ntwo\n\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend(b"\nlast \xff");
        let mut lines = Lines::new(&input[..]);
        assert_eq!(lines.next().await.as_deref(), Some("one"));
        assert_eq!(lines.next().await.as_deref(), Some("two"));
        assert_eq!(lines.next().await.as_deref(), Some(""));
        let long = lines.next().await.unwrap_or_default();
        assert!(long.starts_with(&"x".repeat(MAX_LINE)));
        assert!(long.ends_with(" … (line cut)"));
        assert_eq!(long.len(), MAX_LINE + " … (line cut)".len());
        assert_eq!(lines.next().await.as_deref(), Some("last \u{fffd}"));
        assert_eq!(lines.next().await, None);
    }
}
