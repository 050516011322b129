//! A 16550-compatible UART model, transmit side: what a guest's serial
//! driver needs to print. Register layout per the National Semiconductor
//! PC16550D datasheet: THR/RBR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR at
//! offsets 0..=7, with the divisor latch at 0..=1 while LCR.DLAB is set.
//!
//! The line status register always reports the transmitter empty, so a
//! polling driver never waits; received data is never available.

/// I/O base of COM1, where each guest's console UART sits.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of registers.
pub const REGISTER_COUNT: u16 = 8;

const LCR_DLAB: u8 = 0x80;
/// LSR: transmit holding register empty | transmitter empty.
const LSR_IDLE: u8 = 0x60;

/// The UART's register state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uart16550 {
    interrupt_enable: u8,
    fifo_control: u8,
    line_control: u8,
    modem_control: u8,
    scratch: u8,
    divisor: u16,
}

impl Default for Uart16550 {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart16550 {
    /// Reset state: 8N1 at divisor 12 (9600 baud), no interrupts.
    pub const fn new() -> Self {
        Self {
            interrupt_enable: 0,
            fifo_control: 0,
            line_control: 0x03,
            modem_control: 0,
            scratch: 0,
            divisor: 12,
        }
    }

    /// A write to register `offset` (0..=7). Returns the byte to transmit,
    /// if the write was to THR.
    pub fn write(&mut self, offset: u16, value: u8) -> Option<u8> {
        let dlab = self.line_control & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, false) => return Some(value),
            (0, true) => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            (1, true) => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            (1, false) => self.interrupt_enable = value & 0x0f,
            (2, _) => self.fifo_control = value & 0xc9,
            (3, _) => self.line_control = value,
            (4, _) => self.modem_control = value & 0x1f,
            (7, _) => self.scratch = value,
            _ => {} // LSR and MSR are read-only.
        }
        None
    }

    /// A read of register `offset` (0..=7).
    pub fn read(&self, offset: u16) -> u8 {
        let dlab = self.line_control & LCR_DLAB != 0;
        match (offset, dlab) {
            (0, true) => self.divisor as u8,
            (1, true) => (self.divisor >> 8) as u8,
            (0, false) => 0, // no received data
            (1, false) => self.interrupt_enable,
            // IIR: no interrupt pending; FIFO-enabled bits mirror FCR bit 0.
            (2, _) => 0x01 | if self.fifo_control & 1 != 0 { 0xc0 } else { 0 },
            (3, _) => self.line_control,
            (4, _) => self.modem_control,
            (5, _) => LSR_IDLE,
            // MSR: in loopback mode reflect MCR outputs, else CTS|DSR|DCD.
            (6, _) if self.modem_control & 0x10 != 0 => (self.modem_control & 0x0f) << 4,
            (6, _) => 0xb0,
            (7, _) => self.scratch,
            _ => 0xff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_always_reports_thr_empty() {
        let mut uart = Uart16550::new();
        assert_eq!(uart.write(0, b'A'), Some(b'A'));
        assert_eq!(uart.read(5) & 0x20, 0x20, "THR empty");
        assert_eq!(uart.read(5) & 0x01, 0, "no data ready");
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let mut uart = Uart16550::new();
        uart.write(3, 0x83); // DLAB on
        assert_eq!(uart.write(0, 0x01), None);
        assert_eq!(uart.write(1, 0x00), None);
        assert_eq!(uart.read(0), 1);
        uart.write(3, 0x03); // DLAB off
        assert_eq!(uart.write(0, b'x'), Some(b'x'));
        uart.write(7, 0x5a);
        assert_eq!(uart.read(7), 0x5a, "scratch register holds its value");
        uart.write(2, 0x07);
        assert_eq!(uart.read(2), 0xc1, "FIFO enabled shows in IIR");
    }
}
