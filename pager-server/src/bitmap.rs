//! A fixed-size bitmap over caller-provided words (no heap).
//!
//! Bit `i` lives in word `i / 64`, at bit `i % 64`. Indices at or past
//! [`Bitmap::len`] read as clear and are ignored by writes, so a bad index can
//! never panic; every caller in this crate range-checks first.

/// Number of `u64` words needed to hold `bits` bits.
pub const fn words_for(bits: u64) -> usize {
    bits.div_ceil(64) as usize
}

/// A bitmap of `len` bits stored in borrowed words.
#[derive(Debug)]
pub struct Bitmap<'a> {
    words: &'a mut [u64],
    len: u64,
}

impl<'a> Bitmap<'a> {
    /// A bitmap of `len` bits, all clear, in `words`. `None` if `words` holds
    /// fewer than [`words_for`]`(len)` words.
    pub fn new_cleared(words: &'a mut [u64], len: u64) -> Option<Self> {
        let needed = words_for(len);
        let words = words.get_mut(..needed)?;
        words.fill(0);
        Some(Self { words, len })
    }

    /// Number of bits.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// `true` if the bitmap has no bits.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether bit `index` is set (`false` out of range).
    pub fn get(&self, index: u64) -> bool {
        if index >= self.len {
            return false;
        }
        self.words
            .get((index / 64) as usize)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Sets bit `index` to `value`; returns its previous value (`false` and no
    /// change out of range).
    pub fn assign(&mut self, index: u64, value: bool) -> bool {
        if index >= self.len {
            return false;
        }
        let Some(word) = self.words.get_mut((index / 64) as usize) else {
            return false;
        };
        let mask = 1 << (index % 64);
        let previous = *word & mask != 0;
        if value {
            *word |= mask;
        } else {
            *word &= !mask;
        }
        previous
    }

    /// Sets bit `index`; returns its previous value.
    pub fn set(&mut self, index: u64) -> bool {
        self.assign(index, true)
    }

    /// Clears bit `index`; returns its previous value.
    pub fn clear(&mut self, index: u64) -> bool {
        self.assign(index, false)
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    /// The words, for word-at-a-time scans.
    pub fn words(&self) -> &[u64] {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_for_rounds_up() {
        assert_eq!(words_for(0), 0);
        assert_eq!(words_for(1), 1);
        assert_eq!(words_for(64), 1);
        assert_eq!(words_for(65), 2);
    }

    #[test]
    fn set_clear_count_and_out_of_range() {
        let mut words = [u64::MAX; 3];
        let mut bitmap = Bitmap::new_cleared(&mut words, 130).unwrap();
        assert_eq!(bitmap.count_ones(), 0, "new_cleared clears dirty storage");
        assert!(!bitmap.set(129));
        assert!(
            bitmap.set(129),
            "second set reports the bit was already set"
        );
        assert!(bitmap.get(129));
        assert!(!bitmap.set(130), "out of range is ignored");
        assert!(!bitmap.get(130));
        bitmap.set(0);
        assert_eq!(bitmap.count_ones(), 2);
        assert!(bitmap.clear(0));
        assert_eq!(bitmap.count_ones(), 1);
        bitmap.clear_all();
        assert_eq!(bitmap.count_ones(), 0);
    }

    #[test]
    fn too_little_storage_is_refused() {
        let mut words = [0u64; 1];
        assert!(Bitmap::new_cleared(&mut words, 65).is_none());
    }
}
