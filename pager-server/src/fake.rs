//! A fake virtio-mmio (version 2) block device for host tests: registers
//! computed on read, the split virtqueue processed when `QueueNotify` is
//! written (or later, with [`FakeBlk::defer`]), completions put into the
//! used ring. As QEMU's virtio-blk under TCG, it sees only the requests
//! made available before the last notify: a request the driver never
//! notifies is never served. It checks the driver as the core and the device would: every
//! descriptor must lie in the DMA region (else it is recorded in
//! [`FakeBlk::violations`]), the init order must follow the specification,
//! and errors can be injected per block.

use std::collections::BTreeSet;
use std::string::String;
use std::vec::Vec;

use components::DeviceError;

use crate::virtio::{register, status, Transport, BLOCK_BYTES, FEATURE_VERSION_1};

/// The fake device and its DMA region.
#[derive(Debug)]
pub struct FakeBlk {
    /// Returned by `MagicValue`.
    pub magic: u32,
    /// Returned by `Version`.
    pub version: u32,
    /// Returned by `DeviceID`.
    pub device_id: u32,
    /// Feature bits offered.
    pub features: u64,
    /// Whether FEATURES_OK is kept when the driver sets it.
    pub accept_features: bool,
    /// `QueueNumMax`.
    pub queue_num_max: u32,
    /// The disk, one entry per 4096-byte block.
    pub disk: Vec<Vec<u8>>,
    /// The DMA region.
    pub dma: Vec<u8>,
    /// Its bus address.
    pub dma_bus: u64,
    /// Blocks whose reads fail with IOERR.
    pub fail_reads: BTreeSet<u64>,
    /// Blocks whose writes fail with IOERR.
    pub fail_writes: BTreeSet<u64>,
    /// Process the queue only in [`Self::process`], not at notify.
    pub defer: bool,
    /// Everything the driver did that the device or the core would refuse.
    pub violations: Vec<String>,
    /// Register writes, in order.
    pub writes: Vec<(u64, u32)>,
    /// Requests completed: (type, block).
    pub served: Vec<(u32, u64)>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_num: u32,
    queue_ready: u32,
    desc: u64,
    driver: u64,
    device: u64,
    last_avail: u16,
    /// The available index at the last `QueueNotify`.
    notified_avail: u16,
    used_idx: u16,
}

impl FakeBlk {
    /// A block device of `blocks` zero blocks and `dma_pages` DMA pages.
    pub fn new(blocks: usize, dma_pages: usize) -> Self {
        Self {
            magic: 0x7472_6976,
            version: 2,
            device_id: 2,
            features: FEATURE_VERSION_1 | (1 << 9),
            accept_features: true,
            queue_num_max: 256,
            disk: vec![vec![0; BLOCK_BYTES]; blocks],
            dma: vec![0; dma_pages * 4096],
            dma_bus: 0x1_2340_0000,
            fail_reads: BTreeSet::new(),
            fail_writes: BTreeSet::new(),
            defer: false,
            violations: Vec::new(),
            writes: Vec::new(),
            served: Vec::new(),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_num: 0,
            queue_ready: 0,
            desc: 0,
            driver: 0,
            device: 0,
            last_avail: 0,
            notified_avail: 0,
            used_idx: 0,
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The driver features accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Zeroes the DMA region, as the core does at every server start.
    pub fn zero_dma(&mut self) {
        self.dma.fill(0);
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queue_ready = 0;
        self.queue_num = 0;
        self.last_avail = 0;
        self.used_idx = 0;
    }

    fn in_dma(&self, address: u64, length: u64) -> Option<usize> {
        let offset = address.checked_sub(self.dma_bus)?;
        let end = offset.checked_add(length)?;
        (end <= self.dma.len() as u64).then_some(offset as usize)
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.dma[offset], self.dma[offset + 1]])
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let mut raw = [0; 4];
        raw.copy_from_slice(&self.dma[offset..offset + 4]);
        u32::from_le_bytes(raw)
    }

    fn u64_at(&self, offset: usize) -> u64 {
        let mut raw = [0; 8];
        raw.copy_from_slice(&self.dma[offset..offset + 8]);
        u64::from_le_bytes(raw)
    }

    /// Processes every available request now.
    pub fn process(&mut self) {
        if self.status & status::DRIVER_OK == 0 || self.queue_ready == 0 {
            self.violations
                .push("notify before the queue is live".into());
            return;
        }
        let size = self.queue_num as usize;
        let (Some(avail), Some(used), Some(desc)) = (
            self.in_dma(self.driver, 6 + 2 * size as u64),
            self.in_dma(self.device, 6 + 8 * size as u64),
            self.in_dma(self.desc, 16 * size as u64),
        ) else {
            self.violations.push("queue outside the DMA region".into());
            return;
        };
        while self.last_avail != self.notified_avail {
            let head = self.u16_at(avail + 4 + 2 * (self.last_avail as usize % size));
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut chain = Vec::new();
            let mut index = head as usize;
            loop {
                if index >= size || chain.len() > 3 {
                    self.violations
                        .push(format!("bad descriptor chain at {head}"));
                    break;
                }
                let at = desc + 16 * index;
                let (address, length, flags, next) = (
                    self.u64_at(at),
                    self.u32_at(at + 8),
                    self.u16_at(at + 12),
                    self.u16_at(at + 14),
                );
                match self.in_dma(address, u64::from(length)) {
                    Some(offset) => chain.push((offset, length as usize, flags)),
                    None => {
                        self.violations.push(format!(
                            "descriptor {index} at {address:#x}+{length} outside DMA"
                        ));
                        break;
                    }
                }
                if flags & 1 == 0 {
                    break;
                }
                index = next as usize;
            }
            let [(header, 16, hflags), (data, length, dflags), (status_at, 1, sflags)] = chain[..]
            else {
                self.violations
                    .push(format!("unexpected chain shape {chain:?}"));
                continue;
            };
            if length == 0 || !length.is_multiple_of(BLOCK_BYTES) {
                self.violations
                    .push(format!("data length {length} is not whole blocks"));
                continue;
            }
            let blocks = length / BLOCK_BYTES;
            if hflags & 2 != 0 || sflags & 2 == 0 {
                self.violations
                    .push("header writable or status read-only".into());
            }
            let kind = self.u32_at(header);
            let sector = self.u64_at(header + 8);
            let block = sector / 8;
            let status_value = if !sector.is_multiple_of(8)
                || block as usize + blocks > self.disk.len()
            {
                self.violations
                    .push(format!("sector {sector} not a block of the disk"));
                1
            } else if kind == 0 {
                if dflags & 2 == 0 {
                    self.violations
                        .push("read into a device-readable buffer".into());
                }
                if (block..block + blocks as u64).any(|block| self.fail_reads.contains(&block)) {
                    1
                } else {
                    for index in 0..blocks {
                        let bytes = self.disk[block as usize + index].clone();
                        let at = data + index * BLOCK_BYTES;
                        self.dma[at..at + BLOCK_BYTES].copy_from_slice(&bytes);
                    }
                    0
                }
            } else if kind == 1 {
                if (block..block + blocks as u64).any(|block| self.fail_writes.contains(&block)) {
                    1
                } else {
                    for index in 0..blocks {
                        let at = data + index * BLOCK_BYTES;
                        self.disk[block as usize + index] = self.dma[at..at + BLOCK_BYTES].to_vec();
                    }
                    0
                }
            } else {
                2
            };
            self.served.push((kind, block));
            self.dma[status_at] = status_value;
            let slot = used + 4 + 8 * (self.used_idx as usize % size);
            self.dma[slot..slot + 4].copy_from_slice(&u32::from(head).to_le_bytes());
            self.dma[slot + 4..slot + 8].copy_from_slice(&1u32.to_le_bytes());
            self.used_idx = self.used_idx.wrapping_add(1);
            let idx = self.used_idx.to_le_bytes();
            self.dma[used + 2..used + 4].copy_from_slice(&idx);
        }
    }

    fn check(&self, offset: usize, length: usize, align: usize) -> Result<(), DeviceError> {
        match offset.checked_add(length) {
            Some(end) if end <= self.dma.len() && offset.is_multiple_of(align) => Ok(()),
            _ => Err(DeviceError::OutOfRange),
        }
    }
}

impl Transport for FakeBlk {
    fn read32(&mut self, offset: u64) -> Result<u32, DeviceError> {
        Ok(match offset {
            register::MAGIC => self.magic,
            register::VERSION => self.version,
            register::DEVICE_ID => self.device_id,
            0x00c => 0x554d_4551,
            register::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.features as u32,
                1 => (self.features >> 32) as u32,
                _ => 0,
            },
            register::QUEUE_NUM_MAX => self.queue_num_max,
            register::QUEUE_READY => self.queue_ready,
            register::STATUS => self.status,
            register::CONFIG_GENERATION => 0,
            register::CONFIG => ((self.disk.len() as u64 * 8) & 0xffff_ffff) as u32,
            0x104 => ((self.disk.len() as u64 * 8) >> 32) as u32,
            _ => 0,
        })
    }

    fn write32(&mut self, offset: u64, value: u32) -> Result<(), DeviceError> {
        self.writes.push((offset, value));
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            register::STATUS => {
                if value == 0 {
                    self.reset();
                } else {
                    if value & !self.status & status::FEATURES_OK != 0 {
                        if self.driver_features & !self.features != 0 {
                            self.violations
                                .push("driver accepted features not offered".into());
                        }
                        if !self.accept_features {
                            self.status = value & !status::FEATURES_OK;
                            return Ok(());
                        }
                    }
                    if value & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK == 0 {
                        self.violations.push("DRIVER_OK before FEATURES_OK".into());
                    }
                    if value & status::ACKNOWLEDGE == 0 && value != status::FAILED {
                        self.violations.push("status without ACKNOWLEDGE".into());
                    }
                    self.status = value;
                }
            }
            register::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            register::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            register::DRIVER_FEATURES => {
                if self.status & status::DRIVER == 0 {
                    self.violations.push("features before DRIVER".into());
                }
                self.driver_features = match self.driver_features_sel {
                    0 => low(self.driver_features),
                    _ => high(self.driver_features),
                };
            }
            register::QUEUE_SEL => {}
            register::QUEUE_NUM => {
                if value > self.queue_num_max {
                    self.violations.push("queue larger than QueueNumMax".into());
                }
                self.queue_num = value;
            }
            register::QUEUE_DESC_LOW => self.desc = low(self.desc),
            register::QUEUE_DESC_HIGH => self.desc = high(self.desc),
            register::QUEUE_DRIVER_LOW => self.driver = low(self.driver),
            register::QUEUE_DRIVER_HIGH => self.driver = high(self.driver),
            register::QUEUE_DEVICE_LOW => self.device = low(self.device),
            register::QUEUE_DEVICE_HIGH => self.device = high(self.device),
            register::QUEUE_READY => {
                if self.status & status::FEATURES_OK == 0 {
                    self.violations
                        .push("queue set up before FEATURES_OK".into());
                }
                self.queue_ready = value;
            }
            register::QUEUE_NOTIFY => {
                let size = self.queue_num as usize;
                if let Some(avail) = self.in_dma(self.driver, 6 + 2 * size as u64) {
                    self.notified_avail = self.u16_at(avail + 2);
                }
                if !self.defer {
                    self.process();
                }
            }
            other => self
                .violations
                .push(format!("write to register {other:#x}")),
        }
        Ok(())
    }

    fn dma_bus(&self) -> u64 {
        self.dma_bus
    }

    fn dma_pages(&self) -> u64 {
        (self.dma.len() / 4096) as u64
    }

    fn dma_read(&mut self, offset: usize, out: &mut [u8]) -> Result<(), DeviceError> {
        self.check(offset, out.len(), 1)?;
        out.copy_from_slice(&self.dma[offset..offset + out.len()]);
        Ok(())
    }

    fn dma_write(&mut self, offset: usize, data: &[u8]) -> Result<(), DeviceError> {
        self.check(offset, data.len(), 1)?;
        self.dma[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn dma_load_u8(&mut self, offset: usize) -> Result<u8, DeviceError> {
        self.check(offset, 1, 1)?;
        Ok(self.dma[offset])
    }

    fn dma_load_u16(&mut self, offset: usize) -> Result<u16, DeviceError> {
        self.check(offset, 2, 2)?;
        Ok(self.u16_at(offset))
    }

    fn dma_load_u32(&mut self, offset: usize) -> Result<u32, DeviceError> {
        self.check(offset, 4, 4)?;
        Ok(self.u32_at(offset))
    }

    fn dma_store_u8(&mut self, offset: usize, value: u8) -> Result<(), DeviceError> {
        self.check(offset, 1, 1)?;
        self.dma[offset] = value;
        Ok(())
    }

    fn dma_store_u16(&mut self, offset: usize, value: u16) -> Result<(), DeviceError> {
        self.check(offset, 2, 2)?;
        self.dma[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn dma_store_u32(&mut self, offset: usize, value: u32) -> Result<(), DeviceError> {
        self.check(offset, 4, 4)?;
        self.dma[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }

    fn dma_store_u64(&mut self, offset: usize, value: u64) -> Result<(), DeviceError> {
        self.check(offset, 8, 8)?;
        self.dma[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        Ok(())
    }
}
