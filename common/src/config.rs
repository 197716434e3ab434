//! Configuration plumbing shared by the origin and the edge: human
//! durations ("2300ms", "3s", "12h"), and loading a TOML file with errors
//! that name the file, the line and the reason.
//!
//! Each binary declares its own settings; the layering rule is the same
//! everywhere: built-in defaults, then the TOML file, then `BATON_*`
//! environment variables, then command-line flags.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// A duration written for humans: a number with a unit (`ms`, `s`, `m`,
/// `h`, `d`), or a bare number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (examples: 2300ms, 3s, 1.5m, 12h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// `"1.5 GiB"` → `(1.5, "GiB")`: the leading number and the unit after
/// it, for the human-written quantities in settings (durations, sizes).
pub(crate) fn number_and_unit(input: &str) -> Result<(f64, &str), &'static str> {
    let trimmed = input.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| "not a number")?;
    Ok((value, unit.trim()))
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_string(),
            reason,
        };
        let (value, unit) = number_and_unit(input).map_err(err)?;
        let millis_per_unit = match unit {
            "" | "ms" => 1.0,
            "s" | "sec" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(err("unknown unit")),
        };
        let millis = value * millis_per_unit;
        if !millis.is_finite() || !(0.0..=1e15).contains(&millis) {
            return Err(err("out of range"));
        }
        Ok(HumanDuration(Duration::from_micros(
            (millis * 1000.0) as u64,
        )))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Millis(ms) => Ok(HumanDuration(Duration::from_millis(ms))),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0.as_millis() as u64)
    }
}

/// `top` over `bottom`: every field `top` sets wins, the rest comes from
/// `bottom`. One generic merge for every settings type that is declared
/// once as flags and TOML keys (all fields optional), so no setting is
/// written out again to combine the two.
pub fn overlay<T: serde::Serialize + DeserializeOwned>(
    top: &T,
    bottom: &T,
) -> Result<T, ConfigError> {
    let invalid = |error: serde_json::Error| ConfigError::Setting {
        name: "settings",
        reason: format!("cannot combine flags and file: {error}"),
    };
    let mut merged = serde_json::to_value(bottom).map_err(invalid)?;
    if let (serde_json::Value::Object(merged), serde_json::Value::Object(top)) =
        (&mut merged, serde_json::to_value(top).map_err(invalid)?)
    {
        for (key, value) in top {
            if !value.is_null() {
                merged.insert(key, value);
            }
        }
    }
    serde_json::from_value(merged).map_err(invalid)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}, line {line}, column {column}: {reason}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("invalid setting {name}: {reason}")]
    Setting { name: &'static str, reason: String },
}

/// Parse a TOML config file into `T` (which should deny unknown fields so a
/// typo is an error, not a silently ignored setting).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    parse_toml(&display, &text)
}

pub fn parse_toml<T: DeserializeOwned>(path: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((0, 0));
        ConfigError::Invalid {
            path: path.to_string(),
            line,
            column,
            reason: e.message().to_string(),
        }
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_durations() {
        let ms = |s: &str| s.parse::<HumanDuration>().unwrap().get().as_millis();
        assert_eq!(ms("2300ms"), 2300);
        assert_eq!(ms("2300"), 2300);
        assert_eq!(ms("3s"), 3000);
        assert_eq!(ms("1.5m"), 90_000);
        assert_eq!(ms("12h"), 43_200_000);
        assert!("12x".parse::<HumanDuration>().is_err());
        assert!("-1s".parse::<HumanDuration>().is_err());
        assert!("".parse::<HumanDuration>().is_err());
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        wait: Option<HumanDuration>,
        name: Option<String>,
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_toml::<Sample>("x.toml", "name = \"a\"\nwiat = \"3s\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x.toml, line 2"), "{text}");
        assert!(text.contains("wiat"), "{text}");
        let err = parse_toml::<Sample>("x.toml", "wait = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let ok: Sample = parse_toml("x.toml", "wait = 250\n").unwrap();
        assert_eq!(ok.wait, Some(HumanDuration(Duration::from_millis(250))));
    }
}
