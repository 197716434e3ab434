//! Human durations ("250ms", "1.5s", "3m", "1h") for scenario files and the
//! command line, so a schedule reads like the issue that asked for it.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a number and a unit (`ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn ms(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }

    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h` (a bare number is seconds).
pub fn parse(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration (e.g. 250ms, 2s, 1h)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => bail!("unknown unit {other:?} in duration {text:?} (ms, s, m, h)"),
    };
    if !value.is_finite() || value < 0.0 {
        bail!("duration {text:?} is negative or not finite");
    }
    Ok(Duration::from_secs_f64(value * scale))
}

impl std::str::FromStr for Dur {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Dur> {
        parse(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250ms").ok(), Some(Duration::from_millis(250)));
        assert_eq!(parse("1.5s").ok(), Some(Duration::from_millis(1500)));
        assert_eq!(parse("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse("1h").ok(), Some(Duration::from_secs(3600)));
        assert!(parse("3 weeks").is_err());
        assert!(parse("fast").is_err());
        assert_eq!(Dur::ms(1500).to_string(), "1500ms");
        assert_eq!(Dur::secs(3).to_string(), "3s");
    }
}
