//! Argument conversions: sizes as ints or strings like `"8GiB"`, rates like `"10Gbit"`.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::errors::config_err;
use crate::memory::Backing;

/// Parses `"8GiB"`, `"512 MiB"`, `"4096"`, `"1.5G"` (binary units; `B` optional) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.replace('_', "").parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    let v = num * mult as f64;
    ((0.0..1.8e19).contains(&v) && v.fract() == 0.0).then_some(v as u64)
}

/// Parses a link rate: `"10Gbit"`, `"1.25GB/s"`, `"100Mbit"`, or a number of bytes per second.
pub fn parse_rate(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    for (suffix, mult) in [
        ("gbit", 1e9 / 8.0),
        ("mbit", 1e6 / 8.0),
        ("kbit", 1e3 / 8.0),
    ] {
        if let Some(n) = t
            .strip_suffix(suffix)
            .or_else(|| t.strip_suffix(&format!("{suffix}/s")))
        {
            let v = n.trim().parse::<f64>().ok()? * mult;
            return (v.is_finite() && v >= 0.0).then_some(v as u64);
        }
    }
    parse_size(t.trim_end_matches("/s"))
}

/// An int, or a string `parse` understands; `kind` and `hint` name both in the error.
fn int_or_str_arg(
    obj: &Bound<'_, PyAny>,
    what: &str,
    parse: fn(&str) -> Option<u64>,
    (kind, hint): (&str, &str),
) -> PyResult<u64> {
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?;
        return parse(s).ok_or_else(|| config_err(format!("{what}: cannot parse {kind} {s:?}")));
    }
    obj.extract::<u64>()
        .map_err(|_| config_err(format!("{what}: expected {hint}")))
}

/// A size argument: a non-negative int or a string with a unit.
pub fn size_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    int_or_str_arg(
        obj,
        what,
        parse_size,
        ("size", "a non-negative int or a size string"),
    )
}

/// An optional size argument; `default` when None.
pub fn opt_size_arg(obj: Option<&Bound<'_, PyAny>>, what: &str, default: u64) -> PyResult<u64> {
    obj.map_or(Ok(default), |o| size_arg(o, what))
}

/// A rate argument in bytes per second: an int or a string such as `"10Gbit"`.
pub fn rate_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    int_or_str_arg(
        obj,
        what,
        parse_rate,
        ("rate", "bytes per second or a rate string"),
    )
}

/// A backing name: `"anonymous"`, `"memfd"`, `"thp"` or `"hugetlb"`.
pub fn backing_arg(name: &str) -> PyResult<Backing> {
    Backing::parse(name).ok_or_else(|| {
        config_err(format!(
            "backing must be 'anonymous', 'memfd', 'thp' or 'hugetlb', not {name:?}"
        ))
    })
}

/// A name the core parses with `FromStr` (encoding, mode, discard policy), its error prefixed
/// by `what`.
pub fn name_arg<T: std::str::FromStr>(what: &str, name: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    name.parse::<T>()
        .map_err(|e| config_err(format!("{what}: {e}")))
}

/// Longest timeout a caller may give: a week. Longer ones (and infinity) are refused rather
/// than overflow a deadline (`Instant + Duration` panics past the clock's range).
pub const MAX_TIMEOUT_SECS: f64 = 7.0 * 86_400.0;

/// A timeout in seconds: finite, at least 0 and at most [`MAX_TIMEOUT_SECS`].
pub fn timeout_arg(secs: f64, what: &str) -> PyResult<Duration> {
    if !(0.0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(config_err(format!(
            "{what}: {secs} s is not a timeout: give seconds from 0 to {MAX_TIMEOUT_SECS} \
             (a week)"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| config_err(format!("{what}: {secs} s: {e}")))
}

/// An optional timeout: None waits without limit; otherwise as [`timeout_arg`].
pub fn opt_timeout_arg(secs: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    secs.map(|s| timeout_arg(s, what)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_size() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512 MiB"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("8 potatoes"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn test_parse_rate() {
        assert_eq!(parse_rate("10Gbit"), Some(1_250_000_000));
        assert_eq!(parse_rate("100Mbit/s"), Some(12_500_000));
        assert_eq!(parse_rate("1GiB/s"), Some(1 << 30));
        assert_eq!(parse_rate("fast"), None);
    }
}
