//! The bytes of one output, read once into memory and then used three ways
//! at the same time: hashed, checked for disclosure, and copied into a
//! request's store.
//!
//! The buffer starts at an address aligned for direct I/O and is padded with
//! zeros to a whole number of blocks, so the copy can be written with
//! `O_DIRECT` straight from it (see `Store::write_copy` for why).

use std::io::Read;

use crate::error::{Error, Result};

/// The alignment direct I/O asks of the buffer, the file offset and the
/// length: a device's logical block size, 512 or 4096 bytes. 4096 serves both.
pub const ALIGN: usize = 4096;

pub struct Content {
    /// Zero-filled storage a little larger than needed, so that an aligned
    /// start can be found inside it without `unsafe` allocation.
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

impl Content {
    /// Read a whole file whose size was `size` when it was opened (at most
    /// `max` bytes). A file that is longer than its size by the time it is
    /// read changed under us: refused, as the manifest check would refuse it.
    pub fn read(mut file: std::fs::File, size: u64, max: u64, path: &str) -> Result<Content> {
        if size > max {
            return Err(Error::TooLarge {
                path: path.into(),
                size,
                max,
            });
        }
        let expected = usize::try_from(size).map_err(|_| Error::TooLarge {
            path: path.into(),
            size,
            max,
        })?;
        // One spare byte is read for, so a file that grew is noticed.
        let capacity = round_up(expected + 1);
        let mut buf = vec![0u8; capacity + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        let window = &mut buf[start..start + capacity];
        let mut len = 0;
        while len < window.len() {
            match file.read(&mut window[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        if len != expected {
            let read = if len > expected {
                "more".to_string()
            } else {
                len.to_string()
            };
            return Err(Error::NotReleasable {
                path: path.into(),
                message: format!(
                    "changed while it was read ({size} bytes when opened, {read} read): try again once it is complete"
                ),
            });
        }
        Ok(Content { buf, start, len })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The bytes followed by zeros up to a whole number of [`ALIGN`] blocks,
    /// starting at an aligned address: what an `O_DIRECT` write takes.
    pub fn padded(&self) -> &[u8] {
        &self.buf[self.start..self.start + round_up(self.len)]
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, std::fs::File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = std::fs::File::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn bytes_are_the_file_and_padding_is_aligned_zeros() {
        for n in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 17] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            let (_t, f) = file_with(&data);
            let c = Content::read(f, n as u64, 1 << 20, "x").unwrap();
            assert_eq!(c.bytes(), &data[..]);
            assert_eq!(c.len(), n);
            let p = c.padded();
            assert_eq!(p.len() % ALIGN, 0, "padded length for {n}");
            assert_eq!(p.as_ptr() as usize % ALIGN, 0, "alignment for {n}");
            assert_eq!(&p[..n], &data[..]);
            assert!(p[n..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_file_that_grew_or_shrank_since_its_size_was_taken_is_refused() {
        let (_t, f) = file_with(b"0123456789");
        let e = Content::read(f, 4, 100, "out.csv").err().unwrap();
        assert!(matches!(e, Error::NotReleasable { .. }), "{e}");
        assert!(e.to_string().contains("changed while it was read"), "{e}");
        let (_t, f) = file_with(b"0123");
        let e = Content::read(f, 10, 100, "out.csv").err().unwrap();
        assert!(matches!(e, Error::NotReleasable { .. }), "{e}");
        assert!(e.to_string().contains("changed while it was read"), "{e}");
    }

    #[test]
    fn a_file_over_the_limit_is_not_read() {
        let (_t, f) = file_with(b"0123456789");
        let e = Content::read(f, 10, 5, "out.csv").err().unwrap();
        assert!(
            matches!(
                e,
                Error::TooLarge {
                    size: 10,
                    max: 5,
                    ..
                }
            ),
            "{e}"
        );
    }
}
