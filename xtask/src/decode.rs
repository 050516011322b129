//! Turns the core's serial byte stream into output lines.
//!
//! The core writes defmt 1.x frames (rzcobs-framed) to COM1, and QEMU hands
//! them to the runner on its stdout. The frames are decoded with the defmt
//! table of the core's ELF:
//!
//! * a frame without a level (`defmt::println!`) is a guest console line,
//!   already formatted as `NAME: text` by the core: [`Line::Guest`];
//! * a frame with a level is a core log line: [`Line::Core`], shown as
//!   `cairn  INFO message`.
//!
//! When the ELF has no defmt table, or the stream never decodes, the bytes
//! are shown as hex-and-ASCII lines ([`Line::Serial`]) so nothing hangs or
//! vanishes silently.

use std::fmt;

use defmt_decoder::{DecodeError, StreamDecoder, Table};

/// Bytes per hex line.
const HEX_LINE_BYTES: usize = 16;
/// Malformed frames, with no frame ever decoded, after which the stream is
/// taken not to be defmt and is dumped as hex.
const MALFORMED_BEFORE_HEX: usize = 8;
/// Most undecoded bytes kept to show as hex when the decoder gives up.
const HISTORY_LIMIT: usize = 64 * 1024;

/// A core log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `defmt::trace!`
    Trace,
    /// `defmt::debug!`
    Debug,
    /// `defmt::info!`
    Info,
    /// `defmt::warn!`
    Warn,
    /// `defmt::error!`
    Error,
}

impl Level {
    fn from_defmt_name(name: &str) -> Self {
        match name {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" => Self::Warn,
            _ => Self::Error,
        }
    }

    /// Upper-case name as printed.
    pub fn name(self) -> &'static str {
        match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// One line of the runner's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A guest console line, `NAME: text`.
    Guest(String),
    /// A core log line.
    Core {
        /// Its level.
        level: Level,
        /// The formatted message.
        message: String,
    },
    /// A line QEMU wrote to its stderr.
    Qemu(String),
    /// A note from the runner itself.
    Runner(String),
    /// Undecodable serial bytes, as hex and ASCII.
    Serial(String),
    /// Output of a scenario's control step (an `hvctl` command).
    Hvctl(String),
}

impl fmt::Display for Line {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Guest(text) => formatter.write_str(text),
            Self::Core { level, message } => {
                write!(formatter, "cairn {:>5} {message}", level.name())
            }
            Self::Qemu(text) => write!(formatter, "qemu: {text}"),
            Self::Runner(text) => write!(formatter, "xtask: {text}"),
            Self::Serial(text) => write!(formatter, "serial| {text}"),
            Self::Hvctl(text) => write!(formatter, "hvctl: {text}"),
        }
    }
}

/// Reads the defmt table of an ELF. `Err` carries a sentence saying why
/// there is none.
pub fn load_table(elf: &[u8]) -> Result<Table, String> {
    match Table::parse(elf) {
        Ok(Some(table)) => Ok(table),
        Ok(None) => Err("the core ELF has no .defmt section".to_owned()),
        Err(error) => Err(format!(
            "cannot read the defmt table of the core ELF: {error:#}"
        )),
    }
}

/// Formats bytes as one hex-and-ASCII line.
pub fn hex_line(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let ascii: String = bytes
        .iter()
        .map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{:<width$} |{ascii}|",
        hex.join(" "),
        width = HEX_LINE_BYTES * 3 - 1
    )
}

/// Decodes the serial stream incrementally.
pub struct SerialDecoder<'table> {
    defmt: Option<Box<dyn StreamDecoder + Send + Sync + 'table>>,
    /// Bytes received while no frame has decoded yet, to dump if we give up.
    history: Vec<u8>,
    decoded_any: bool,
    malformed: usize,
    /// Bytes waiting to fill a hex line.
    pending_hex: Vec<u8>,
}

impl fmt::Debug for SerialDecoder<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SerialDecoder")
            .field("defmt", &self.defmt.is_some())
            .field("malformed", &self.malformed)
            .finish()
    }
}

impl<'table> SerialDecoder<'table> {
    /// A decoder using `table`, or a hex dumper when there is none.
    pub fn new(table: Option<&'table Table>) -> Self {
        Self {
            defmt: table.map(Table::new_stream_decoder),
            history: Vec::new(),
            decoded_any: false,
            malformed: 0,
            pending_hex: Vec::new(),
        }
    }

    /// Feeds received bytes; returns the complete lines they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        let Some(defmt) = self.defmt.as_mut() else {
            self.push_hex(bytes, &mut lines);
            return lines;
        };
        if !self.decoded_any && self.history.len() < HISTORY_LIMIT {
            self.history.extend_from_slice(bytes);
        }
        defmt.received(bytes);
        let mut give_up = false;
        loop {
            match defmt.decode() {
                Ok(frame) => {
                    let message = frame.display_message().to_string();
                    let level = frame
                        .level()
                        .map(|level| Level::from_defmt_name(level.as_str()));
                    self.decoded_any = true;
                    self.history = Vec::new();
                    for text in message.lines() {
                        lines.push(match level {
                            None => Line::Guest(text.to_owned()),
                            Some(level) => Line::Core {
                                level,
                                message: text.to_owned(),
                            },
                        });
                    }
                }
                Err(DecodeError::UnexpectedEof) => break,
                Err(DecodeError::Malformed) => {
                    self.malformed += 1;
                    if self.decoded_any {
                        lines.push(Line::Runner(format!(
                            "skipped a malformed defmt frame ({} so far)",
                            self.malformed
                        )));
                    } else if self.malformed >= MALFORMED_BEFORE_HEX {
                        give_up = true;
                        break;
                    }
                }
            }
        }
        if give_up {
            lines.push(Line::Runner(format!(
                "{} malformed defmt frames and none decoded: this is not the core's defmt stream; \
                 showing the serial bytes as hex",
                self.malformed
            )));
            self.defmt = None;
            let history = std::mem::take(&mut self.history);
            self.push_hex(&history, &mut lines);
        }
        lines
    }

    fn push_hex(&mut self, bytes: &[u8], lines: &mut Vec<Line>) {
        self.pending_hex.extend_from_slice(bytes);
        while self.pending_hex.len() >= HEX_LINE_BYTES {
            let rest = self.pending_hex.split_off(HEX_LINE_BYTES);
            lines.push(Line::Serial(hex_line(&self.pending_hex)));
            self.pending_hex = rest;
        }
    }

    /// Call at the end of the stream: flushes a partial hex line and reports
    /// bytes that never formed a frame.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut lines = Vec::new();
        if self.defmt.is_some() && !self.decoded_any && !self.history.is_empty() {
            lines.push(Line::Runner(format!(
                "{} serial bytes never formed a defmt frame; as hex:",
                self.history.len()
            )));
            let history = std::mem::take(&mut self.history);
            self.push_hex(&history, &mut lines);
        }
        if !self.pending_hex.is_empty() {
            lines.push(Line::Serial(hex_line(&self.pending_hex)));
            self.pending_hex.clear();
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_in_the_agreed_shapes() {
        assert_eq!(Line::Guest("hello: hi".into()).to_string(), "hello: hi");
        let warn = Line::Core {
            level: Level::Warn,
            message: "domain fault stopped".into(),
        };
        assert_eq!(warn.to_string(), "cairn  WARN domain fault stopped");
        let info = Line::Core {
            level: Level::Info,
            message: "boot".into(),
        };
        assert_eq!(info.to_string(), "cairn  INFO boot");
        let error = Line::Core {
            level: Level::Error,
            message: "x".into(),
        };
        assert_eq!(error.to_string(), "cairn ERROR x");
        assert_eq!(Line::Qemu("oops".into()).to_string(), "qemu: oops");
    }

    #[test]
    fn without_a_table_bytes_become_hex_lines() {
        let mut decoder = SerialDecoder::new(None);
        let lines = decoder.push(b"Hello, world! 0123456789");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0].to_string(),
            "serial| 48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 20 30 31 |Hello, world! 01|"
        );
        let rest = decoder.finish();
        assert_eq!(rest.len(), 1);
        assert!(rest[0].to_string().ends_with("|23456789|"), "{}", rest[0]);
        assert!(decoder.finish().is_empty());
    }

    #[test]
    fn hex_lines_mark_unprintable_bytes() {
        assert_eq!(
            hex_line(&[0, 0x41, 0xff]),
            format!("{:<47} |.A.|", "00 41 ff")
        );
    }

    /// A defmt table like the one in the core's ELF, built through the
    /// table's serde form (format strings by index, tagged with their level).
    fn table(entries: &[(u16, &str, &str)]) -> Table {
        let entries: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(index, tag, format)| {
                let entry = serde_json::json!({
                    "string": { "tag": tag, "string": format },
                    "raw_symbol": format!("symbol{index}"),
                });
                (index.to_string(), entry)
            })
            .collect();
        let table = serde_json::json!({
            "timestamp": null, "entries": entries, "bitflags": {}, "encoding": "Rzcobs"
        });
        serde_json::from_value(table).unwrap()
    }

    /// One rzcobs frame as the core's logger writes it: the string index,
    /// then the arguments.
    fn frame(index: u16, arguments: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = defmt::Encoder::new();
        encoder.start_frame(|data| bytes.extend_from_slice(data));
        encoder.write(&index.to_le_bytes(), |data| bytes.extend_from_slice(data));
        encoder.write(arguments, |data| bytes.extend_from_slice(data));
        encoder.end_frame(|data| bytes.extend_from_slice(data));
        bytes
    }

    #[test]
    fn frames_decode_into_guest_and_core_lines_across_chunks() {
        let table = table(&[
            (1, "Println", "hello: Hello from cairn"),
            (2, "Warn", "domain {=str} stopped: {=u32}"),
            (3, "Info", "bench vmexit_bare_median_ticks {=u64}"),
        ]);
        let mut stream = frame(1, &[]);
        let mut warn_arguments = vec![5, 0, 0, 0];
        warn_arguments.extend_from_slice(b"fault");
        warn_arguments.extend_from_slice(&1024u32.to_le_bytes());
        stream.extend(frame(2, &warn_arguments));
        stream.extend(frame(3, &23456u64.to_le_bytes()));

        let mut decoder = SerialDecoder::new(Some(&table));
        let mut lines = Vec::new();
        // Byte by byte: frames split anywhere must still decode.
        for byte in &stream {
            lines.extend(decoder.push(std::slice::from_ref(byte)));
        }
        lines.extend(decoder.finish());
        let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "hello: Hello from cairn",
                "cairn  WARN domain fault stopped: 1024",
                "cairn  INFO bench vmexit_bare_median_ticks 23456",
            ]
        );
    }

    #[test]
    fn a_stream_that_is_not_defmt_falls_back_to_hex() {
        let table = table(&[(1, "Println", "x")]);
        let mut decoder = SerialDecoder::new(Some(&table));
        let mut lines = Vec::new();
        for _ in 0..MALFORMED_BEFORE_HEX {
            lines.extend(decoder.push(b"\xff\xff\x00"));
        }
        lines.extend(decoder.finish());
        assert!(
            matches!(&lines[0], Line::Runner(note) if note.contains("showing the serial bytes as hex")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .skip(1)
                .all(|line| matches!(line, Line::Serial(_))),
            "{lines:?}"
        );
        assert_eq!(
            lines.len(),
            1 + (MALFORMED_BEFORE_HEX * 3).div_ceil(HEX_LINE_BYTES)
        );
    }

    #[test]
    fn a_malformed_frame_after_good_ones_is_skipped_and_reported() {
        let table = table(&[(1, "Println", "a: one"), (2, "Println", "a: two")]);
        let mut decoder = SerialDecoder::new(Some(&table));
        let mut stream = frame(1, &[]);
        stream.extend_from_slice(b"\xff\xff\x00");
        stream.extend(frame(2, &[]));
        let text: Vec<String> = decoder
            .push(&stream)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(text[0], "a: one");
        assert!(
            text[1].starts_with("xtask: skipped a malformed defmt frame"),
            "{text:?}"
        );
        assert_eq!(text[2], "a: two");
    }

    #[test]
    fn an_elf_without_defmt_is_explained() {
        let error = load_table(b"not an elf at all").unwrap_err();
        assert!(error.contains("defmt"), "{error}");
    }
}
