//! The HTTP exchange of a callback: one POST on a fresh connection
//! (hyper 1's HTTP/1 client), the whole exchange bounded by the hook
//! timeout and the answer's body by [`MAX_ANSWER`]. What the answer means
//! is [`super::hooks::judge`]'s business.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::TcpStream;

/// The most of an answer's body read (SRS hooks answer `0` or a small
/// JSON object).
pub const MAX_ANSWER: usize = 64 * 1024;

/// A callback URL, checked when the settings are read: `http://` only
/// (hook services run next to the node), with a host.
#[derive(Clone, PartialEq, Eq)]
pub struct HookUrl {
    uri: Uri,
    host: String,
    port: u16,
}

impl HookUrl {
    pub fn as_str(&self) -> String {
        self.uri.to_string()
    }
}

impl fmt::Debug for HookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

impl fmt::Display for HookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

impl FromStr for HookUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri: Uri = text
            .trim()
            .parse()
            .map_err(|e| format!("invalid callback URL {text:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "callback URL {text:?}: only http:// is supported (run the hook service next to the node)"
            ));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("callback URL {text:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        Ok(HookUrl { uri, host, port })
    }
}

impl Serialize for HookUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.uri.to_string())
    }
}

impl<'de> Deserialize<'de> for HookUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// POST `body` (JSON) to `url`; the status and body of the answer, or
/// why there is none (connection refused, timeout, bad HTTP).
pub async fn post(url: &HookUrl, body: Bytes, timeout: Duration) -> Result<(u16, Bytes), String> {
    match tokio::time::timeout(timeout, exchange(url, body)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(url: &HookUrl, body: Bytes) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = url
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let host = match url.uri.port_u16() {
        Some(port) => format!("{}:{port}", url.uri.host().unwrap_or_default()),
        None => url.uri.host().unwrap_or_default().to_string(),
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("baton/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP request: {e}"))?;
        let status = response.status().as_u16();
        let answer = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, answer))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let url: HookUrl = "http://127.0.0.1:8085/api/v1/streams".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8085));
        let url: HookUrl = "http://hooks.local/x".parse().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("hooks.local", 80));
        assert!("https://a/x".parse::<HookUrl>().is_err());
        assert!("/x".parse::<HookUrl>().is_err());
        assert!("not a url".parse::<HookUrl>().is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_silent_server_are_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url: HookUrl = format!("http://{addr}/hook").parse().unwrap();
        // Accepts, never answers.
        let silent = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let error = post(&url, Bytes::from_static(b"{}"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(error.contains("no answer"), "{error}");
        silent.abort();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let url: HookUrl = format!("http://{addr}/hook").parse().unwrap();
        let error = post(&url, Bytes::from_static(b"{}"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(error.contains("connect"), "{error}");
    }
}
