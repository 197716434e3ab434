//! The HTTP API of every node on `--api`: versions, summaries, streams and
//! clients (shapes close to SRS's `/api/v1`, so SRS dashboards need little
//! change), kicking a client, health and readiness probes, and Prometheus
//! metrics.
//!
//! Documented in `docs/api.md`. Every error is a JSON body with a `code`
//! equal to the HTTP status, never a panic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clients::{ClientEntry, ClientRole, Transport};
use crate::handover::GenerationSummary;
use crate::hub::{SourceStats, StreamKey};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::accept::{accept_loop, ListenerKind};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use super::ServerContext;

pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>) {
    accept_loop("api", listener, ctx, ListenerKind::Api, handle_connection).await;
}

async fn handle_connection(stream: TcpStream, _peer: SocketAddr, ctx: Arc<ServerContext>) {
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // No Access-Control-Allow-Origin: a page in a browser may not read
    // (or, without a preflight answer, write) the API.
    response
}

fn json_response(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "code": status.as_u16(), "error": message }))
}

async fn handle(req: Request<Incoming>, ctx: &ServerContext) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let is_write = !matches!(method, Method::GET | Method::HEAD);
    let access = super::api_auth::decide(
        ctx.settings.api_token.as_ref(),
        ctx.settings.api.ip().is_loopback(),
        is_write,
        &path,
        req.headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    match access {
        super::api_auth::Access::Allowed => {}
        super::api_auth::Access::Unauthorized => {
            metrics::counter!("baton_api_refused_total", "reason" => "unauthorized").increment(1);
            tracing::warn!(%method, path = %req.uri().path(), "API request refused: no valid bearer token");
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this request needs Authorization: Bearer <api_token>",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        super::api_auth::Access::WritesDisabled => {
            metrics::counter!("baton_api_refused_total", "reason" => "writes_disabled")
                .increment(1);
            tracing::warn!(%method, path = %req.uri().path(), "API write refused: no api_token configured");
            return error(
                StatusCode::FORBIDDEN,
                "API writes are disabled: start the node with --api-token and send Authorization: Bearer <token>",
            );
        }
    }
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["healthz"]) => respond(StatusCode::OK, "text/plain", "ok\n"),
        (Method::GET, ["readyz"]) => {
            if ctx.shutdown.is_ready() {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            }
        }
        (Method::GET, ["metrics"]) => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            super::metrics::render_metrics(ctx),
        ),
        (Method::GET, ["api", "v1", "versions"]) => json_response(StatusCode::OK, versions(ctx)),
        (Method::GET, ["api", "v1", "summaries"]) => {
            json_response(StatusCode::OK, super::generations::summaries(ctx).await)
        }
        (Method::GET, ["api", "v1", "streams"]) => {
            // `?app=A&name=S`: that stream only (what an edge asks when it
            // looks for a stream's holder: an answer of one entry, not of
            // every stream the origin has).
            let query = req.uri().query();
            let wanted = super::query_param(query, "app")
                .zip(super::query_param(query, "name"))
                .map(|(app, name)| StreamKey::new(app, name));
            let streams: Vec<Value> = match wanted {
                Some(key) => ctx
                    .hub
                    .source(&key)
                    .map(|source| stream_json(&source.stats()))
                    .into_iter()
                    .collect(),
                None => ctx.hub.stats().iter().map(stream_json).collect(),
            };
            json_response(
                StatusCode::OK,
                json!({ "code": 0, "server": ctx.server_id(), "streams": streams }),
            )
        }
        (Method::GET, ["api", "v1", "streams", id]) => match id.parse::<u64>() {
            Err(_) => error(StatusCode::BAD_REQUEST, "stream id must be a number"),
            Ok(id) => match ctx.hub.source_by_id(id) {
                Some(source) => json_response(
                    StatusCode::OK,
                    json!({ "code": 0, "server": ctx.server_id(), "stream": stream_json(&source.stats()) }),
                ),
                None => error(StatusCode::NOT_FOUND, "no such stream"),
            },
        },
        (Method::GET, ["api", "v1", "upstreams"]) => match ctx.streams.upstreams_json() {
            Some(upstreams) => json_response(
                StatusCode::OK,
                json!({ "code": 0, "server": ctx.server_id(), "data": upstreams }),
            ),
            None => error(StatusCode::NOT_FOUND, "an origin has no upstreams"),
        },
        (Method::GET, ["api", "v1", "clients"]) => {
            let clients: Vec<Value> = ctx
                .clients
                .list()
                .iter()
                .map(|c| client_json(ctx, c))
                .collect();
            json_response(
                StatusCode::OK,
                json!({ "code": 0, "server": ctx.server_id(), "clients": clients }),
            )
        }
        (Method::GET | Method::DELETE, ["api", "v1", "clients", id]) => match id.parse::<u64>() {
            Err(_) => error(StatusCode::BAD_REQUEST, "client id must be a number"),
            Ok(id) => match (method, ctx.clients.get(id)) {
                (_, None) => error(StatusCode::NOT_FOUND, "no such client"),
                (Method::DELETE, Some(client)) => {
                    client.kick.kick(crate::kick::KICKED_THROUGH_THE_API);
                    tracing::info!(client = id, peer = %client.peer, "client kicked through the API");
                    json_response(StatusCode::OK, json!({ "code": 0 }))
                }
                (_, Some(client)) => json_response(
                    StatusCode::OK,
                    json!({ "code": 0, "server": ctx.server_id(), "client": client_json(ctx, &client) }),
                ),
            },
        },
        (_, ["healthz" | "readyz" | "metrics"])
        | (_, ["api", "v1", "versions" | "summaries" | "streams" | "clients" | "upstreams"])
        | (_, ["api", "v1", "streams", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (_, ["api", "v1", "clients", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md"),
    }
}

fn versions(ctx: &ServerContext) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    json!({
        "code": 0,
        "server": format!("baton-{}", ctx.role),
        "data": {
            "major": parts.next().unwrap_or(0),
            "minor": parts.next().unwrap_or(0),
            "revision": parts.next().unwrap_or(0),
            "version": version,
        }
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn stream_json(s: &SourceStats) -> Value {
    json!({
        "id": s.id,
        "name": s.key.stream,
        "vhost": "__defaultVhost__",
        "app": s.key.app,
        "url": format!("/{}/{}", s.key.app, s.key.stream),
        "created_ms": unix_ms(s.created_at),
        "live_ms": s.published_for.map_or(0, |d| d.as_millis() as u64),
        "clients": s.players + usize::from(s.publisher.is_some()),
        "players": s.players,
        "frames": s.frames_in,
        "recv_bytes": s.bytes_in,
        "send_bytes": s.bytes_out,
        "kbps": { "recv_30s": s.kbps_in, "recv_1s": s.kbps_in, "send_30s": s.kbps_out, "send_1s": s.kbps_out },
        "publish": {
            "active": s.publisher.is_some(),
            "cid": s.publisher.as_ref().map(|p| p.client_id),
            "peer": s.publisher.as_ref().map(|p| p.peer.to_string()),
        },
        "video": s.video_codec.map(|c| json!({ "codec": c.name() })),
        "audio": s.audio_codec.map(|c| json!({ "codec": c.name() })),
        "cached_frames": s.cached_frames,
        "parked_players": s.parked_players,
    })
}

pub fn client_json(ctx: &ServerContext, c: &ClientEntry) -> Value {
    let role = c.role();
    let kind = match (c.transport, role) {
        (Transport::Rtmp, ClientRole::Publisher) => "rtmp-publish",
        (Transport::Rtmp, ClientRole::Player) => "rtmp-play",
        (Transport::HttpFlv, ClientRole::Player) => "flv-play",
        (_, _) => "pending",
    };
    let stream = c.stream();
    let stream_id = stream
        .as_ref()
        .and_then(|k| ctx.hub.source(k))
        .map(|s| s.id);
    json!({
        "id": c.id,
        "vhost": "__defaultVhost__",
        "stream": stream_id,
        "url": stream.as_ref().map(|k| format!("/{}/{}", k.app, k.stream)),
        "ip": c.peer.ip().to_string(),
        "peer": c.peer.to_string(),
        "type": kind,
        "role": role.as_str(),
        "transport": c.transport.as_str(),
        "publish": role == ClientRole::Publisher,
        "alive": c.started.elapsed().as_secs_f64(),
        "connected_ms": unix_ms(c.connected_at),
        "send_bytes": c.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        "recv_bytes": c.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
        "generation": ctx.generation,
    })
}

/// This process's own summary (without older generations).
pub fn local_summary(ctx: &ServerContext) -> GenerationSummary {
    let counts = ctx.clients.role_counts();
    let proc = crate::telemetry::process_stats();
    GenerationSummary {
        generation: ctx.generation,
        pid: std::process::id(),
        state: if ctx.shutdown.is_draining() {
            "draining"
        } else {
            "serving"
        }
        .to_string(),
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        clients: counts.total(),
        publishers: counts.publishers,
        players: counts.players,
        streams: ctx.hub.source_count() as u64,
        bytes_in: crate::clients::total_bytes_in(),
        bytes_out: crate::clients::total_bytes_out(),
        mem_kbyte: proc.rss_kb,
        cpu_seconds: proc.cpu_seconds,
    }
}
