//! Disclosure checks: what an output checker should look at twice. Findings
//! are attached to the request for the reviewers and printed; they never
//! block on their own (the 16 MiB limit is enforced separately, because the
//! release server refuses bigger files).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use bs_core::config::ReleaseConfig;

/// How many example row numbers a finding lists.
const EXAMPLES: usize = 10;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Finding {
    /// `low_count`, `patient_id_column`, `too_many_rows`, `type_not_allowed`, `too_large`.
    pub check: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Data row numbers (1 = the first row after the header), the first few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Finding {
    fn new(check: &str, message: String) -> Finding {
        Finding {
            check: check.into(),
            message,
            column: None,
            rows: Vec::new(),
            count: None,
        }
    }
}

pub fn extension(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// Findings for a file of `size` bytes; `content` is its bytes when it was
/// read (it is not for files over the limit).
pub fn check(path: &str, size: u64, content: Option<&[u8]>, cfg: &ReleaseConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let ext = extension(path);
    if !cfg.allowed_extensions.contains(&ext) {
        out.push(Finding::new(
            "type_not_allowed",
            if ext.is_empty() {
                "a file without an extension is not a type that may be released".into()
            } else {
                format!("files of type .{ext} may not be released")
            },
        ));
    }
    if size > cfg.max_file_bytes {
        out.push(Finding::new(
            "too_large",
            format!(
                "{size} bytes is over the {} byte limit of the release server",
                cfg.max_file_bytes
            ),
        ));
    }
    let sep = match ext.as_str() {
        "csv" => b',',
        "tsv" => b'\t',
        _ => return out,
    };
    if let Some(bytes) = content {
        check_table(bytes, sep, cfg, &mut out);
    }
    out
}

fn check_table(bytes: &[u8], sep: u8, cfg: &ReleaseConfig, out: &mut Vec<Finding>) {
    let mut records = Records::new(bytes, sep);
    let mut fields: Vec<Cow<'_, [u8]>> = Vec::new();
    if !records.next_into(&mut fields) {
        return;
    }
    let header: Vec<String> = fields
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    if let Some(col) = header.iter().find(|h| h.eq_ignore_ascii_case("patient_id")) {
        let mut f = Finding::new(
            "patient_id_column",
            "the table has a patient_id column: it holds row-level data".into(),
        );
        f.column = Some(col.clone());
        out.push(f);
    }
    // Per column: how many low counts, and in which rows first.
    let mut low: Vec<(u64, Vec<u64>)> = vec![(0, Vec::new()); header.len()];
    let mut rows = 0u64;
    while records.next_into(&mut fields) {
        if fields.len() == 1 && fields[0].is_empty() {
            continue; // a blank line
        }
        rows += 1;
        for (i, cell) in fields.iter().enumerate() {
            if is_low_count(cell, cfg.low_count_threshold) {
                if i >= low.len() {
                    low.resize(i + 1, (0, Vec::new()));
                }
                low[i].0 += 1;
                if low[i].1.len() < EXAMPLES {
                    low[i].1.push(rows);
                }
            }
        }
    }
    for (i, (count, examples)) in low.into_iter().enumerate() {
        if count == 0 {
            continue;
        }
        let name = header
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("column {}", i + 1));
        let mut f = Finding::new(
            "low_count",
            format!(
                "{count} cell(s) in column {name:?} hold a count from 1 to {}",
                cfg.low_count_threshold
            ),
        );
        f.column = Some(name);
        f.rows = examples;
        f.count = Some(count);
        out.push(f);
    }
    if rows > cfg.max_csv_rows {
        let mut f = Finding::new(
            "too_many_rows",
            format!(
                "{rows} rows is more than {}: possibly row-level data",
                cfg.max_csv_rows
            ),
        );
        f.count = Some(rows);
        out.push(f);
    }
}

/// The records of a CSV or TSV as text (the header first), read as the
/// checks read them, blank lines skipped: what the web UI shows as a table.
pub fn table(bytes: &[u8], sep: u8) -> Vec<Vec<String>> {
    let mut records = Records::new(bytes, sep);
    let mut fields: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut out = Vec::new();
    while records.next_into(&mut fields) {
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        out.push(
            fields
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect(),
        );
    }
    out
}

/// Whether a cell holds what the low-count check flags.
pub fn low_count_cell(cell: &str, threshold: u64) -> bool {
    is_low_count(cell.as_bytes(), threshold)
}

/// A whole number from 1 to `threshold` (`5`, `5.0`, ` 3 `); not `0`, not `2.5`.
fn is_low_count(cell: &[u8], threshold: u64) -> bool {
    let t = cell.trim_ascii();
    if t.is_empty() || t.len() > 24 || !t.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return false;
    }
    match std::str::from_utf8(t)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        Some(v) => v.fract() == 0.0 && v >= 1.0 && v <= threshold as f64,
        None => false,
    }
}

/// RFC 4180 records: quoted fields may hold separators, `""` and newlines.
/// Unquoted fields are borrowed from the input: no copy per cell.
struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    sep: u8,
}

impl<'a> Records<'a> {
    fn new(data: &'a [u8], sep: u8) -> Self {
        let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
        Records { data, pos: 0, sep }
    }

    /// Where the unquoted text from `pos` ends: at the next separator or
    /// newline, or at the end of the input. (memchr: SIMD, not a byte loop;
    /// a 16 MiB CSV is scanned in milliseconds.)
    fn field_end(&self) -> usize {
        memchr::memchr2(self.sep, b'\n', &self.data[self.pos..])
            .map_or(self.data.len(), |n| self.pos + n)
    }

    /// Read the next record into `fields`; false at the end of the input.
    fn next_into(&mut self, fields: &mut Vec<Cow<'a, [u8]>>) -> bool {
        fields.clear();
        let d = self.data;
        if self.pos >= d.len() {
            return false;
        }
        loop {
            if d.get(self.pos) == Some(&b'"') {
                // Quoted: copy, undoubling quotes, until the closing quote.
                self.pos += 1;
                let mut field = Vec::new();
                loop {
                    let rest = &d[self.pos..];
                    let Some(q) = memchr::memchr(b'"', rest) else {
                        // No closing quote: the field runs to the end.
                        field.extend_from_slice(rest);
                        self.pos = d.len();
                        break;
                    };
                    field.extend_from_slice(&rest[..q]);
                    self.pos += q + 1;
                    if d.get(self.pos) == Some(&b'"') {
                        field.push(b'"');
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                // Anything between the closing quote and the separator is kept.
                let rest_end = self.field_end();
                field.extend_from_slice(strip_cr(&d[self.pos..rest_end]));
                self.pos = rest_end;
                fields.push(Cow::Owned(field));
            } else {
                let end = self.field_end();
                fields.push(Cow::Borrowed(strip_cr(&d[self.pos..end])));
                self.pos = end;
            }
            match d.get(self.pos) {
                Some(&b) if b == self.sep => self.pos += 1,
                Some(_) => {
                    self.pos += 1; // the newline
                    return true;
                }
                None => return true,
            }
        }
    }
}

fn strip_cr(field: &[u8]) -> &[u8] {
    field.strip_suffix(b"\r").unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.check.as_str()).collect()
    }

    #[test]
    fn small_counts_are_found_with_their_column_and_rows() {
        let cfg = ReleaseConfig::default();
        let csv = b"group,count,rate\nA,100,0.5\nB,7,2.0\nC,8,3\n\"D, with comma\",1,0\nE,0,5.0\n";
        let f = check("output/t.csv", csv.len() as u64, Some(csv), &cfg);
        let counts: Vec<_> = f.iter().filter(|f| f.check == "low_count").collect();
        assert_eq!(counts.len(), 2, "{f:?}");
        assert_eq!(counts[0].column.as_deref(), Some("count"));
        assert_eq!(counts[0].rows, vec![2, 4]);
        assert_eq!(counts[1].column.as_deref(), Some("rate"));
        assert_eq!(counts[1].rows, vec![2, 3, 5]);
    }

    #[test]
    fn patient_id_many_rows_type_and_size_are_flagged() {
        let cfg = ReleaseConfig {
            max_csv_rows: 3,
            ..Default::default()
        };
        let csv = b"Patient_ID,age\r\n11,40\r\n12,41\r\n13,42\r\n14,43\r\n";
        let f = check("t.csv", csv.len() as u64, Some(csv), &cfg);
        assert_eq!(kinds(&f), vec!["patient_id_column", "too_many_rows"]);
        let f = check("model.pkl", 20 << 20, None, &cfg);
        assert_eq!(kinds(&f), vec!["type_not_allowed", "too_large"]);
        assert_eq!(
            kinds(&check("Makefile", 1, Some(b"x"), &cfg)),
            vec!["type_not_allowed"]
        );
        assert!(check("fig.PNG", 10, Some(b"x"), &cfg).is_empty());
    }

    #[test]
    fn doubled_quotes_text_after_a_quote_and_an_unclosed_quote_parse() {
        let mut r = Records::new(
            b"\"say \"\"hi\"\"\",\"a\"b,x\r\n\"open, to the end\nstill",
            b',',
        );
        let mut fields = Vec::new();
        assert!(r.next_into(&mut fields));
        let want: Vec<Cow<'_, [u8]>> = vec![
            Cow::Owned(b"say \"hi\"".to_vec()),
            Cow::Owned(b"ab".to_vec()),
            Cow::Borrowed(b"x"),
        ];
        assert_eq!(fields, want);
        assert!(r.next_into(&mut fields));
        assert_eq!(
            fields,
            vec![Cow::<[u8]>::Owned(b"open, to the end\nstill".to_vec())]
        );
        assert!(!r.next_into(&mut fields));
    }

    #[test]
    fn quoted_newlines_and_blank_lines_do_not_count_as_rows() {
        let cfg = ReleaseConfig::default();
        let csv = b"a,b\n\"line one\nline two\",100\n\n";
        assert!(check("x.csv", csv.len() as u64, Some(csv), &cfg).is_empty());
        let mut r = Records::new(csv, b',');
        let mut fields = Vec::new();
        assert!(r.next_into(&mut fields));
        assert!(r.next_into(&mut fields));
        let want: Vec<Cow<'_, [u8]>> = vec![
            Cow::Owned(b"line one\nline two".to_vec()),
            Cow::Borrowed(b"100"),
        ];
        assert_eq!(fields, want);
        assert!(r.next_into(&mut fields));
        assert_eq!(fields, vec![Cow::Borrowed(&b""[..])]);
        assert!(!r.next_into(&mut fields));
    }
}
