//! Sizes written for humans in settings: `512MiB`, `1GiB`, `64MB`, `4096`
//! (bytes), in a TOML file as a string or a number of bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid size {input:?}: {reason} (examples: 512MiB, 1GiB, 64MB, 4096)")]
pub struct ByteSizeError {
    input: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ByteSizeError {
            input: input.to_string(),
            reason,
        };
        let (value, unit) = crate::config::number_and_unit(input).map_err(err)?;
        let multiplier: f64 = match unit {
            "" | "B" => 1.0,
            "k" | "kB" | "KB" => 1e3,
            "KiB" | "K" => 1024.0,
            "MB" => 1e6,
            "MiB" | "M" => 1024.0 * 1024.0,
            "GB" => 1e9,
            "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
            "TB" => 1e12,
            "TiB" | "T" => 1024.0f64.powi(4),
            _ => return Err(err("unknown unit")),
        };
        let bytes = value * multiplier;
        if !bytes.is_finite() || !(0.0..=1.8e19).contains(&bytes) {
            return Err(err("out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        if self.0 >= MIB && self.0.is_multiple_of(MIB) {
            write!(f, "{}MiB", self.0 / MIB)
        } else {
            write!(f, "{}B", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let mib = 1024 * 1024;
        assert_eq!("512MiB".parse(), Ok(ByteSize(512 * mib)));
        assert_eq!("1GiB".parse(), Ok(ByteSize(1024 * mib)));
        assert_eq!("1.5 GiB".parse(), Ok(ByteSize(1536 * mib)));
        assert_eq!("64MB".parse(), Ok(ByteSize(64_000_000)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("-1MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(512 * mib).to_string(), "512MiB");
        let v: ByteSize = serde_json::from_str("\"2MiB\"").unwrap();
        assert_eq!(v, ByteSize(2 * mib));
    }
}
