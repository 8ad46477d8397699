//! The fuzz bytes read as a deterministic stream of choices, and the writer that builds such
//! streams for the seed corpus.
//!
//! Reading never fails: once the bytes run out every read gives zero (and empty slices), so a
//! harness only has to stop when [`Input::is_empty`] says so. Integers are little-endian.

/// A cursor over fuzz bytes.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// A stream over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    /// Two bytes.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }

    /// Four bytes.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    /// Eight bytes.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    /// One byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A value in `0..n` from one byte (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u8()) % n
        }
    }

    /// A slice of at most `max` bytes, its length given by one byte (a two-byte length if
    /// that byte is 255).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = match self.u8() {
            255 => usize::from(self.u16()),
            n => usize::from(n),
        };
        self.take(len.min(max))
    }

    /// A short string: [`Input::bytes`] read lossily as UTF-8.
    pub fn string(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

/// Builds byte streams that [`Input`] reads back as the same choices (for seed inputs).
#[derive(Debug, Default, Clone)]
pub struct Script {
    out: Vec<u8>,
}

impl Script {
    /// An empty stream.
    pub fn new() -> Self {
        Script::default()
    }

    /// Appends one byte.
    pub fn u8(mut self, v: u8) -> Self {
        self.out.push(v);
        self
    }

    /// Appends two bytes.
    pub fn u16(mut self, v: u16) -> Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends four bytes.
    pub fn u32(mut self, v: u32) -> Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends eight bytes.
    pub fn u64(mut self, v: u64) -> Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a slice as [`Input::bytes`] reads it (at most 65535 bytes).
    pub fn bytes(mut self, v: &[u8]) -> Self {
        let v = &v[..v.len().min(usize::from(u16::MAX))];
        match u8::try_from(v.len()) {
            Ok(n) if n < 255 => self.out.push(n),
            _ => {
                self.out.push(255);
                self.out.extend_from_slice(&(v.len() as u16).to_le_bytes());
            }
        }
        self.out.extend_from_slice(v);
        self
    }

    /// Appends raw bytes (read back with [`Input::rest`] or field by field).
    pub fn raw(mut self, v: &[u8]) -> Self {
        self.out.extend_from_slice(v);
        self
    }

    /// The stream.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_reads_back() {
        let long = vec![7u8; 300];
        let data = Script::new()
            .u8(1)
            .u16(2)
            .u32(3)
            .u64(4)
            .bytes(b"abc")
            .bytes(&long)
            .finish();
        let mut i = Input::new(&data);
        assert_eq!(
            (i.u8(), i.u16(), i.u32(), i.u64()),
            (1, 2, 3, 4),
            "integers"
        );
        assert_eq!(i.bytes(10), b"abc");
        assert_eq!(i.bytes(1000), &long[..]);
        assert!(i.is_empty());
        assert_eq!((i.u64(), i.bytes(5)), (0, &[][..]));
    }
}
