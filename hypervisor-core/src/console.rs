//! A guest's console, line-buffered: the core emits one record per line,
//! never per byte. Bytes outside printable ASCII become `?` so a guest cannot
//! inject control sequences into the host's terminal.

use heapless::Vec;

/// Longest line; a longer one is emitted in pieces.
pub const LINE_CAPACITY: usize = 160;

/// Bytes of one guest console line.
#[derive(Debug, Clone, Default)]
pub struct LineBuffer {
    line: Vec<u8, LINE_CAPACITY>,
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self { line: Vec::new() }
    }

    /// Adds one byte; calls `emit` with a complete line (without its newline)
    /// on `\n` or when the buffer is full. `\r` is dropped.
    pub fn push(&mut self, byte: u8, emit: &mut impl FnMut(&str)) {
        match byte {
            b'\n' => self.flush(emit),
            b'\r' => {}
            _ => {
                let clean = match byte {
                    b'\t' => b' ',
                    0x20..=0x7e => byte,
                    _ => b'?',
                };
                if self.line.push(clean).is_err() {
                    self.flush(emit);
                    // Cannot fail: the buffer was just emptied.
                    let _ = self.line.push(clean);
                }
            }
        }
    }

    /// Emits whatever is buffered, even without a newline (at shutdown).
    pub fn flush(&mut self, emit: &mut impl FnMut(&str)) {
        // Only printable ASCII is ever stored, so this is always valid UTF-8.
        emit(core::str::from_utf8(&self.line).unwrap_or("?"));
        self.line.clear();
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.line.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bytes: &[u8]) -> Vec<std::string::String, 8> {
        let mut lines = Vec::new();
        let mut buffer = LineBuffer::new();
        for &byte in bytes {
            buffer.push(byte, &mut |line| lines.push(line.to_string()).unwrap());
        }
        lines
    }

    #[test]
    fn splits_lines_and_sanitizes() {
        let lines = collect(b"hello\r\nworld\x1b[31m\tx\n");
        assert_eq!(lines.as_slice(), ["hello", "world?[31m x"]);
    }

    #[test]
    fn long_lines_are_cut_not_lost() {
        let long = [b'a'; LINE_CAPACITY + 5];
        let mut bytes = long.to_vec();
        bytes.push(b'\n');
        let lines = collect(&bytes);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len() + lines[1].len(), LINE_CAPACITY + 5);
    }
}
