//! A virtual local APIC in xAPIC mode, one per vCPU: the registers a guest
//! reaches through the 4 KiB page at [`DEFAULT_BASE`], the timer (one-shot,
//! periodic and TSC-deadline), interrupt priority (TPR, PPR, IRR, ISR, EOI)
//! and the interrupt command register that sends IPIs.
//!
//! Register semantics follow the Intel SDM vol. 3A ch. 11 "Advanced
//! Programmable Interrupt Controller (APIC)" and the AMD APM vol. 2 ch. 16
//! "Advanced Programmable Interrupt Controller (APIC)"; items cite the
//! section they implement. QEMU's `hw/intc/apic.c` and Linux's
//! `arch/x86/kvm/lapic.c` were read for the corners the manuals leave open;
//! where this model picks one behaviour, the item says which.
//!
//! # Principles
//!
//! * **Pure.** No hardware, no heap, no clock. Time comes in as a guest TSC
//!   value (`now`) and the TSC rate is fixed at construction, so the host tests
//!   drive the model on a simulated clock. `now` may even go backwards: elapsed
//!   time saturates at zero.
//! * **Guest values are allegations.** Any offset, any value and any order of
//!   calls is accepted without a panic: reserved offsets read 0 and ignore
//!   writes, illegal vectors are refused and logged in the ESR.
//! * **Effects as data.** A register write returns a `#[must_use]`
//!   [`LapicEffect`]: send an IPI, or reprogram the host timer.
//!
//! # The timer clock
//!
//! The timer counts a 1 GHz bus clock ([`TIMER_BUS_HZ`], as QEMU and KVM do)
//! through the divide configuration register. One timer count therefore lasts
//! `divisor` ns, which is `divisor × tsc_hz / 10⁹` TSC ticks. Deadlines are
//! computed from the instant the countdown was armed, never from the previous
//! expiry, so a periodic timer does not drift however many periods pass.
//!
//! # What the core does with it
//!
//! 1. **MMIO.** The core decodes a guest access to the APIC page, then calls
//!    [`Lapic::read`] or [`Lapic::write`] with the page offset and the guest
//!    TSC. The SDM (§11.4.1) supports only aligned 32-bit accesses; the core
//!    serves a narrower read from the 32-bit value of the register at
//!    `offset & !3`, and decides itself what to do with narrower or wider writes.
//! 2. **Before every VM entry**: [`Lapic::advance`]`(now)`, then if
//!    [`Lapic::pending_interrupt`] is `Some(vector)` and the guest can take an
//!    interrupt (RFLAGS.IF = 1, no interrupt shadow, no event already queued),
//!    [`Lapic::start_servicing`]`(vector)` and inject `vector` as an external
//!    interrupt through EVENTINJ. If it cannot take it yet, the core asks for
//!    an interrupt-window exit (V_IRQ with the VINTR intercept) and tries again
//!    there. An injection the exit interrupted is re-injected as is: its ISR
//!    bit is already set.
//! 3. **Host timer.** Program it for the earliest [`Lapic::next_deadline`] of
//!    the vCPUs that pCPU owns, running or blocked (guest TSC converted to host
//!    TSC). When it fires: `advance(now)`, and wake a blocked vCPU whose
//!    [`Lapic::has_wakeup_event`] is true. A guest can ask for a 1 ns periodic
//!    timer, so the core puts a floor under the host timer it programs.
//! 4. **HLT with IF = 1** (issue #4, Xen's wakeup-waiting recheck): mark the
//!    vCPU blocked, `advance(now)`, and unmark it if `has_wakeup_event()`.
//! 5. **IPIs.** For [`LapicEffect::SendIpi`], every vCPU of the domain whose
//!    APIC [`Lapic::matches_destination`] receives it: a fixed or
//!    lowest-priority vector through [`Lapic::accept_interrupt`] (then wake
//!    it, and kick its pCPU if it runs elsewhere); NMI as an injected NMI;
//!    INIT as [`Lapic::init_reset`] plus wait-for-SIPI; start-up as a
//!    real-mode start at `vector << 12` of a vCPU waiting for SIPI.
//! 6. **MSRs and CR8.** `IA32_TSC_DEADLINE` ([`TSC_DEADLINE_MSR`]) goes to
//!    [`Lapic::write_tsc_deadline`] / [`Lapic::read_tsc_deadline`]; CR8 is
//!    `tpr() >> 4` and a CR8 write is `set_tpr(value << 4)` (with SVM's
//!    V_INTR_MASKING the core copies V_TPR back and forth around each run).
//!    The timer needs CPUID.01H:ECX.TSC_Deadline\[bit 24\] advertised before
//!    a guest will use TSC-deadline mode.
//!
//! # Not in this module
//!
//! * x2APIC (the MSR interface): TCG offers none, and neither does cairn.
//! * `IA32_APIC_BASE`: relocating or hardware-disabling the APIC is the core's.
//! * Level-triggered interrupts: there is no I/O APIC, so the TMR reads 0, an
//!   EOI is never broadcast, and a level-triggered fixed IPI is delivered as
//!   an edge.
//! * LINT0, LINT1, thermal, performance-counter and CMCI sources: their LVT
//!   registers hold what the guest writes and never raise anything.
//! * Lowest-priority arbitration: the core picks the recipient. APR reads 0,
//!   as in QEMU and KVM.
//! * Spurious interrupts: an interrupt leaves IRR only when the core injects
//!   it, so one can never vanish between acceptance and delivery.

use core::num::NonZeroU64;

/// Guest-physical address of the APIC page after reset (SDM §11.4.1; APM vol. 2 ch. 16).
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;
/// Size of the APIC register page.
pub const PAGE_BYTES: u64 = 0x1000;
/// `IA32_TSC_DEADLINE` (SDM §11.5.4.1).
pub const TSC_DEADLINE_MSR: u32 = 0x6E0;
/// Rate of the bus clock the timer divides (1 GHz, as in QEMU and KVM).
pub const TIMER_BUS_HZ: u64 = 1_000_000_000;
/// The version register (SDM §11.4.8): version 0x14 (an integrated APIC,
/// Pentium 4 and later); max LVT entry 6, i.e. the seven entries CMCI,
/// timer, thermal, performance, LINT0, LINT1 and error; no EOI-broadcast
/// suppression (bit 24 clear); no AMD extended register space (bit 31 clear).
pub const VERSION: u32 = 0x0006_0014;
/// The lowest vector fixed delivery accepts; 0–15 are illegal (SDM §11.5.2).
pub const FIRST_LEGAL_VECTOR: u8 = 16;
/// A destination of all ones addresses every APIC (SDM §11.6.2.1, §11.6.2.2).
pub const BROADCAST: u8 = 0xFF;

/// ESR bit 5: an ICR write asked to send an illegal vector (SDM §11.5.3).
pub const ERROR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR bit 6: an illegal vector arrived, from another APIC or from a local
/// LVT source (SDM §11.5.3).
pub const ERROR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR bit 7: the guest accessed a reserved register (SDM §11.5.3).
pub const ERROR_ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;

/// Register offsets inside the APIC page (SDM Table 11-1; APM vol. 2 ch. 16).
pub mod offset {
    /// Local APIC ID (read-only here).
    pub const ID: u64 = 0x20;
    /// Version (read-only).
    pub const VERSION: u64 = 0x30;
    /// Task priority (TPR).
    pub const TASK_PRIORITY: u64 = 0x80;
    /// Arbitration priority (APR, reads 0).
    pub const ARBITRATION_PRIORITY: u64 = 0x90;
    /// Processor priority (PPR, computed, read-only).
    pub const PROCESSOR_PRIORITY: u64 = 0xA0;
    /// End of interrupt (write-only).
    pub const END_OF_INTERRUPT: u64 = 0xB0;
    /// Logical destination (LDR).
    pub const LOGICAL_DESTINATION: u64 = 0xD0;
    /// Destination format (DFR).
    pub const DESTINATION_FORMAT: u64 = 0xE0;
    /// Spurious interrupt vector (SVR).
    pub const SPURIOUS_VECTOR: u64 = 0xF0;
    /// In-service register, bits 0–31; bits `32n..` are at `+ 0x10 × n`.
    pub const IN_SERVICE: u64 = 0x100;
    /// Trigger mode register, bits 0–31; eight registers like ISR.
    pub const TRIGGER_MODE: u64 = 0x180;
    /// Interrupt request register, bits 0–31; eight registers like ISR.
    pub const INTERRUPT_REQUEST: u64 = 0x200;
    /// Error status (ESR).
    pub const ERROR_STATUS: u64 = 0x280;
    /// LVT corrected machine-check interrupt (CMCI).
    pub const LVT_CMCI: u64 = 0x2F0;
    /// Interrupt command, low half: writing it sends the IPI.
    pub const INTERRUPT_COMMAND_LOW: u64 = 0x300;
    /// Interrupt command, high half: the destination in bits 24–31.
    pub const INTERRUPT_COMMAND_HIGH: u64 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u64 = 0x320;
    /// LVT thermal sensor.
    pub const LVT_THERMAL: u64 = 0x330;
    /// LVT performance-monitoring counters.
    pub const LVT_PERFORMANCE: u64 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u64 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u64 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u64 = 0x370;
    /// Timer initial count.
    pub const TIMER_INITIAL_COUNT: u64 = 0x380;
    /// Timer current count (computed, read-only).
    pub const TIMER_CURRENT_COUNT: u64 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u64 = 0x3E0;
}

/// LVT bit 16: the source is masked (SDM §11.5.1).
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer bits 17–18: the timer mode (SDM §11.5.1, Figure 11-8).
const LVT_TIMER_MODE: u32 = 0b11 << 17;
/// The SVR bits this model keeps: vector (0–7) and APIC software enable (8).
/// Focus checking (bit 9) and EOI-broadcast suppression (bit 12) are not
/// offered on an xAPIC of version 0x14 without bit 24 (SDM §11.9).
const SPURIOUS_WRITABLE: u32 = 0x1FF;
/// SVR bit 8: the APIC is software-enabled (SDM §11.4.7.2).
const SPURIOUS_APIC_ENABLED: u32 = 1 << 8;
/// ICR bits a write keeps: vector, delivery mode, destination mode, level,
/// trigger mode and destination shorthand. Delivery status (bit 12) always
/// reads idle: an IPI is handed to the core within the write (SDM §11.6.1).
const COMMAND_WRITABLE: u32 = 0x000C_CFFF;
/// ICR bit 11: logical destination mode.
const COMMAND_LOGICAL: u32 = 1 << 11;
/// ICR bit 14: level assert.
const COMMAND_LEVEL_ASSERT: u32 = 1 << 14;
/// ICR bit 15: level-triggered.
const COMMAND_LEVEL_TRIGGERED: u32 = 1 << 15;
/// Divide configuration bits 0, 1 and 3 (SDM §11.5.4, Figure 11-10).
const DIVIDE_WRITABLE: u32 = 0b1011;

/// The timer's mode, LVT timer bits 17–18 (SDM §11.5.4, Table 11-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// Counts down once from the initial count. The reserved encoding `0b11`
    /// also behaves as one-shot.
    OneShot,
    /// Counts down from the initial count and reloads it at each expiry.
    Periodic,
    /// Fires when the TSC reaches `IA32_TSC_DEADLINE` (SDM §11.5.4.1).
    TscDeadline,
}

/// Whom an IPI is for: the ICR's destination shorthand, or else its
/// destination field read in the destination mode (SDM §11.6.1, §11.6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The APIC whose ID is this; [`BROADCAST`] means every APIC.
    Physical(u8),
    /// A logical destination (message destination address), matched against
    /// each APIC's LDR in the flat or cluster model its DFR selects.
    Logical(u8),
    /// The sending APIC only.
    SelfOnly,
    /// Every APIC of the domain, the sender included.
    AllIncludingSelf,
    /// Every APIC of the domain but the sender.
    AllExcludingSelf,
}

/// What an IPI delivers: the ICR's delivery mode and, where the mode has
/// one, its vector (SDM §11.6.1; APM vol. 2 ch. 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A maskable interrupt with this vector (16–255).
    Fixed {
        /// The vector.
        vector: u8,
    },
    /// A maskable interrupt for the lowest-priority APIC among the
    /// destinations; the core may pick any one of them.
    LowestPriority {
        /// The vector.
        vector: u8,
    },
    /// A system-management interrupt.
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// INIT (assert): the recipients reset and wait for a start-up IPI.
    Init,
    /// Start-up (SIPI): a recipient waiting for SIPI starts in real mode
    /// at `vector << 12`.
    StartUp {
        /// The page number of the start address; any value is legal.
        vector: u8,
    },
}

/// What the core must do after an access to the APIC.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicEffect {
    /// Nothing beyond what [`Lapic::pending_interrupt`] will show.
    None,
    /// The guest wrote the ICR: deliver this IPI to every vCPU of the domain
    /// whose APIC [`Lapic::matches_destination`].
    SendIpi {
        /// Whom it is for.
        destination: Destination,
        /// What it delivers.
        delivery: Delivery,
    },
    /// The timer's next deadline changed: reprogram the host timer.
    TimerChanged {
        /// The new deadline in guest TSC ticks, or `None` if nothing is armed
        /// that could raise an interrupt (what [`Lapic::next_deadline`] says).
        deadline: Option<u64>,
    },
}

/// Counters of what happened to one APIC, for `hvctl stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LapicStats {
    /// Reads and writes of reserved offsets.
    pub reserved_accesses: u64,
    /// Timer expiries, masked or not.
    pub timer_expirations: u64,
    /// IPIs handed to the core.
    pub ipis_sent: u64,
    /// Interrupts [`Lapic::accept_interrupt`] took.
    pub interrupts_accepted: u64,
    /// Interrupts it refused: illegal vector, or APIC software-disabled.
    pub interrupts_rejected: u64,
}

/// A set of the 256 vectors, laid out as the eight 32-bit IRR/ISR/TMR registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct VectorSet([u32; 8]);

impl VectorSet {
    /// The word and the bit of `vector`; `vector >> 5` is always below 8.
    const fn position(vector: u8) -> (usize, u32) {
        ((vector >> 5) as usize, 1 << (vector & 31))
    }

    fn contains(&self, vector: u8) -> bool {
        let (word, bit) = Self::position(vector);
        self.0[word] & bit != 0
    }

    fn insert(&mut self, vector: u8) {
        let (word, bit) = Self::position(vector);
        self.0[word] |= bit;
    }

    fn remove(&mut self, vector: u8) {
        let (word, bit) = Self::position(vector);
        self.0[word] &= !bit;
    }

    /// The highest vector in the set: the one with the highest priority.
    fn highest(&self) -> Option<u8> {
        let (index, word) = self.0.iter().enumerate().rev().find(|(_, word)| **word != 0)?;
        Some((index as u8) * 32 + (31 - word.leading_zeros() as u8))
    }

    /// Register `index` (0–7), as the guest reads it.
    fn word(&self, index: usize) -> u32 {
        self.0.get(index).copied().unwrap_or(0)
    }
}

/// The local vector table entries, in the order of [`Lapic`]'s array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LvtEntry {
    CorrectedMachineCheck,
    Timer,
    Thermal,
    PerformanceCounter,
    Lint0,
    Lint1,
    Error,
}

impl LvtEntry {
    const COUNT: usize = 7;

    const fn index(self) -> usize {
        self as usize
    }

    /// The bits software can write (SDM §11.5.1, Figure 11-8): vector (0–7),
    /// delivery mode (8–10) where the entry has one, pin polarity (13) and
    /// trigger mode (15) on the LINT pins, mask (16), timer mode (17–18).
    /// Delivery status (12) and remote IRR (14) are read-only and stay 0.
    const fn writable(self) -> u32 {
        match self {
            Self::Timer => 0xFF | LVT_MASKED | LVT_TIMER_MODE,
            Self::CorrectedMachineCheck | Self::Thermal | Self::PerformanceCounter => {
                0x7FF | LVT_MASKED
            }
            Self::Lint0 | Self::Lint1 => 0x7FF | (1 << 13) | (1 << 15) | LVT_MASKED,
            Self::Error => 0xFF | LVT_MASKED,
        }
    }
}

/// A register, decoded from its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Register {
    Id,
    Version,
    TaskPriority,
    ArbitrationPriority,
    ProcessorPriority,
    EndOfInterrupt,
    LogicalDestination,
    DestinationFormat,
    SpuriousVector,
    InService(usize),
    TriggerMode,
    InterruptRequest(usize),
    ErrorStatus,
    Lvt(LvtEntry),
    CommandLow,
    CommandHigh,
    InitialCount,
    CurrentCount,
    DivideConfiguration,
}

impl Register {
    /// The register at `offset`, or `None` for a reserved offset: anything
    /// not 16-byte aligned, outside the page, or not in SDM Table 11-1.
    fn decode(position: u64) -> Option<Self> {
        if !position.is_multiple_of(16) {
            return None;
        }
        let index = ((position >> 4) & 7) as usize;
        Some(match position {
            offset::ID => Self::Id,
            offset::VERSION => Self::Version,
            offset::TASK_PRIORITY => Self::TaskPriority,
            offset::ARBITRATION_PRIORITY => Self::ArbitrationPriority,
            offset::PROCESSOR_PRIORITY => Self::ProcessorPriority,
            offset::END_OF_INTERRUPT => Self::EndOfInterrupt,
            offset::LOGICAL_DESTINATION => Self::LogicalDestination,
            offset::DESTINATION_FORMAT => Self::DestinationFormat,
            offset::SPURIOUS_VECTOR => Self::SpuriousVector,
            0x100..=0x170 => Self::InService(index),
            0x180..=0x1F0 => Self::TriggerMode,
            0x200..=0x270 => Self::InterruptRequest(index),
            offset::ERROR_STATUS => Self::ErrorStatus,
            offset::LVT_CMCI => Self::Lvt(LvtEntry::CorrectedMachineCheck),
            offset::INTERRUPT_COMMAND_LOW => Self::CommandLow,
            offset::INTERRUPT_COMMAND_HIGH => Self::CommandHigh,
            offset::LVT_TIMER => Self::Lvt(LvtEntry::Timer),
            offset::LVT_THERMAL => Self::Lvt(LvtEntry::Thermal),
            offset::LVT_PERFORMANCE => Self::Lvt(LvtEntry::PerformanceCounter),
            offset::LVT_LINT0 => Self::Lvt(LvtEntry::Lint0),
            offset::LVT_LINT1 => Self::Lvt(LvtEntry::Lint1),
            offset::LVT_ERROR => Self::Lvt(LvtEntry::Error),
            offset::TIMER_INITIAL_COUNT => Self::InitialCount,
            offset::TIMER_CURRENT_COUNT => Self::CurrentCount,
            offset::TIMER_DIVIDE => Self::DivideConfiguration,
            _ => return None,
        })
    }
}

/// A running one-shot or periodic countdown. The counter held `anchor_count`
/// at TSC `anchor_tsc` and has decremented once per timer count since; it
/// expires at counts `anchor_count + k × initial_count` (k = 0, 1, …, only
/// k = 0 in one-shot mode), and `expirations` of those are behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Countdown {
    anchor_tsc: u64,
    anchor_count: u32,
    expirations: u64,
}

/// One vCPU's local APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lapic {
    id: u8,
    tsc_hz: NonZeroU64,
    task_priority: u8,
    logical_destination: u32,
    destination_format: u32,
    spurious_vector: u32,
    interrupt_request: VectorSet,
    in_service: VectorSet,
    /// The ESR as the guest reads it: the errors latched by its last write.
    error_status: u32,
    /// Errors seen since the last ESR write.
    pending_errors: u32,
    lvt: [u32; LvtEntry::COUNT],
    command_low: u32,
    command_high: u32,
    initial_count: u32,
    divide_configuration: u32,
    countdown: Option<Countdown>,
    tsc_deadline: u64,
    stats: LapicStats,
}

impl Lapic {
    /// An APIC in its power-up state (SDM §11.4.7.1): software-disabled
    /// (SVR = 0xFF), every LVT entry masked, DFR all ones (flat model), the
    /// rest zero. `id` is the APIC ID (the vCPU's index, as CPUID reports
    /// it); `tsc_hz` is the guest TSC's rate, which converts the timer's
    /// bus clock into TSC ticks.
    pub const fn new(id: u8, tsc_hz: NonZeroU64) -> Self {
        Self {
            id,
            tsc_hz,
            task_priority: 0,
            logical_destination: 0,
            destination_format: 0xFFFF_FFFF,
            spurious_vector: 0xFF,
            interrupt_request: VectorSet([0; 8]),
            in_service: VectorSet([0; 8]),
            error_status: 0,
            pending_errors: 0,
            lvt: [LVT_MASKED; LvtEntry::COUNT],
            command_low: 0,
            command_high: 0,
            initial_count: 0,
            divide_configuration: 0,
            countdown: None,
            tsc_deadline: 0,
            stats: LapicStats {
                reserved_accesses: 0,
                timer_expirations: 0,
                ipis_sent: 0,
                interrupts_accepted: 0,
                interrupts_rejected: 0,
            },
        }
    }

    /// The reset an INIT IPI causes (SDM §11.4.7.3): the power-up state,
    /// except that the APIC ID is kept. The counters are kept too.
    pub fn init_reset(&mut self) {
        *self = Self { stats: self.stats, ..Self::new(self.id, self.tsc_hz) };
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Whether SVR bit 8 is set (SDM §11.4.7.2).
    pub fn software_enabled(&self) -> bool {
        self.spurious_vector & SPURIOUS_APIC_ENABLED != 0
    }

    /// The counters.
    pub fn stats(&self) -> LapicStats {
        self.stats
    }

    /// A 32-bit read at `offset` in the APIC page, at guest TSC `now`.
    /// Reserved offsets read 0, set ESR bit 7 and count in the stats. The
    /// timer is brought up to `now` first, as [`Lapic::advance`] does.
    pub fn read(&mut self, offset: u64, now: u64) -> u32 {
        self.advance(now);
        let Some(register) = Register::decode(offset) else {
            self.reserved_access();
            return 0;
        };
        match register {
            Register::Id => u32::from(self.id) << 24,
            Register::Version => VERSION,
            Register::TaskPriority => u32::from(self.task_priority),
            Register::ProcessorPriority => u32::from(self.ppr()),
            Register::ArbitrationPriority | Register::EndOfInterrupt | Register::TriggerMode => 0,
            Register::LogicalDestination => self.logical_destination,
            Register::DestinationFormat => self.destination_format,
            Register::SpuriousVector => self.spurious_vector,
            Register::InService(index) => self.in_service.word(index),
            Register::InterruptRequest(index) => self.interrupt_request.word(index),
            Register::ErrorStatus => self.error_status,
            Register::Lvt(entry) => self.lvt[entry.index()],
            Register::CommandLow => self.command_low,
            Register::CommandHigh => self.command_high,
            Register::InitialCount => self.initial_count,
            Register::CurrentCount => self.current_count(now),
            Register::DivideConfiguration => self.divide_configuration,
        }
    }

    /// A 32-bit write of `value` at `offset` in the APIC page, at guest TSC
    /// `now`. Reserved offsets ignore the write, set ESR bit 7 and count in
    /// the stats; read-only registers (ID, version, APR, PPR, ISR, TMR, IRR,
    /// current count) ignore it.
    pub fn write(&mut self, offset: u64, value: u32, now: u64) -> LapicEffect {
        self.advance(now);
        let before = self.next_deadline();
        let Some(register) = Register::decode(offset) else {
            self.reserved_access();
            return LapicEffect::None;
        };
        match register {
            Register::TaskPriority => self.set_tpr(value as u8),
            Register::EndOfInterrupt => self.end_of_interrupt(),
            // LDR bits 24–31 (SDM §11.6.2.2).
            Register::LogicalDestination => self.logical_destination = value & 0xFF00_0000,
            // DFR bits 28–31 select the model; bits 0–27 read as ones.
            Register::DestinationFormat => self.destination_format = value | 0x0FFF_FFFF,
            Register::SpuriousVector => self.write_spurious_vector(value),
            // A write latches the errors seen since the previous write and
            // starts collecting anew (SDM §11.5.3).
            Register::ErrorStatus => {
                self.error_status = self.pending_errors;
                self.pending_errors = 0;
            }
            Register::Lvt(entry) => self.write_lvt(entry, value),
            Register::CommandHigh => self.command_high = value & 0xFF00_0000,
            Register::CommandLow => {
                self.command_low = value & COMMAND_WRITABLE;
                return self.send_ipi();
            }
            Register::InitialCount => self.write_initial_count(value, now),
            Register::DivideConfiguration => self.write_divide_configuration(value, now),
            // The APIC ID is read-only here: the core routes IPIs by the ID
            // it gave each vCPU. The SDM (§11.4.6) tells software not to
            // rely on writing it.
            Register::Id
            | Register::Version
            | Register::ArbitrationPriority
            | Register::ProcessorPriority
            | Register::InService(_)
            | Register::TriggerMode
            | Register::InterruptRequest(_)
            | Register::CurrentCount => {}
        }
        self.timer_effect(before)
    }

    /// A guest WRMSR to `IA32_TSC_DEADLINE` at guest TSC `now` (SDM
    /// §11.5.4.1). In TSC-deadline mode a non-zero value arms the timer for
    /// that TSC, 0 disarms it, and a deadline already passed fires at once.
    /// In the other modes the write is ignored.
    pub fn write_tsc_deadline(&mut self, value: u64, now: u64) -> LapicEffect {
        if self.timer_mode() != TimerMode::TscDeadline {
            return LapicEffect::None;
        }
        self.advance(now);
        let before = self.next_deadline();
        self.tsc_deadline = value;
        self.advance(now);
        self.timer_effect(before)
    }

    /// A guest RDMSR of `IA32_TSC_DEADLINE` at guest TSC `now`: the armed
    /// deadline, 0 once it has fired or when the timer is in another mode
    /// (SDM §11.5.4.1).
    pub fn read_tsc_deadline(&mut self, now: u64) -> u64 {
        self.advance(now);
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// The timer's mode, from LVT timer bits 17–18.
    pub fn timer_mode(&self) -> TimerMode {
        match (self.lvt[LvtEntry::Timer.index()] & LVT_TIMER_MODE) >> 17 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// The guest TSC at which [`Lapic::advance`] will next raise the timer
    /// interrupt, or `None` if the timer is disarmed or its LVT entry masked
    /// (then no expiry can interrupt the guest, and the core need not wake
    /// for it). After `advance(now)` it is always later than `now`.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lvt[LvtEntry::Timer.index()] & LVT_MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then_some(self.tsc_deadline),
            TimerMode::OneShot | TimerMode::Periodic => self.countdown.map(|countdown| {
                self.tsc_after(countdown.anchor_tsc, self.next_expiry(&countdown))
            }),
        }
    }

    /// Brings the timer up to guest TSC `now`: if a deadline has passed, the
    /// timer expires once (SDM §11.5.4): it sets the LVT timer vector in IRR
    /// unless the entry is masked, a one-shot countdown stops at 0, a
    /// TSC-deadline timer clears its MSR, and a periodic countdown moves on
    /// to its next expiry after `now`. Periods missed entirely collapse into
    /// this one interrupt, as they would in a single IRR bit. Returns whether
    /// a timer interrupt was raised.
    pub fn advance(&mut self, now: u64) -> bool {
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.tsc_deadline == 0 || now < self.tsc_deadline {
                    return false;
                }
                self.tsc_deadline = 0;
            }
            TimerMode::OneShot | TimerMode::Periodic => {
                let Some(mut countdown) = self.countdown else { return false };
                let elapsed = self.elapsed_counts(countdown.anchor_tsc, now);
                if elapsed < self.next_expiry(&countdown) {
                    return false;
                }
                if self.timer_mode() == TimerMode::Periodic {
                    let since_first = elapsed - u128::from(countdown.anchor_count);
                    let behind = since_first / self.period() + 1;
                    countdown.expirations = u64::try_from(behind).unwrap_or(u64::MAX);
                    self.countdown = Some(countdown);
                } else {
                    self.countdown = None;
                }
            }
        }
        self.stats.timer_expirations = self.stats.timer_expirations.saturating_add(1);
        let timer = self.lvt[LvtEntry::Timer.index()];
        timer & LVT_MASKED == 0 && self.raise_local(timer as u8)
    }

    /// An interrupt with `vector` for this APIC, from an IPI of another
    /// vCPU or from a device (SDM §11.8.4): sets its IRR bit. A software-
    /// disabled APIC refuses it (SDM §11.4.7.2 keeps only INIT, NMI, SMI
    /// and SIPI), and so does an illegal vector (0–15), which sets ESR bit 6
    /// (SDM §11.5.2). Returns whether the interrupt was accepted; a vector
    /// already pending is accepted and stays one IRR bit.
    pub fn accept_interrupt(&mut self, vector: u8) -> bool {
        let accepted = self.software_enabled() && self.raise_local(vector);
        let counter = if accepted {
            &mut self.stats.interrupts_accepted
        } else {
            &mut self.stats.interrupts_rejected
        };
        *counter = counter.saturating_add(1);
        accepted
    }

    /// The vector the core should inject next: the highest vector in IRR, if
    /// its priority class (bits 4–7) is above the PPR's (SDM §11.8.3.1).
    /// Interrupts already in IRR stay deliverable while the APIC is
    /// software-disabled (SDM §11.4.7.2).
    pub fn pending_interrupt(&self) -> Option<u8> {
        let vector = self.interrupt_request.highest()?;
        (vector >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The core injected `vector`: moves it from IRR to ISR, which raises the
    /// PPR to its class until the guest's EOI (SDM §11.8.4). Returns false,
    /// changing nothing, if `vector` was not pending in IRR.
    pub fn start_servicing(&mut self, vector: u8) -> bool {
        if !self.interrupt_request.contains(vector) {
            return false;
        }
        self.interrupt_request.remove(vector);
        self.in_service.insert(vector);
        true
    }

    /// End of interrupt, what a write to the EOI register does (SDM
    /// §11.8.5): clears the highest ISR bit, if any.
    pub fn end_of_interrupt(&mut self) {
        if let Some(vector) = self.in_service.highest() {
            self.in_service.remove(vector);
        }
    }

    /// Whether an interrupt is ready to inject: what the core rechecks after
    /// marking the vCPU blocked on HLT (issue #4). Call [`Lapic::advance`]
    /// first so an expired timer counts.
    pub fn has_wakeup_event(&self) -> bool {
        self.pending_interrupt().is_some()
    }

    /// The task priority (TPR, SDM §11.8.3.1); CR8 is its bits 4–7.
    pub fn tpr(&self) -> u8 {
        self.task_priority
    }

    /// Sets the task priority: from a TPR write, or from CR8 (`value << 4`).
    pub fn set_tpr(&mut self, value: u8) {
        self.task_priority = value;
    }

    /// The processor priority (SDM §11.8.3.1): the TPR if its class is at
    /// least that of the highest vector in service, else that vector's class
    /// with the sub-class zero.
    pub fn ppr(&self) -> u8 {
        let in_service = self.in_service.highest().unwrap_or(0);
        if self.task_priority >> 4 >= in_service >> 4 {
            self.task_priority
        } else {
            in_service & 0xF0
        }
    }

    /// Whether this APIC is a recipient of an IPI sent to `destination`;
    /// `is_sender` says whether it is the APIC that sent it (SDM §11.6.2).
    /// Physical: the ID matches, or [`BROADCAST`]. Logical: in the flat model
    /// (DFR 0xF…) the LDR's bits 24–31 share a bit with the destination; in
    /// the cluster model (DFR 0x0…) the upper nibbles (cluster) are equal and
    /// the lower nibbles share a bit; [`BROADCAST`] matches in both.
    pub fn matches_destination(&self, destination: Destination, is_sender: bool) -> bool {
        match destination {
            Destination::Physical(id) => id == BROADCAST || id == self.id,
            Destination::Logical(BROADCAST) | Destination::AllIncludingSelf => true,
            Destination::Logical(address) => {
                let logical_id = (self.logical_destination >> 24) as u8;
                match self.destination_format >> 28 {
                    0xF => logical_id & address != 0,
                    0x0 => logical_id >> 4 == address >> 4 && logical_id & address & 0x0F != 0,
                    _ => false,
                }
            }
            Destination::SelfOnly => is_sender,
            Destination::AllExcludingSelf => !is_sender,
        }
    }

    /// The timer's current count at `now` (SDM §11.5.4): 0 when stopped or
    /// in TSC-deadline mode, else the initial count minus the counts since
    /// the countdown started or last reloaded.
    fn current_count(&self, now: u64) -> u32 {
        if self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let Some(countdown) = self.countdown else { return 0 };
        let elapsed = self.elapsed_counts(countdown.anchor_tsc, now);
        let next = self.next_expiry(&countdown);
        // A clock that went backwards shows the full count.
        let remaining = if elapsed < next {
            next - elapsed
        } else if self.timer_mode() == TimerMode::Periodic {
            // Expiries `advance` has not seen yet: the counter reloaded at each.
            self.period() - (elapsed - next) % self.period()
        } else {
            0
        };
        u32::try_from(remaining.min(u128::from(self.initial_count))).unwrap_or(u32::MAX)
    }

    /// Counts since the countdown's anchor at which it next expires.
    fn next_expiry(&self, countdown: &Countdown) -> u128 {
        u128::from(countdown.anchor_count)
            + u128::from(countdown.expirations) * u128::from(self.initial_count)
    }

    /// The periodic reload value, never zero (a zero initial count stops the timer).
    fn period(&self) -> u128 {
        u128::from(self.initial_count.max(1))
    }

    /// The divide configuration as a divisor (SDM §11.5.4, Figure 11-10):
    /// bits 3,1,0 = 000 → 2, 001 → 4, 010 → 8, 011 → 16, 100 → 32,
    /// 101 → 64, 110 → 128, 111 → 1.
    pub fn timer_divisor(&self) -> u32 {
        let code = (self.divide_configuration & 0b11) | ((self.divide_configuration >> 1) & 0b100);
        if code == 0b111 {
            1
        } else {
            2 << code
        }
    }

    /// Whole timer counts between TSC `anchor` and `now`: bus ticks
    /// (`Δtsc × 10⁹ / tsc_hz`, rounded down) over the divisor. At most
    /// 2⁶⁴ × 10⁹ before the divisions, which fits a `u128`.
    fn elapsed_counts(&self, anchor: u64, now: u64) -> u128 {
        let tsc = u128::from(now.saturating_sub(anchor));
        tsc * u128::from(TIMER_BUS_HZ)
            / u128::from(self.tsc_hz.get())
            / u128::from(self.timer_divisor())
    }

    /// The first TSC at which `counts` timer counts have elapsed since TSC
    /// `anchor`: `anchor + ⌈counts × divisor × tsc_hz / 10⁹⌉`, the inverse of
    /// [`Lapic::elapsed_counts`]. A time past the end of the TSC saturates.
    fn tsc_after(&self, anchor: u64, counts: u128) -> u64 {
        counts
            .checked_mul(u128::from(self.timer_divisor()))
            .and_then(|bus| bus.checked_mul(u128::from(self.tsc_hz.get())))
            .map(|scaled| scaled.div_ceil(u128::from(TIMER_BUS_HZ)))
            .and_then(|ticks| u64::try_from(ticks).ok())
            .and_then(|ticks| anchor.checked_add(ticks))
            .unwrap_or(u64::MAX)
    }

    /// What the core must do about the timer, given the deadline before a change.
    fn timer_effect(&self, before: Option<u64>) -> LapicEffect {
        let deadline = self.next_deadline();
        if deadline == before {
            LapicEffect::None
        } else {
            LapicEffect::TimerChanged { deadline }
        }
    }

    /// Stops the countdown and the TSC-deadline timer alike.
    fn disarm_timer(&mut self) {
        self.countdown = None;
        self.initial_count = 0;
        self.tsc_deadline = 0;
    }

    /// SVR write. Clearing the enable bit masks every LVT entry
    /// (SDM §11.4.7.2); setting it again leaves them masked.
    fn write_spurious_vector(&mut self, value: u32) {
        self.spurious_vector = value & SPURIOUS_WRITABLE;
        if !self.software_enabled() {
            for entry in &mut self.lvt {
                *entry |= LVT_MASKED;
            }
        }
    }

    /// LVT write (SDM §11.5.1). While the APIC is software-disabled the mask
    /// bit stays set (§11.4.7.2). A timer-mode change disarms the timer
    /// (§11.5.4.1); this model also clears the initial count then, as KVM
    /// does, so the current count stays within it.
    fn write_lvt(&mut self, entry: LvtEntry, value: u32) {
        let mut value = value & entry.writable();
        if !self.software_enabled() {
            value |= LVT_MASKED;
        }
        let slot = &mut self.lvt[entry.index()];
        let mode_changed = (*slot ^ value) & LVT_TIMER_MODE != 0;
        *slot = value;
        if entry == LvtEntry::Timer && mode_changed {
            self.disarm_timer();
        }
    }

    /// Initial-count write (SDM §11.5.4): restarts the countdown from the new
    /// count, or stops it for 0; ignored in TSC-deadline mode (§11.5.4.1).
    fn write_initial_count(&mut self, value: u32, now: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = value;
        self.countdown = (value != 0).then_some(Countdown {
            anchor_tsc: now,
            anchor_count: value,
            expirations: 0,
        });
    }

    /// Divide-configuration write. The SDM leaves a change mid-count open;
    /// here the counter keeps its current value and counts on at the new
    /// rate (as KVM rescales the remaining time), losing only the fraction
    /// of the count in progress.
    fn write_divide_configuration(&mut self, value: u32, now: u64) {
        let value = value & DIVIDE_WRITABLE;
        if value == self.divide_configuration {
            return;
        }
        let current = self.current_count(now);
        self.divide_configuration = value;
        if let Some(countdown) = &mut self.countdown {
            if current != 0 {
                *countdown = Countdown { anchor_tsc: now, anchor_count: current, expirations: 0 };
            }
        }
    }

    /// The ICR low half was written: the IPI it describes (SDM §11.6.1),
    /// or nothing for a reserved delivery mode, an INIT level de-assert
    /// (which Pentium 4 and later ignore), or a fixed or lowest-priority
    /// vector below 16 (ESR bit 5, nothing sent; §11.5.3).
    fn send_ipi(&mut self) -> LapicEffect {
        let command = self.command_low;
        let vector = command as u8;
        let delivery = match (command >> 8) & 0b111 {
            0b000 => Delivery::Fixed { vector },
            0b001 => Delivery::LowestPriority { vector },
            0b010 => Delivery::Smi,
            0b100 => Delivery::Nmi,
            0b101
                if command & COMMAND_LEVEL_TRIGGERED != 0
                    && command & COMMAND_LEVEL_ASSERT == 0 =>
            {
                return LapicEffect::None;
            }
            0b101 => Delivery::Init,
            0b110 => Delivery::StartUp { vector },
            _ => return LapicEffect::None,
        };
        if matches!(delivery, Delivery::Fixed { .. } | Delivery::LowestPriority { .. })
            && vector < FIRST_LEGAL_VECTOR
        {
            self.record_error(ERROR_SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        let field = (self.command_high >> 24) as u8;
        let destination = match (command >> 18) & 0b11 {
            0b01 => Destination::SelfOnly,
            0b10 => Destination::AllIncludingSelf,
            0b11 => Destination::AllExcludingSelf,
            _ if command & COMMAND_LOGICAL != 0 => Destination::Logical(field),
            _ => Destination::Physical(field),
        };
        self.stats.ipis_sent = self.stats.ipis_sent.saturating_add(1);
        LapicEffect::SendIpi { destination, delivery }
    }

    /// Sets `vector` in IRR, or logs "received illegal vector" for 0–15.
    fn raise_local(&mut self, vector: u8) -> bool {
        if vector < FIRST_LEGAL_VECTOR {
            self.record_error(ERROR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.interrupt_request.insert(vector);
        true
    }

    /// Logs `bits` in the ESR and raises the error LVT's interrupt unless it
    /// is masked (SDM §11.5.3). An illegal error vector is logged, not raised.
    fn record_error(&mut self, bits: u32) {
        self.pending_errors |= bits;
        let error = self.lvt[LvtEntry::Error.index()];
        if error & LVT_MASKED == 0 {
            let vector = error as u8;
            if vector < FIRST_LEGAL_VECTOR {
                self.pending_errors |= ERROR_RECEIVE_ILLEGAL_VECTOR;
            } else {
                self.interrupt_request.insert(vector);
            }
        }
    }

    /// A guest access to a reserved offset.
    fn reserved_access(&mut self) {
        self.stats.reserved_accesses = self.stats.reserved_accesses.saturating_add(1);
        self.record_error(ERROR_ILLEGAL_REGISTER_ADDRESS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2 GHz: one bus tick (1 ns) is exactly two TSC ticks.
    const TSC_HZ: u64 = 2_000_000_000;
    const TIMER_VECTOR: u8 = 0x30;
    const DIVIDE_BY_16: u32 = 0b0011;
    const PERIODIC: u32 = 1 << 17;
    const TSC_DEADLINE: u32 = 2 << 17;

    fn hz(value: u64) -> NonZeroU64 {
        NonZeroU64::new(value).unwrap()
    }

    /// APIC `id`, software-enabled at TSC 0.
    fn enabled_apic(id: u8, tsc_hz: u64) -> Lapic {
        let mut apic = Lapic::new(id, hz(tsc_hz));
        assert_eq!(apic.write(offset::SPURIOUS_VECTOR, 0x1FF, 0), LapicEffect::None);
        apic
    }

    fn enabled() -> Lapic {
        enabled_apic(0, TSC_HZ)
    }

    fn irr(apic: &mut Lapic, now: u64) -> [u32; 8] {
        core::array::from_fn(|index| apic.read(offset::INTERRUPT_REQUEST + 16 * index as u64, now))
    }

    fn isr(apic: &mut Lapic, now: u64) -> [u32; 8] {
        core::array::from_fn(|index| apic.read(offset::IN_SERVICE + 16 * index as u64, now))
    }

    /// Injects the pending interrupt the way the core does, and returns it.
    fn inject(apic: &mut Lapic) -> Option<u8> {
        let vector = apic.pending_interrupt()?;
        assert!(apic.start_servicing(vector));
        Some(vector)
    }

    fn send(apic: &mut Lapic, high: u32, low: u32) -> LapicEffect {
        assert_eq!(apic.write(offset::INTERRUPT_COMMAND_HIGH, high, 0), LapicEffect::None);
        apic.write(offset::INTERRUPT_COMMAND_LOW, low, 0)
    }

    #[test]
    fn power_up_state() {
        let mut apic = Lapic::new(3, hz(TSC_HZ));
        assert_eq!(apic.read(offset::ID, 0), 3 << 24);
        assert_eq!(apic.read(offset::VERSION, 0), 0x0006_0014);
        assert_eq!(apic.read(offset::SPURIOUS_VECTOR, 0), 0xFF);
        assert!(!apic.software_enabled());
        assert_eq!(apic.read(offset::DESTINATION_FORMAT, 0), 0xFFFF_FFFF);
        for lvt in [0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(apic.read(lvt, 0), LVT_MASKED, "LVT {lvt:#x} masked");
        }
        assert_eq!(apic.timer_divisor(), 2, "divide configuration 0 divides by 2");
        assert_eq!(apic.next_deadline(), None);
        assert_eq!(apic.pending_interrupt(), None);
    }

    /// Unmasked one-shot timer with `initial` counts, divide by 16, armed at `start`.
    fn one_shot(initial: u32, start: u64) -> Lapic {
        let mut apic = enabled();
        assert_eq!(apic.write(offset::TIMER_DIVIDE, DIVIDE_BY_16, start), LapicEffect::None);
        assert_eq!(
            apic.write(offset::LVT_TIMER, u32::from(TIMER_VECTOR), start),
            LapicEffect::None
        );
        let effect = apic.write(offset::TIMER_INITIAL_COUNT, initial, start);
        // initial × 16 bus ticks of 1 ns, at 2 TSC ticks per ns.
        let deadline = start + u64::from(initial) * 16 * 2;
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: Some(deadline) });
        apic
    }

    #[test]
    fn one_shot_fires_exactly_once_at_initial_count_times_divisor() {
        let start = 1_000;
        let mut apic = one_shot(1000, start);
        let deadline = start + 32_000;
        assert_eq!(apic.next_deadline(), Some(deadline));
        assert!(!apic.advance(deadline - 1));
        assert_eq!(apic.pending_interrupt(), None);
        assert!(apic.advance(deadline));
        assert_eq!(apic.pending_interrupt(), Some(TIMER_VECTOR));
        assert_eq!(apic.next_deadline(), None, "one-shot does not re-arm");
        assert_eq!(inject(&mut apic), Some(TIMER_VECTOR));
        assert!(!apic.advance(deadline + 1_000_000), "fires once");
        assert_eq!(apic.pending_interrupt(), None);
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, deadline + 5), 0);
        assert_eq!(apic.read(offset::TIMER_INITIAL_COUNT, deadline + 5), 1000);
        assert_eq!(apic.stats().timer_expirations, 1);
    }

    #[test]
    fn current_count_decreases_with_time_and_stops_at_zero() {
        let start = 500;
        let mut apic = one_shot(1000, start);
        // One count is 16 ns = 32 TSC ticks.
        let count_at = |apic: &mut Lapic, tsc| apic.read(offset::TIMER_CURRENT_COUNT, start + tsc);
        assert_eq!(count_at(&mut apic, 0), 1000);
        assert_eq!(count_at(&mut apic, 31), 1000);
        assert_eq!(count_at(&mut apic, 32), 999);
        assert_eq!(count_at(&mut apic, 16_000), 500);
        assert_eq!(count_at(&mut apic, 31_999), 1);
        assert_eq!(apic.pending_interrupt(), None);
        assert_eq!(count_at(&mut apic, 32_000), 0);
        assert_eq!(apic.pending_interrupt(), Some(TIMER_VECTOR), "the read caught the expiry");
        assert_eq!(count_at(&mut apic, 99_999), 0);
    }

    #[test]
    fn initial_count_zero_stops_and_rewrite_restarts() {
        let mut apic = one_shot(1000, 0);
        let effect = apic.write(offset::TIMER_INITIAL_COUNT, 0, 100);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: None });
        assert!(!apic.advance(1_000_000));
        let effect = apic.write(offset::TIMER_INITIAL_COUNT, 10, 2_000_000);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: Some(2_000_000 + 320) });
    }

    #[test]
    fn periodic_rearms_without_drift() {
        // A TSC rate that makes one period a non-integral number of TSC ticks
        // (333 ns ≈ 999.000002 TSC ticks at 3.000000007 GHz).
        let tsc_hz: u64 = 3_000_000_007;
        let start = 12_345;
        let mut apic = enabled_apic(0, tsc_hz);
        let _ = apic.write(offset::TIMER_DIVIDE, 0b1011, start); // divide by 1
        let _ = apic.write(offset::LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR), start);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 333, start);
        let exact = |k: u64| {
            start + (u128::from(k * 333) * u128::from(tsc_hz)).div_ceil(1_000_000_000) as u64
        };
        for k in 1..=20_000 {
            let deadline = apic.next_deadline().unwrap();
            assert_eq!(deadline, exact(k), "period {k}");
            assert!(!apic.advance(deadline - 1));
            assert!(apic.advance(deadline));
            assert_eq!(inject(&mut apic), Some(TIMER_VECTOR));
            apic.end_of_interrupt();
        }
        // Period 20 001 ends at 6 660 333 ns = 19 980 999.0466 TSC ticks, rounded up.
        assert_eq!(apic.next_deadline(), Some(start + 19_981_000));
        assert_eq!(apic.stats().timer_expirations, 20_000);
    }

    #[test]
    fn periodic_coalesces_missed_periods_and_stays_on_its_grid() {
        let mut apic = enabled();
        let _ = apic.write(offset::LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR), 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 100, 0); // 200 ns = 400 ticks
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 399), 1);
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 400), 100, "reloaded");
        assert!(apic.advance(10_050));
        assert!(!apic.advance(10_399), "one interrupt for 25 missed periods");
        assert_eq!(apic.next_deadline(), Some(10_400));
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 10_200), 50);
    }

    #[test]
    fn periodic_current_count_without_advance() {
        let mut apic = enabled();
        let _ = apic.write(offset::LVT_TIMER, PERIODIC | LVT_MASKED | 0x40, 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 100, 0);
        // 1001 counts: ten reloads behind, one count into the eleventh period.
        assert_eq!(apic.current_count(4_004), 99, "lazy view matches the reload grid");
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 4_004), 99);
        assert_eq!(irr(&mut apic, 4_004), [0; 8], "masked");
    }

    fn deadline_mode() -> Lapic {
        let mut apic = enabled();
        let effect = apic.write(offset::LVT_TIMER, TSC_DEADLINE | u32::from(TIMER_VECTOR), 0);
        assert_eq!(effect, LapicEffect::None);
        assert_eq!(apic.timer_mode(), TimerMode::TscDeadline);
        apic
    }

    #[test]
    fn tsc_deadline_fires_at_the_deadline_and_clears_the_msr() {
        let mut apic = deadline_mode();
        let effect = apic.write_tsc_deadline(5_000, 1_000);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: Some(5_000) });
        assert_eq!(apic.read_tsc_deadline(1_000), 5_000);
        assert!(!apic.advance(4_999));
        assert!(apic.advance(5_000));
        assert_eq!(apic.pending_interrupt(), Some(TIMER_VECTOR));
        assert_eq!(apic.read_tsc_deadline(5_001), 0);
        assert_eq!(apic.next_deadline(), None);
        assert!(!apic.advance(1 << 40), "at most one interrupt per write");
    }

    #[test]
    fn tsc_deadline_in_the_past_fires_at_once() {
        let mut apic = deadline_mode();
        assert_eq!(apic.write_tsc_deadline(10, 1_000), LapicEffect::None);
        assert_eq!(apic.pending_interrupt(), Some(TIMER_VECTOR));
        assert_eq!(apic.read_tsc_deadline(1_000), 0);
    }

    #[test]
    fn tsc_deadline_zero_disarms_and_counts_are_ignored() {
        let mut apic = deadline_mode();
        let _ = apic.write_tsc_deadline(5_000, 0);
        assert_eq!(apic.write_tsc_deadline(0, 100), LapicEffect::TimerChanged { deadline: None });
        assert!(!apic.advance(10_000));
        assert_eq!(apic.write(offset::TIMER_INITIAL_COUNT, 1000, 0), LapicEffect::None);
        assert_eq!(apic.read(offset::TIMER_INITIAL_COUNT, 0), 0, "initial count writes ignored");
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 0), 0);
    }

    #[test]
    fn tsc_deadline_msr_is_ignored_in_other_modes() {
        let mut apic = one_shot(1000, 0);
        assert_eq!(apic.write_tsc_deadline(5, 0), LapicEffect::None);
        assert_eq!(apic.read_tsc_deadline(0), 0);
        assert_eq!(apic.next_deadline(), Some(32_000), "countdown untouched");
    }

    #[test]
    fn switching_modes_disarms() {
        let mut apic = one_shot(1000, 0);
        let effect = apic.write(offset::LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR), 10);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: None });
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 20), 0);
        assert!(!apic.advance(1 << 30));

        let mut apic = deadline_mode();
        let _ = apic.write_tsc_deadline(5_000, 0);
        let effect = apic.write(offset::LVT_TIMER, u32::from(TIMER_VECTOR), 10);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: None });
        let _ = apic.write(offset::LVT_TIMER, TSC_DEADLINE | u32::from(TIMER_VECTOR), 20);
        assert_eq!(apic.read_tsc_deadline(30), 0, "the old deadline is gone");
        assert!(!apic.advance(1 << 30));
        assert_eq!(apic.pending_interrupt(), None);
    }

    #[test]
    fn masked_timer_does_not_set_irr() {
        let mut apic = enabled();
        let _ = apic.write(offset::LVT_TIMER, LVT_MASKED | u32::from(TIMER_VECTOR), 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 10, 0);
        assert_eq!(apic.next_deadline(), None, "nothing to wake for");
        assert!(!apic.advance(1_000));
        assert_eq!(irr(&mut apic, 1_000), [0; 8]);
        assert_eq!(apic.stats().timer_expirations, 1, "the timer still ran");
        // Unmasking after the expiry does not deliver it late.
        let _ = apic.write(offset::LVT_TIMER, u32::from(TIMER_VECTOR), 2_000);
        assert!(!apic.advance(3_000));
        assert_eq!(apic.pending_interrupt(), None);

        let mut apic = deadline_mode();
        let _ = apic.write(offset::LVT_TIMER, TSC_DEADLINE | LVT_MASKED | 0x30, 0);
        let _ = apic.write_tsc_deadline(100, 0);
        assert!(!apic.advance(200));
        assert_eq!(apic.pending_interrupt(), None);
    }

    #[test]
    fn divide_configuration_values_map_to_divisors() {
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
            (0b0100, 2), // bit 2 is reserved
            (0xFFFF_FFFF, 1),
        ];
        for (value, divisor) in table {
            let mut apic = enabled();
            let _ = apic.write(offset::LVT_TIMER, u32::from(TIMER_VECTOR), 0);
            let _ = apic.write(offset::TIMER_DIVIDE, value, 0);
            assert_eq!(apic.timer_divisor(), divisor, "value {value:#b}");
            assert_eq!(apic.read(offset::TIMER_DIVIDE, 0), value & 0b1011);
            let _ = apic.write(offset::TIMER_INITIAL_COUNT, 10, 1_000);
            assert_eq!(apic.next_deadline(), Some(1_000 + 10 * u64::from(divisor) * 2));
        }
    }

    #[test]
    fn divide_change_mid_count_keeps_the_count() {
        let mut apic = one_shot(1000, 0); // 32 ticks per count
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 3_200), 900);
        let effect = apic.write(offset::TIMER_DIVIDE, 0b1011, 3_200); // now 2 ticks per count
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: Some(3_200 + 1_800) });
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 3_200), 900);
        assert_eq!(apic.read(offset::TIMER_CURRENT_COUNT, 3_300), 850);
    }

    #[test]
    fn tpr_blocks_lower_and_equal_classes() {
        let mut apic = enabled();
        assert!(apic.accept_interrupt(0x45));
        let _ = apic.write(offset::TASK_PRIORITY, 0x50, 0);
        assert_eq!(apic.pending_interrupt(), None);
        assert!(!apic.has_wakeup_event());
        apic.set_tpr(0x4F);
        assert_eq!(apic.pending_interrupt(), None, "class 4 is not above class 4");
        apic.set_tpr(0x3F);
        assert_eq!(apic.pending_interrupt(), Some(0x45));
        assert!(apic.has_wakeup_event());
        assert_eq!(apic.read(offset::TASK_PRIORITY, 0), 0x3F);
        assert_eq!(apic.read(offset::PROCESSOR_PRIORITY, 0), 0x3F);
    }

    #[test]
    fn isr_blocks_lower_and_equal_classes_until_eoi() {
        let mut apic = enabled();
        assert!(apic.accept_interrupt(0x50));
        assert_eq!(inject(&mut apic), Some(0x50));
        assert_eq!(apic.ppr(), 0x50);
        assert!(apic.accept_interrupt(0x5F));
        assert!(apic.accept_interrupt(0x41));
        assert_eq!(apic.pending_interrupt(), None, "same and lower class wait");
        assert!(apic.accept_interrupt(0x61));
        assert_eq!(inject(&mut apic), Some(0x61), "a higher class nests");
        assert_eq!(apic.ppr(), 0x60);
        assert_eq!(apic.write(offset::END_OF_INTERRUPT, 0, 0), LapicEffect::None);
        assert_eq!(apic.ppr(), 0x50, "EOI retired 0x61, the highest in service");
        assert_eq!(apic.pending_interrupt(), None);
        let _ = apic.write(offset::END_OF_INTERRUPT, 0, 0);
        assert_eq!(apic.ppr(), 0);
        assert_eq!(inject(&mut apic), Some(0x5F));
        assert_eq!(isr(&mut apic, 0)[2], 1 << 31);
    }

    #[test]
    fn ppr_is_tpr_or_in_service_class() {
        let mut apic = enabled();
        apic.set_tpr(0x35);
        assert_eq!(apic.ppr(), 0x35);
        assert!(apic.accept_interrupt(0x3A));
        assert_eq!(apic.pending_interrupt(), None);
        assert!(apic.start_servicing(0x3A), "the core may inject what it chose");
        assert_eq!(apic.ppr(), 0x35, "TPR class equals ISR class: TPR wins");
        assert!(apic.accept_interrupt(0x80));
        assert!(apic.start_servicing(0x80));
        assert_eq!(apic.ppr(), 0x80);
        assert!(!apic.start_servicing(0x81), "not pending");
    }

    #[test]
    fn pending_vectors_come_out_highest_first() {
        let mut apic = enabled();
        for vector in [0x20, 0xEF, 0x31, 0x30, 0xFF, 0x80, 0x7F] {
            assert!(apic.accept_interrupt(vector));
        }
        assert!(apic.accept_interrupt(0x80), "already pending: still one IRR bit");
        let mut order = Vec::new();
        while let Some(vector) = inject(&mut apic) {
            order.push(vector);
            apic.end_of_interrupt();
        }
        assert_eq!(order, [0xFF, 0xEF, 0x80, 0x7F, 0x31, 0x30, 0x20]);
        assert_eq!(irr(&mut apic, 0), [0; 8]);
        assert_eq!(isr(&mut apic, 0), [0; 8]);
    }

    #[test]
    fn irr_registers_show_vectors() {
        let mut apic = enabled();
        assert!(apic.accept_interrupt(0x21));
        assert!(apic.accept_interrupt(0xFE));
        let words = irr(&mut apic, 0);
        assert_eq!(words[1], 1 << 1);
        assert_eq!(words[7], 1 << 30);
        assert_eq!(apic.read(offset::TRIGGER_MODE + 0x10, 0), 0, "edge only");
    }

    #[test]
    fn illegal_vectors_set_esr_and_are_not_delivered() {
        let mut apic = enabled();
        assert!(!apic.accept_interrupt(15));
        assert_eq!(apic.pending_interrupt(), None);
        assert_eq!(apic.read(offset::ERROR_STATUS, 0), 0, "ESR shows errors only after a write");
        let _ = apic.write(offset::ERROR_STATUS, 0, 0);
        assert_eq!(apic.read(offset::ERROR_STATUS, 0), ERROR_RECEIVE_ILLEGAL_VECTOR);
        let _ = apic.write(offset::ERROR_STATUS, 0, 0);
        assert_eq!(apic.read(offset::ERROR_STATUS, 0), 0, "the write cleared it");

        assert_eq!(send(&mut apic, 0, 0x0004_0005), LapicEffect::None, "fixed vector 5 to self");
        let _ = apic.write(offset::ERROR_STATUS, 0, 0);
        assert_eq!(apic.read(offset::ERROR_STATUS, 0), ERROR_SEND_ILLEGAL_VECTOR);

        // A timer with an illegal vector logs instead of interrupting.
        let _ = apic.write(offset::LVT_TIMER, 0x0F, 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 1, 0);
        assert!(!apic.advance(100));
        assert_eq!(irr(&mut apic, 100), [0; 8]);
        let _ = apic.write(offset::ERROR_STATUS, 0, 100);
        assert_eq!(apic.read(offset::ERROR_STATUS, 100), ERROR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(apic.stats().interrupts_rejected, 1);
    }

    #[test]
    fn errors_raise_the_error_lvt_when_unmasked() {
        let mut apic = enabled();
        let _ = apic.write(offset::LVT_ERROR, 0xFE, 0);
        assert!(!apic.accept_interrupt(3));
        assert_eq!(apic.pending_interrupt(), Some(0xFE));
        // An illegal error vector is logged, not raised, and does not recurse.
        let mut apic = apic_with_error_vector(0x02);
        assert!(!apic.accept_interrupt(3));
        assert_eq!(apic.pending_interrupt(), None);
    }

    fn apic_with_error_vector(vector: u32) -> Lapic {
        let mut apic = enabled();
        let _ = apic.write(offset::LVT_ERROR, vector, 0);
        apic
    }

    #[test]
    fn icr_self_ipi() {
        let mut apic = enabled_apic(2, TSC_HZ);
        let effect = send(&mut apic, 0, (0b01 << 18) | 0x40);
        let expected = LapicEffect::SendIpi {
            destination: Destination::SelfOnly,
            delivery: Delivery::Fixed { vector: 0x40 },
        };
        assert_eq!(effect, expected);
        assert!(apic.matches_destination(Destination::SelfOnly, true));
        assert_eq!(apic.read(offset::INTERRUPT_COMMAND_LOW, 0) & (1 << 12), 0, "idle");
        assert_eq!(apic.stats().ipis_sent, 1);
    }

    #[test]
    fn icr_all_excluding_self_and_including_self() {
        let mut apic = enabled();
        let effect = send(&mut apic, 0, (0b11 << 18) | 0xF3);
        let expected = LapicEffect::SendIpi {
            destination: Destination::AllExcludingSelf,
            delivery: Delivery::Fixed { vector: 0xF3 },
        };
        assert_eq!(effect, expected);
        let effect = send(&mut apic, 0, (0b10 << 18) | (0b100 << 8));
        let expected = LapicEffect::SendIpi {
            destination: Destination::AllIncludingSelf,
            delivery: Delivery::Nmi,
        };
        assert_eq!(effect, expected);
    }

    #[test]
    fn icr_physical_and_logical_destinations() {
        let mut apic = enabled();
        let effect = send(&mut apic, 3 << 24, 0x0000_4031);
        let expected = LapicEffect::SendIpi {
            destination: Destination::Physical(3),
            delivery: Delivery::Fixed { vector: 0x31 },
        };
        assert_eq!(effect, expected);
        let effect = send(&mut apic, 0x0C << 24, COMMAND_LOGICAL | (0b001 << 8) | 0x32);
        let expected = LapicEffect::SendIpi {
            destination: Destination::Logical(0x0C),
            delivery: Delivery::LowestPriority { vector: 0x32 },
        };
        assert_eq!(effect, expected);
        assert_eq!(apic.read(offset::INTERRUPT_COMMAND_HIGH, 0), 0x0C << 24);
    }

    #[test]
    fn icr_init_and_startup() {
        let mut apic = enabled();
        // Linux's wakeup_secondary_cpu_via_init: INIT assert, INIT de-assert, SIPI, SIPI.
        let effect =
            send(&mut apic, 1 << 24, COMMAND_LEVEL_TRIGGERED | COMMAND_LEVEL_ASSERT | 0x500);
        let init = LapicEffect::SendIpi {
            destination: Destination::Physical(1),
            delivery: Delivery::Init,
        };
        assert_eq!(effect, init);
        assert_eq!(send(&mut apic, 1 << 24, COMMAND_LEVEL_TRIGGERED | 0x500), LapicEffect::None);
        let effect = send(&mut apic, 1 << 24, 0x609);
        let startup = LapicEffect::SendIpi {
            destination: Destination::Physical(1),
            delivery: Delivery::StartUp { vector: 0x09 },
        };
        assert_eq!(effect, startup);
        // Edge-triggered INIT is an INIT too; reserved delivery modes send nothing.
        assert_eq!(send(&mut apic, 1 << 24, 0x500), init);
        assert_eq!(send(&mut apic, 1 << 24, 0x340), LapicEffect::None);
        assert_eq!(send(&mut apic, 1 << 24, 0x740), LapicEffect::None);
        assert_eq!(apic.stats().ipis_sent, 3);
    }

    #[test]
    fn destinations_match_physical_and_logical_models() {
        let mut apic = enabled_apic(5, TSC_HZ);
        assert!(apic.matches_destination(Destination::Physical(5), false));
        assert!(!apic.matches_destination(Destination::Physical(4), false));
        assert!(apic.matches_destination(Destination::Physical(BROADCAST), true));
        assert!(apic.matches_destination(Destination::AllIncludingSelf, true));
        assert!(!apic.matches_destination(Destination::AllExcludingSelf, true));
        assert!(apic.matches_destination(Destination::AllExcludingSelf, false));
        assert!(!apic.matches_destination(Destination::SelfOnly, false));
        // Flat model: LDR bit set in the mask.
        let _ = apic.write(offset::LOGICAL_DESTINATION, 0x2000_0000 | 0xFF, 0);
        assert_eq!(apic.read(offset::LOGICAL_DESTINATION, 0), 0x2000_0000);
        assert!(apic.matches_destination(Destination::Logical(0x22), false));
        assert!(!apic.matches_destination(Destination::Logical(0x01), false));
        // Cluster model: cluster 2, member bit 0.
        let _ = apic.write(offset::DESTINATION_FORMAT, 0, 0);
        assert_eq!(apic.read(offset::DESTINATION_FORMAT, 0), 0x0FFF_FFFF);
        let _ = apic.write(offset::LOGICAL_DESTINATION, 0x2100_0000, 0);
        assert!(apic.matches_destination(Destination::Logical(0x23), false));
        assert!(!apic.matches_destination(Destination::Logical(0x13), false));
        assert!(!apic.matches_destination(Destination::Logical(0x22), false));
        assert!(apic.matches_destination(Destination::Logical(BROADCAST), false));
    }

    #[test]
    fn software_disabled_apic_masks_lvts_and_refuses_fixed_interrupts() {
        let mut apic = Lapic::new(0, hz(TSC_HZ));
        let _ = apic.write(offset::LVT_TIMER, 0x30, 0);
        assert_eq!(apic.read(offset::LVT_TIMER, 0), LVT_MASKED | 0x30, "mask stays set");
        assert!(!apic.accept_interrupt(0x30));

        let mut apic = enabled();
        assert!(apic.accept_interrupt(0x40));
        let _ = apic.write(offset::LVT_TIMER, 0x30, 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 1000, 0);
        let effect = apic.write(offset::SPURIOUS_VECTOR, 0xFF, 10);
        assert_eq!(effect, LapicEffect::TimerChanged { deadline: None }, "timer masked");
        assert_eq!(apic.read(offset::LVT_TIMER, 10), LVT_MASKED | 0x30);
        assert_eq!(apic.read(offset::LVT_LINT0, 10), LVT_MASKED);
        assert!(!apic.accept_interrupt(0x50));
        assert_eq!(apic.pending_interrupt(), Some(0x40), "IRR is held, not lost");
        // IPIs can still be sent.
        assert!(matches!(send(&mut apic, 0, 0x0008_0041), LapicEffect::SendIpi { .. }));
        // Re-enabling leaves the LVTs masked until software unmasks them.
        let _ = apic.write(offset::SPURIOUS_VECTOR, 0x1FF, 20);
        assert_eq!(apic.read(offset::LVT_TIMER, 20), LVT_MASKED | 0x30);
    }

    #[test]
    fn reserved_offsets_never_panic() {
        let mut apic = enabled();
        let mut reserved = 0;
        let extremes = [PAGE_BYTES, 0x1010, 0xFFF, u64::MAX, u64::MAX - 15, 1 << 63];
        for offset in (0..0x1100).chain(extremes) {
            let known = Register::decode(offset).is_some();
            let value = apic.read(offset, offset);
            if !known {
                reserved += 1;
                assert_eq!(value, 0, "offset {offset:#x}");
                assert_eq!(apic.write(offset, u32::MAX, offset), LapicEffect::None);
                reserved += 1;
            }
        }
        assert_eq!(apic.stats().reserved_accesses, reserved);
        assert_eq!(apic.read(0x24, 0), 0, "unaligned");
        let _ = apic.write(offset::ERROR_STATUS, 0, 0);
        assert_eq!(apic.read(offset::ERROR_STATUS, 0), ERROR_ILLEGAL_REGISTER_ADDRESS);
        // Read-only registers ignore writes.
        for offset in [offset::ID, offset::VERSION, offset::PROCESSOR_PRIORITY, 0x100, 0x200] {
            let before = apic.read(offset, 0);
            let _ = apic.write(offset, 0xFFFF_FFFF, 0);
            assert_eq!(apic.read(offset, 0), before, "offset {offset:#x}");
        }
    }

    #[test]
    fn init_reset_keeps_the_id() {
        let mut apic = enabled_apic(7, TSC_HZ);
        assert!(apic.accept_interrupt(0x40));
        let _ = apic.write(offset::LVT_TIMER, 0x30, 0);
        let _ = apic.write(offset::TIMER_INITIAL_COUNT, 100, 0);
        apic.init_reset();
        assert_eq!(apic.id(), 7);
        assert_eq!(apic, Lapic { stats: apic.stats(), ..Lapic::new(7, hz(TSC_HZ)) });
        assert_eq!(apic.next_deadline(), None);
        assert_eq!(apic.pending_interrupt(), None);
    }

    #[test]
    fn extreme_clocks_do_not_overflow() {
        for tsc_hz in [1, 999, u64::MAX] {
            let mut apic = enabled_apic(0, tsc_hz);
            let _ = apic.write(offset::TIMER_DIVIDE, 0b1010, u64::MAX - 10); // divide by 128
            let _ = apic.write(offset::LVT_TIMER, PERIODIC | 0x30, u64::MAX - 10);
            let _ = apic.write(offset::TIMER_INITIAL_COUNT, u32::MAX, u64::MAX - 10);
            let deadline = apic.next_deadline().unwrap();
            assert!(deadline > u64::MAX - 10);
            let _ = apic.advance(u64::MAX);
            let _ = apic.read(offset::TIMER_CURRENT_COUNT, 0); // time going backwards
            let _ = apic.read(offset::TIMER_CURRENT_COUNT, u64::MAX);
        }
    }

    const KNOWN_OFFSETS: [u64; 25] = [
        0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0, 0x100, 0x170, 0x180, 0x200, 0x270,
        0x280, 0x2F0, 0x300, 0x310, 0x320, 0x350, 0x370, 0x380, 0x390, 0x3E0, 0x3E0,
    ];

    #[derive(Debug, Clone)]
    enum Operation {
        Write(u64, u32),
        Read(u64),
        Advance(u64),
        Rewind(u64),
        TscDeadline(u64),
        Accept(u8),
        Inject,
        EndOfInterrupt,
        SetTpr(u8),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        let offset = prop_oneof![
            6 => prop::sample::select(KNOWN_OFFSETS.to_vec()),
            1 => 0u64..0x1100,
            1 => any::<u64>(),
        ];
        let value = prop_oneof![
            2 => any::<u32>(),
            // Timer-shaped values: a mode, maybe masked, a vector; or a small count.
            2 => (0u32..4, any::<bool>(), any::<u8>())
                .prop_map(|(mode, masked, vector)| {
                    (mode << 17) | (u32::from(masked) << 16) | u32::from(vector)
                }),
            2 => 0u32..2_000,
            1 => Just(0x1FF),
        ];
        let step = prop_oneof![0u64..100, 0u64..100_000, 0u64..(1 << 40)];
        prop_oneof![
            6 => (offset.clone(), value)
                .prop_map(|(offset, value)| Operation::Write(offset, value)),
            3 => offset.prop_map(Operation::Read),
            4 => step.clone().prop_map(Operation::Advance),
            1 => step.clone().prop_map(Operation::Rewind),
            2 => step.prop_map(Operation::TscDeadline),
            3 => any::<u8>().prop_map(Operation::Accept),
            3 => Just(Operation::Inject),
            2 => Just(Operation::EndOfInterrupt),
            1 => any::<u8>().prop_map(Operation::SetTpr),
        ]
    }

    fn check_invariants(apic: &mut Lapic, now: u64) {
        let irr = irr(apic, now);
        let isr = isr(apic, now);
        assert_eq!(irr[0] & 0xFFFF, 0, "no IRR bit below vector 16");
        assert_eq!(isr[0] & 0xFFFF, 0, "no ISR bit below vector 16");
        let ppr = apic.ppr();
        assert!(ppr >= apic.tpr(), "PPR {ppr:#x} below TPR {:#x}", apic.tpr());
        assert_eq!(u32::from(ppr), apic.read(offset::PROCESSOR_PRIORITY, now));
        if let Some(vector) = apic.pending_interrupt() {
            assert!(vector >= FIRST_LEGAL_VECTOR);
            assert!(vector >> 4 > ppr >> 4);
            assert!(apic.interrupt_request.contains(vector));
        }
        assert_eq!(apic.has_wakeup_event(), apic.pending_interrupt().is_some());
        if let Some(deadline) = apic.next_deadline() {
            assert!(deadline > now, "deadline {deadline} not after now {now}");
        }
        let current = apic.read(offset::TIMER_CURRENT_COUNT, now);
        assert!(current <= apic.read(offset::TIMER_INITIAL_COUNT, now));
        if apic.timer_mode() == TimerMode::TscDeadline {
            assert_eq!(current, 0);
        } else {
            assert_eq!(apic.read_tsc_deadline(now), 0);
        }
        if !apic.software_enabled() {
            for entry in [0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
                assert_ne!(apic.read(entry, now) & LVT_MASKED, 0);
            }
        }
    }

    proptest! {
        #[test]
        fn random_guest_activity_never_panics_and_keeps_invariants(
            id in any::<u8>(),
            tsc_hz in prop_oneof![Just(TSC_HZ), 1u64..10_000_000_000, Just(u64::MAX)],
            start in 0u64..(1 << 62),
            operations in prop::collection::vec(operation(), 1..80),
        ) {
            let mut apic = Lapic::new(id, hz(tsc_hz));
            let mut now = start;
            for operation in operations {
                match operation {
                    Operation::Write(offset, value) => {
                        let effect = apic.write(offset, value, now);
                        if let LapicEffect::TimerChanged { deadline } = effect {
                            prop_assert_eq!(deadline, apic.next_deadline());
                        }
                    }
                    Operation::Read(offset) => {
                        let value = apic.read(offset, now);
                        if Register::decode(offset).is_none() {
                            prop_assert_eq!(value, 0);
                        }
                    }
                    Operation::Advance(step) => {
                        now = now.saturating_add(step);
                        let _ = apic.advance(now);
                    }
                    Operation::Rewind(step) => now = now.saturating_sub(step),
                    Operation::TscDeadline(step) => {
                        let _ = apic.write_tsc_deadline(now.saturating_add(step), now);
                    }
                    Operation::Accept(vector) => {
                        let accepted = apic.accept_interrupt(vector);
                        prop_assert_eq!(
                            accepted,
                            vector >= FIRST_LEGAL_VECTOR && apic.software_enabled()
                        );
                    }
                    Operation::Inject => {
                        let _ = inject(&mut apic);
                    }
                    Operation::EndOfInterrupt => {
                        let _ = apic.write(offset::END_OF_INTERRUPT, 0, now);
                    }
                    Operation::SetTpr(value) => apic.set_tpr(value),
                }
                let _ = apic.advance(now);
                check_invariants(&mut apic, now);
            }
        }
    }
}
