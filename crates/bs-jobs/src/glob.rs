//! Output globs: `*` and `?` within one path component, `**` for any
//! number of components. Matched against workspace-relative paths.

/// Whether `path` (components joined by `/`) matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    match_parts(&pat, &parts)
}

fn match_parts(pat: &[&str], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|i| match_parts(rest, &parts[i..])),
        Some((p, rest)) => match parts.split_first() {
            Some((first, more)) => {
                match_component(p.as_bytes(), first.as_bytes()) && match_parts(rest, more)
            }
            None => false,
        },
    }
}

fn match_component(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_stay_in_one_component_and_double_stars_cross() {
        assert!(matches("output/*.csv", "output/a.csv"));
        assert!(!matches("output/*.csv", "output/sub/a.csv"));
        assert!(matches("output/**/*.csv", "output/sub/a.csv"));
        assert!(matches("output/**/*.csv", "output/a.csv"));
        assert!(matches("output/?.txt", "output/a.txt"));
        assert!(!matches("output/?.txt", "output/ab.txt"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("a*b*c", "aXbY"));
        assert!(matches("exact.json", "exact.json"));
        assert!(!matches("exact.json", "output/exact.json"));
    }
}
