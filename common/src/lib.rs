//! Baton's shared core.
//!
//! Everything the origin and the edge have in common lives here so that both
//! speak the same protocols with the same code: the media model, the sans-IO
//! RTMP and FLV codecs with their thin tokio glue, the stream hub that fans a
//! publisher out to players, the process lifecycle (signals, drain), the
//! configuration loader and telemetry.

pub use baton_proto::{amf0, flv, media};

pub mod clients;
pub mod config;
pub mod handover;
pub mod hub;
pub mod kick;
pub mod lifecycle;
pub mod memory;
pub mod rtmp;
pub mod sdnotify;
pub mod serve;
pub mod splice;
pub mod telemetry;
