//! TEMPORARY stand-in for `baton_common::rtmp::client` until it lands.
#![allow(dead_code)]
use baton_common::media::MediaFrame;

#[derive(Debug)]
pub struct ClientError(String);
impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ClientError {}
fn missing<T>() -> Result<T, ClientError> {
    Err(ClientError("RTMP client not available yet".into()))
}
pub struct RtmpPlayer;
impl RtmpPlayer {
    pub async fn connect(_url: &str) -> Result<Self, ClientError> {
        missing()
    }
    pub async fn next_frame(&mut self) -> Result<Option<MediaFrame>, ClientError> {
        missing()
    }
    pub fn bytes_received(&self) -> u64 {
        0
    }
}
pub struct RtmpPublisher;
impl RtmpPublisher {
    pub async fn connect(_url: &str) -> Result<Self, ClientError> {
        missing()
    }
    pub async fn send(&mut self, _f: &MediaFrame) -> Result<(), ClientError> {
        missing()
    }
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        missing()
    }
    pub async fn close(self) -> Result<(), ClientError> {
        missing()
    }
}
