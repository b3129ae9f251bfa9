//! Clock status from `chronyc -c tracking` and `chronyc -c sources`: CSV
//! in raw units (seconds, ppm), no name lookups, so no table scraping.
//!
//! `tracking` has 14 fields: reference ID (hex), reference name, stratum,
//! reference time (Unix seconds), system time offset (seconds; positive:
//! the system clock is behind, `chronyc tracking` says "slow of NTP time"), last offset, RMS offset, frequency (ppm;
//! positive: the clock runs slow), residual frequency, skew, root delay,
//! root dispersion, update interval, leap status.
//!
//! `sources` has 10 fields a source: mode (`^` server, `=` peer, `#` local
//! refclock), state (`*` selected, `+` combined, `-` not combined, `?`
//! unreachable, `x` falseticker, `~` too variable), name (a refclock's
//! refid), stratum, poll (log2 s), reach (octal), seconds since the last
//! sample (4294967295: never), last offset adjusted, measured offset, error.

use serde::Serialize;

use bs_core::config::ChronyConfig;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tracking {
    pub reference_id: String,
    pub reference_name: String,
    pub stratum: u32,
    pub reference_time: f64,
    pub system_time_offset_secs: f64,
    pub last_offset_secs: f64,
    pub rms_offset_secs: f64,
    pub frequency_ppm: f64,
    pub residual_frequency_ppm: f64,
    pub skew_ppm: f64,
    pub root_delay_secs: f64,
    pub root_dispersion_secs: f64,
    pub update_interval_secs: f64,
    pub leap_status: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Source {
    pub mode: String,
    pub state: String,
    pub name: String,
    pub stratum: u32,
    pub poll: i32,
    pub reach: String,
    /// Seconds since the last sample; `None`: never.
    pub last_rx_secs: Option<u64>,
    pub last_offset_secs: f64,
    pub measured_offset_secs: f64,
    pub error_secs: f64,
}

impl Source {
    pub fn selected(&self) -> bool {
        self.state == "*"
    }
    pub fn is_refclock(&self) -> bool {
        self.mode == "#"
    }
}

fn field<T: std::str::FromStr>(fields: &[&str], i: usize, what: &str) -> Result<T, String> {
    let raw = fields.get(i).ok_or_else(|| format!("no {what} field"))?;
    raw.trim()
        .parse()
        .map_err(|_| format!("{what}: cannot parse {raw:?}"))
}

/// Parse the one line `chronyc -c tracking` prints.
pub fn parse_tracking(text: &str) -> Result<Tracking, String> {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or("empty tracking output")?;
    let f: Vec<&str> = line.split(',').collect();
    if f.len() != 14 {
        return Err(format!(
            "tracking: expected 14 fields, got {}: {line:?}",
            f.len()
        ));
    }
    Ok(Tracking {
        reference_id: f[0].to_string(),
        reference_name: f[1].to_string(),
        stratum: field(&f, 2, "stratum")?,
        reference_time: field(&f, 3, "reference time")?,
        system_time_offset_secs: field(&f, 4, "system time")?,
        last_offset_secs: field(&f, 5, "last offset")?,
        rms_offset_secs: field(&f, 6, "RMS offset")?,
        frequency_ppm: field(&f, 7, "frequency")?,
        residual_frequency_ppm: field(&f, 8, "residual frequency")?,
        skew_ppm: field(&f, 9, "skew")?,
        root_delay_secs: field(&f, 10, "root delay")?,
        root_dispersion_secs: field(&f, 11, "root dispersion")?,
        update_interval_secs: field(&f, 12, "update interval")?,
        leap_status: f[13].trim().to_string(),
    })
}

/// Parse `chronyc -c sources` (one line a source; none is fine).
pub fn parse_sources(text: &str) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 10 {
            return Err(format!(
                "sources: expected 10 fields, got {}: {line:?}",
                f.len()
            ));
        }
        let last_rx: u64 = field(&f, 6, "last rx")?;
        sources.push(Source {
            mode: f[0].to_string(),
            state: f[1].to_string(),
            name: f[2].to_string(),
            stratum: field(&f, 3, "stratum")?,
            poll: field(&f, 4, "poll")?,
            reach: f[5].to_string(),
            last_rx_secs: (last_rx != u64::from(u32::MAX)).then_some(last_rx),
            last_offset_secs: field(&f, 7, "last offset")?,
            measured_offset_secs: field(&f, 8, "measured offset")?,
            error_secs: field(&f, 9, "error")?,
        });
    }
    Ok(sources)
}

/// The source name chronyd gives our refclock: its `refid` option, else
/// the driver name (chronyd appends the refclock's index: `PHC0`).
pub fn refclock_name(cfg: &ChronyConfig) -> (String, bool) {
    let words: Vec<&str> = cfg.refclock_line.split_whitespace().collect();
    match words
        .iter()
        .position(|w| *w == "refid")
        .and_then(|i| words.get(i + 1))
    {
        Some(refid) => (refid.to_string(), true),
        None => (words.get(1).copied().unwrap_or("PHC").to_string(), false),
    }
}

/// The `clock` record: tracking, the selected source and what `check` thinks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Clock {
    #[serde(flatten)]
    pub tracking: Tracking,
    pub synchronised: bool,
    pub selected_source: Option<String>,
    pub refclock_configured: bool,
    pub refclock_name: String,
    pub refclock_selected: bool,
    pub max_offset_secs: f64,
    /// Why `check` finds this clock wrong; empty: healthy.
    pub problems: Vec<String>,
}

pub fn evaluate(cfg: &ChronyConfig, tracking: Tracking, sources: &[Source]) -> Clock {
    let synchronised = tracking.leap_status != "Not synchronised"
        && tracking.stratum > 0
        && tracking.reference_id != "00000000";
    let selected = sources.iter().find(|s| s.selected());
    let (name, exact) = refclock_name(cfg);
    let refclock_selected = selected.is_some_and(|s| {
        s.is_refclock()
            && if exact {
                s.name == name
            } else {
                s.name.starts_with(&name)
            }
    });
    let mut problems = Vec::new();
    if !synchronised {
        problems.push(format!(
            "not synchronised (leap status {:?}, stratum {})",
            tracking.leap_status, tracking.stratum
        ));
    }
    let offset = tracking.system_time_offset_secs.abs();
    if offset > cfg.max_offset_secs {
        problems.push(format!(
            "system time is {offset:.6} s off, more than the bound of {} s",
            cfg.max_offset_secs
        ));
    }
    if cfg.refclock && !refclock_selected {
        problems.push(format!(
            "the refclock {name} is configured but not the selected source (selected: {})",
            selected.map_or("none", |s| s.name.as_str())
        ));
    }
    Clock {
        synchronised,
        selected_source: selected.map(|s| s.name.clone()),
        refclock_configured: cfg.refclock,
        refclock_name: name,
        refclock_selected,
        max_offset_secs: cfg.max_offset_secs,
        problems,
        tracking,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real output of chronyd 4.3 (`chronyd -x`, a `refclock SOCK ... refid PHC0`
    // fed by the test, and `local stratum 3`).
    const TRACKING_REFCLOCK: &str = "50484330,PHC0,1,1795328572.509548065,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,0.000000001,0.000001922,1.0,Normal\n";
    const SOURCES_REFCLOCK: &str = "#,*,PHC0,0,0,37,1,0.000000000,0.000000000,0.000000020\n";
    const TRACKING_LOCAL: &str = "7F7F0101,,3,1795328333.073584558,0.000000000,0.000000000,0.000000000,0.000,0.000,0.000,0.000000000,0.000000000,0.0,Normal\n";
    const SOURCES_UNREACHABLE: &str =
        "#,?,PHC0,0,0,0,4294967295,0.000000000,0.000000000,0.000000000\n";
    const TRACKING_UNSYNC: &str = "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,-12.345,0.000,0.000,1.000000000,1.000000000,0.0,Not synchronised\n";

    fn cfg(refclock: bool) -> ChronyConfig {
        ChronyConfig {
            refclock,
            ..ChronyConfig::default()
        }
    }

    #[test]
    fn parses_real_tracking_and_sources() {
        let t = parse_tracking(TRACKING_REFCLOCK).unwrap();
        assert_eq!(t.reference_id, "50484330");
        assert_eq!(t.reference_name, "PHC0");
        assert_eq!(t.stratum, 1);
        assert_eq!(t.root_dispersion_secs, 0.000001922);
        assert_eq!(t.leap_status, "Normal");
        let s = parse_sources(SOURCES_REFCLOCK).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].selected() && s[0].is_refclock());
        assert_eq!(s[0].last_rx_secs, Some(1));
        assert_eq!(
            parse_sources(SOURCES_UNREACHABLE).unwrap()[0].last_rx_secs,
            None
        );
        assert!(parse_sources("").unwrap().is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_healthy_clock() {
        assert!(parse_tracking("").is_err());
        assert!(parse_tracking("506 Cannot talk to daemon").is_err());
        assert!(parse_tracking(&TRACKING_LOCAL.replace(",3,", ",x,")).is_err());
        assert!(parse_sources("^,*,a,b").is_err());
    }

    #[test]
    fn the_selected_phc_refclock_is_healthy() {
        let c = evaluate(
            &cfg(true),
            parse_tracking(TRACKING_REFCLOCK).unwrap(),
            &parse_sources(SOURCES_REFCLOCK).unwrap(),
        );
        assert!(c.synchronised && c.refclock_selected);
        assert_eq!(c.selected_source.as_deref(), Some("PHC0"));
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn a_configured_refclock_that_is_not_selected_is_a_problem() {
        let c = evaluate(
            &cfg(true),
            parse_tracking(TRACKING_LOCAL).unwrap(),
            &parse_sources(SOURCES_UNREACHABLE).unwrap(),
        );
        assert!(c.synchronised && !c.refclock_selected);
        assert_eq!(c.problems.len(), 1);
        assert!(c.problems[0].contains("not the selected source (selected: none)"));
        // Without the refclock wanted, the local reference is fine.
        assert!(
            evaluate(&cfg(false), parse_tracking(TRACKING_LOCAL).unwrap(), &[])
                .problems
                .is_empty()
        );
    }

    #[test]
    fn not_synchronised_is_a_problem() {
        let c = evaluate(&cfg(false), parse_tracking(TRACKING_UNSYNC).unwrap(), &[]);
        assert!(!c.synchronised);
        assert_eq!(c.problems.len(), 1);
    }

    #[test]
    fn offset_bound_is_checked_in_both_directions() {
        for (offset, bad) in [
            ("0.099000000", false),
            ("0.100000001", true),
            ("-0.150000000", true),
            ("-0.050000000", false),
        ] {
            let text = TRACKING_LOCAL.replacen(",0.000000000,", &format!(",{offset},"), 1);
            let t = parse_tracking(&text).unwrap();
            assert_eq!(t.system_time_offset_secs, offset.parse::<f64>().unwrap());
            let c = evaluate(&cfg(false), t, &[]);
            assert_eq!(!c.problems.is_empty(), bad, "{offset}: {:?}", c.problems);
        }
    }

    #[test]
    fn refclock_name_comes_from_refid_or_the_driver() {
        assert_eq!(refclock_name(&cfg(true)), ("PHC".to_string(), false));
        let mut c = cfg(true);
        c.refclock_line = "refclock SOCK /run/x.sock refid PHC0".into();
        assert_eq!(refclock_name(&c), ("PHC0".to_string(), true));
        // A selected server is not the refclock even if its name starts alike.
        let s = parse_sources("^,*,PHC.example.org,2,6,377,3,0.0,0.0,0.001\n").unwrap();
        assert!(
            !evaluate(&cfg(true), parse_tracking(TRACKING_LOCAL).unwrap(), &s).refclock_selected
        );
    }
}
