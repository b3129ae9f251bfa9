//! Release ids job-server takes as its own: job-server uses Airlock's
//! `airlock_id` as the primary key of the release (a ULID, 26 characters),
//! across every backend. A request number like `3` would collide with
//! another backend's `3`, so each request gets a ULID when it is created:
//! 48 bits of milliseconds and 80 random bits, in Crockford's base 32.

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID (time-ordered, random in its last 80 bits).
pub fn new() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut random = [0u8; 10];
    let mut filled = 0;
    while filled < random.len() {
        match rustix::rand::getrandom(&mut random[filled..], rustix::rand::GetRandomFlags::empty())
        {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom does not fail on Linux ≥ 3.17 once the pool is ready; the
            // time and the process id keep ids apart if it ever does.
            Err(_) => {
                let pid = std::process::id().to_be_bytes();
                random[..4].copy_from_slice(&pid);
                break;
            }
        }
    }
    encode(ms, &random)
}

fn encode(ms: u64, random: &[u8; 10]) -> String {
    let mut value: u128 = u128::from(ms & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in random.iter().enumerate() {
        value |= u128::from(*b) << (8 * (9 - i));
    }
    (0..26)
        .rev()
        .map(|i| ALPHABET[((value >> (5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(s: &str) -> bool {
        s.len() == 26 && s.bytes().all(|b| ALPHABET.contains(&b))
    }

    #[test]
    fn encodes_like_the_reference_and_sorts_by_time() {
        // The spec's example time, 1469918176385 ms, encodes as 01ARYZ6S41.
        let id = encode(1_469_918_176_385, &[0; 10]);
        assert_eq!(&id[..10], "01ARYZ6S41");
        assert_eq!(&id[10..], "0000000000000000");
        assert_eq!(encode(0, &[0xFF; 10]), "0000000000ZZZZZZZZZZZZZZZZ");
        let (a, b) = (new(), new());
        assert!(valid(&a) && valid(&b));
        assert_ne!(a, b);
    }
}
