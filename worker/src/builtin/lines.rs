//! Splitting a byte stream (a process's stdout or stderr) into log lines.
//!
//! Output need not be UTF-8 and need not have newlines, so bytes are decoded lossily and a line
//! that grows past the limit is cut, so that a process writing without newlines cannot make the
//! worker buffer without bound.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Collects bytes and hands out complete lines.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Adds `chunk` and returns the lines it completed, without their line ends.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            lines.push(decode(&self.buf[start..start + pos]));
            start += pos + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= self.max {
            let rest = self.buf.split_off(self.max);
            lines.push(decode(&self.buf));
            self.buf = rest;
        }
        lines
    }

    /// The last line, if the stream did not end with a newline.
    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            let line = decode(&self.buf);
            self.buf.clear();
            Some(line)
        }
    }
}

fn decode(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads `stream` to its end, handing every line to `emit`. Returns the last line that is not
/// blank, for the result message.
pub(crate) async fn pump<R, F>(stream: Option<R>, max_line: usize, emit: F) -> Option<String>
where
    R: AsyncRead + Unpin,
    F: Fn(String),
{
    let mut stream = stream?;
    let mut splitter = LineSplitter::new(max_line);
    let mut chunk = vec![0u8; 8192];
    let mut last = None;
    let mut take = |line: String| {
        if !line.trim().is_empty() {
            last = Some(line.clone());
        }
        emit(line);
    };
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => splitter.push(&chunk[..n]).into_iter().for_each(&mut take),
        }
    }
    if let Some(line) = splitter.finish() {
        take(line);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks() {
        let mut s = LineSplitter::new(100);
        assert_eq!(s.push(b"hel"), Vec::<String>::new());
        assert_eq!(s.push(b"lo\r\nwor"), vec!["hello"]);
        assert_eq!(s.push(b"ld\n\nx"), vec!["world", ""]);
        assert_eq!(s.finish(), Some("x".to_owned()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn long_lines_are_cut_and_bad_utf8_is_replaced() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.push(b"abcdefghij"), vec!["abcd", "efgh"]);
        assert_eq!(s.finish(), Some("ij".to_owned()));
        assert_eq!(s.push(b"\xff\n"), vec!["\u{fffd}"]);
    }

    #[tokio::test]
    async fn pump_reports_the_last_non_blank_line() {
        let seen = std::sync::Mutex::new(Vec::new());
        let input: &[u8] = b"one\ntwo\n\n  \n";
        let last = pump(Some(input), 100, |l| seen.lock().unwrap().push(l)).await;
        assert_eq!(last.as_deref(), Some("two"));
        assert_eq!(seen.lock().unwrap().len(), 4);
        let none: Option<&[u8]> = None;
        assert_eq!(pump(none, 100, |_| {}).await, None);
    }
}
