//! [`LogLine`]: one line of text for the `log` syscall, built without an
//! allocator.

use core::fmt;

use ipc::server::MAX_LOG_LEN;

/// A line of at most [`MAX_LOG_LEN`] bytes. Text past the capacity is
/// dropped (at a character boundary), and control characters become `?`,
/// so one log call is always one well-formed console line. Implements
/// [`fmt::Write`], so `write!(line, ...)` works too.
#[derive(Clone)]
pub struct LogLine {
    bytes: [u8; MAX_LOG_LEN],
    length: usize,
}

impl LogLine {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            bytes: [0; MAX_LOG_LEN],
            length: 0,
        }
    }

    /// Appends `text`; whatever does not fit is dropped.
    pub fn push_str(&mut self, text: &str) -> &mut Self {
        for character in text.chars() {
            let character = if character.is_control() {
                '?'
            } else {
                character
            };
            let mut encoded = [0; 4];
            let encoded = character.encode_utf8(&mut encoded).as_bytes();
            let end = self.length + encoded.len();
            if end > MAX_LOG_LEN {
                break;
            }
            self.bytes[self.length..end].copy_from_slice(encoded);
            self.length = end;
        }
        self
    }

    /// Appends `value` in decimal.
    pub fn push_decimal(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push_ascii(&digits[at..])
    }

    /// Appends `value` in hexadecimal with a `0x` prefix.
    pub fn push_hex(&mut self, value: u64) -> &mut Self {
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(rest % 16) as usize];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        self.push_str("0x").push_ascii(&digits[at..])
    }

    fn push_ascii(&mut self, ascii: &[u8]) -> &mut Self {
        let room = MAX_LOG_LEN - self.length;
        let taken = ascii.len().min(room);
        self.bytes[self.length..self.length + taken].copy_from_slice(&ascii[..taken]);
        self.length += taken;
        self
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        // Only whole UTF-8 characters and ASCII digits are ever appended.
        core::str::from_utf8(&self.bytes[..self.length]).unwrap_or("")
    }

    /// The bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.length]
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Empties the line.
    pub fn clear(&mut self) {
        self.length = 0;
    }
}

impl Default for LogLine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LogLine {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

impl fmt::Debug for LogLine {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("LogLine")
            .field(&self.as_str())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn numbers_and_text() {
        let mut line = LogLine::new();
        line.push_str("gen ")
            .push_decimal(0)
            .push_str(" at ")
            .push_hex(0x10_0000);
        line.push_str(" max ")
            .push_decimal(u64::MAX)
            .push_str(" ")
            .push_hex(u64::MAX);
        assert_eq!(
            line.as_str(),
            "gen 0 at 0x100000 max 18446744073709551615 0xffffffffffffffff"
        );
        let mut formatted = LogLine::new();
        write!(formatted, "{}-{:?}", 7, "x").unwrap();
        assert_eq!(formatted.as_str(), "7-\"x\"");
    }

    #[test]
    fn control_characters_are_replaced() {
        let mut line = LogLine::new();
        line.push_str("a\nb\x1b\tc");
        assert_eq!(line.as_str(), "a?b??c");
    }

    #[test]
    fn overflow_is_truncated_at_a_character_boundary() {
        let mut line = LogLine::new();
        for _ in 0..100 {
            line.push_str("0123");
        }
        assert_eq!(line.as_bytes().len(), MAX_LOG_LEN);
        let mut wide = LogLine::new();
        wide.push_str(&"x".repeat(MAX_LOG_LEN - 1)).push_str("é");
        assert_eq!(
            wide.as_bytes().len(),
            MAX_LOG_LEN - 1,
            "a two-byte char never splits"
        );
        wide.push_decimal(42);
        assert_eq!(wide.as_bytes().len(), MAX_LOG_LEN);
        assert!(wide.as_str().ends_with('4'));
        wide.clear();
        assert!(wide.is_empty());
    }
}
