//! SHA-256 of files and buffers. sha2 picks the CPU's SHA extensions
//! (SHA-NI) at run time, which is several times faster than coreutils'
//! `sha256sum`; many files are hashed on every core with rayon.

use std::io::Read;

use sha2::{Digest, Sha256};

/// Read size: large enough that syscalls do not dominate, small enough to stay in L2.
const CHUNK: usize = 256 * 1024;

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hash a reader to its end: (hex digest, bytes read).
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// A rayon pool of `threads` threads (0 = one per CPU).
pub fn pool(threads: usize) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .ok()
}

/// Map `f` over `items` on `pool` (or on this thread when there is none),
/// keeping the order.
pub fn par_map<T: Sync, R: Send>(
    pool: Option<&rayon::ThreadPool>,
    items: &[T],
    f: impl Fn(&T) -> R + Sync + Send,
) -> Vec<R> {
    use rayon::prelude::*;
    match pool {
        Some(p) if items.len() > 1 => p.install(|| items.par_iter().map(&f).collect()),
        _ => items.iter().map(f).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_known_vectors() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let big = vec![7u8; CHUNK * 3 + 5];
        let (d, n) = sha256_reader(&big[..]).unwrap();
        assert_eq!(n, big.len() as u64);
        assert_eq!(d, sha256_bytes(&big));
    }

    #[test]
    fn par_map_keeps_order() {
        let p = pool(2);
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(
            par_map(p.as_ref(), &v, |x| x * 2),
            v.iter().map(|x| x * 2).collect::<Vec<_>>()
        );
    }
}
