//! Publish and play authorization end to end: real origins and edges,
//! signed URLs (`?token=...&expires=...`), SRS-style HTTP callbacks
//! answered by a small hyper server inside the test, the RTMP client and
//! the raw HTTP-FLV player, and ffmpeg publishing to a signed URL.
//!
//! What must hold: a refused client gets `NetStream.{Publish,Play}.Unauthorized`
//! (HTTP 401/403) and nothing else changes (an existing publisher of the
//! name keeps publishing, its players keep receiving every frame); good
//! credentials work; callbacks see SRS's fields; an edge refuses bad
//! tokens itself and passes good ones on to the origin.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_common::media::MediaFrame;
use baton_common::rtmp::client::{ClientError, RtmpPlayer, RtmpPublisher};
use baton_common::serve::auth::token::{signed_query, Action};
use baton_tests::check::assert_playback;
use baton_tests::play::{publisher, read_until_index, rtmp_player, send_all, send_paced};
use baton_tests::{eventually, http, within, FlvPlayer, Node, Synth};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

const APP: &str = "live";
const SECRET: &str = "test-secret-0123456789abcdef";
const READ_LIMIT: Duration = Duration::from_secs(20);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `?token=...&expires=...` for `action` on `live/{stream}`, valid `ttl` s
/// (negative: already expired).
fn token(action: Action, stream: &str, ttl: i64) -> String {
    let expires = now().saturating_add_signed(ttl);
    signed_query(SECRET.as_bytes(), action, APP, stream, expires)
}

fn last_index(frames: &[MediaFrame]) -> u32 {
    frames
        .iter()
        .rev()
        .find_map(baton_tests::frame_index)
        .expect("some indexed frame")
}

/// The error status code of a refused publish.
async fn refused_publish(url: &str) -> String {
    match within(
        Duration::from_secs(12),
        "refused publish",
        RtmpPublisher::connect(url),
    )
    .await
    {
        Err(ClientError::Status { code, description }) => {
            assert!(!description.is_empty(), "a readable description");
            code
        }
        Err(other) => panic!("publish {url}: expected an error status, got {other}"),
        Ok(_) => panic!("publish {url} was accepted"),
    }
}

/// The error status code of a refused play.
async fn refused_play(url: &str) -> String {
    match within(
        Duration::from_secs(12),
        "refused play",
        RtmpPlayer::connect(url),
    )
    .await
    {
        Err(ClientError::Status { code, .. }) => code,
        Err(other) => panic!("play {url}: expected an error status, got {other}"),
        Ok(_) => panic!("play {url} was accepted"),
    }
}

async fn flv_status(url: &str) -> u16 {
    within(
        Duration::from_secs(12),
        "FLV request",
        FlvPlayer::connect(url),
    )
    .await
    .expect("HTTP answer")
    .status
}

async fn metrics_text(node: &Node) -> String {
    http::get(&node.api_url("/metrics"))
        .await
        .expect("metrics")
        .text()
}

fn counter(metrics: &str, action: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("baton_auth_refusals_total{")
                && l.contains(&format!("action=\"{action}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// `baton-origin sign ...` (the operators' way to mint a token).
fn sign_with_binary(action: &str, stream: &str) -> String {
    let out = std::process::Command::new(baton_tests::Role::Origin.binary())
        .args(["sign", "--action", action, "--app", APP, "--stream", stream])
        .args(["--ttl", "10m"])
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .output()
        .expect("running baton-origin sign");
    assert!(out.status.success(), "sign failed: {out:?}");
    let query = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(
        query.starts_with("token=") && query.contains("&expires="),
        "{query}"
    );
    query
}

/// 1. Signed URLs on an origin: bad, expired, missing and wrong-action
///    tokens are refused with NetStream.Publish.Unauthorized while the
///    stream's publisher keeps publishing and its players keep every
///    frame; play tokens over RTMP and HTTP-FLV (401 without, 403 bad).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_refuse_bad_tokens_without_touching_the_publisher() {
    let origin = Node::builder()
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .args(["--auth-token-required", "all"])
        .start()
        .await;
    let base = origin.rtmp_url(APP, "cam");
    let good_publish = format!("{base}?{}", sign_with_binary("publish", "cam"));
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut first = publisher(&good_publish).await;
    let mut sent = synth.gop();
    send_all(&mut first, &headers).await.expect("headers");
    send_all(&mut first, &sent).await.expect("first GOP");

    let play_token = token(Action::Play, "cam", 600);
    let mut player = rtmp_player(&format!("{base}?{play_token}")).await;
    let flv_url = origin.flv_url(APP, "cam");
    let mut flv = within(
        Duration::from_secs(12),
        "FLV play",
        FlvPlayer::connect(&format!("{flv_url}?{play_token}")),
    )
    .await
    .expect("FLV play with a good token");
    assert_eq!(flv.status, 200);

    // Refused publishes of the same name.
    let unauthorized = "NetStream.Publish.Unauthorized";
    let bad = token(Action::Publish, "cam", 600).replace("token=", "token=00");
    let mut forged = token(Action::Publish, "cam", 600);
    forged.replace_range(6..8, if &forged[6..8] == "ff" { "00" } else { "ff" });
    let expired = token(Action::Publish, "cam", -5);
    let other_stream = token(Action::Publish, "other", 600);
    for (what, query) in [
        ("malformed", bad.as_str()),
        ("forged", forged.as_str()),
        ("expired", expired.as_str()),
        ("for another stream", other_stream.as_str()),
        ("a play token", play_token.as_str()),
        ("none", "x=1"),
    ] {
        let code = refused_publish(&format!("{base}?{query}")).await;
        assert_eq!(code, unauthorized, "publish with a {what} token");
    }
    // Refused plays.
    let bad_play = token(Action::Play, "cam", -1);
    assert_eq!(
        refused_play(&format!("{base}?{bad_play}")).await,
        "NetStream.Play.Unauthorized"
    );
    assert_eq!(refused_play(&base).await, "NetStream.Play.Unauthorized");
    assert_eq!(flv_status(&format!("{flv_url}?{bad_play}")).await, 403);
    assert_eq!(flv_status(&flv_url).await, 401);

    // The first publisher and its players carried on.
    let more = synth.gops(2);
    let last = last_index(&more);
    let (published, rtmp_frames, flv_frames) = tokio::join!(
        send_paced(&mut first, &more, Duration::from_millis(2)),
        read_until_index(&mut player, last, READ_LIMIT),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    published.expect("the publisher keeps publishing after the refused ones");
    sent.extend(more);
    assert_playback(
        "RTMP player",
        &rtmp_frames.expect("RTMP frames"),
        &headers,
        &sent,
    );
    assert_playback(
        "FLV player",
        &flv_frames.expect("FLV frames"),
        &headers,
        &sent,
    );
    let stream = origin.stream(APP, "cam").await.expect("stream listed");
    assert_eq!(stream["publish"]["active"], true);
    assert!(
        origin.stream(APP, "other").await.is_none(),
        "no source made"
    );

    // Logged with the reason and counted by reason.
    let metrics = metrics_text(&origin).await;
    assert_eq!(
        counter(&metrics, "publish", "token_expired"),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "publish", "token_invalid"),
        3,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "publish", "token_malformed"),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "publish", "token_missing"),
        1,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "play", "token_expired"), 2, "{metrics}");
    assert_eq!(counter(&metrics, "play", "token_missing"), 2, "{metrics}");
    let log = origin.log();
    assert!(
        log.contains("publish refused: not authorized") && log.contains("token_expired"),
        "refusals are logged with their reason:\n{}",
        origin.log_tail(40)
    );
}

/// How the test's callback server answers, by stream name prefix.
fn answer_for(stream: &str) -> (u16, &'static str, Duration) {
    if stream.starts_with("deny") {
        (200, "1", Duration::ZERO)
    } else if stream.starts_with("slow") {
        (200, "0", Duration::from_secs(5))
    } else if stream.starts_with("json") {
        (200, r#"{"code":0,"data":null}"#, Duration::ZERO)
    } else if stream.starts_with("down") {
        (500, "0", Duration::ZERO)
    } else {
        (200, "0", Duration::ZERO)
    }
}

/// A callback server: records every JSON body POSTed to it and answers
/// by [`answer_for`].
#[derive(Clone, Default)]
struct Hooks {
    seen: Arc<Mutex<VecDeque<Value>>>,
}

impl Hooks {
    async fn start() -> (Hooks, SocketAddr) {
        let hooks = Hooks::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hooks");
        let addr = listener.local_addr().expect("addr");
        let server = hooks.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        (hooks, addr)
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let stream = json["stream"].as_str().unwrap_or_default().to_string();
        self.seen.lock().expect("lock").push_back(json);
        let (status, text, delay) = answer_for(&stream);
        tokio::time::sleep(delay).await;
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        response
    }

    fn all(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").iter().cloned().collect()
    }

    /// The first `action` body for `stream` whose param contains `param`.
    fn find(&self, action: &str, stream: &str, param: &str) -> Option<Value> {
        self.all().into_iter().find(|v| {
            v["action"] == action
                && v["stream"] == stream
                && v["param"].as_str().is_some_and(|p| p.contains(param))
        })
    }

    async fn wait_param(&self, action: &str, stream: &str, param: &str) -> Value {
        eventually(Duration::from_secs(10), || async {
            self.find(action, stream, param)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no {action} for {stream} with {param:?}; seen: {:?}",
                self.all()
            )
        })
    }

    async fn wait(&self, action: &str, stream: &str) -> Value {
        self.wait_param(action, stream, "").await
    }
}

fn hook_args(addr: SocketAddr) -> Vec<String> {
    let url = format!("http://{addr}/api/v1/hooks");
    ["--on-publish", "--on-unpublish", "--on-play", "--on-stop"]
        .iter()
        .flat_map(|flag| [flag.to_string(), url.clone()])
        .chain(["--hook-timeout".into(), "700ms".into()])
        .collect()
}

/// 2. Callbacks: `0` and `{"code":0}` allow, a non-zero code, a 500 and a
///    timeout refuse (RTMP status, HTTP 403), the body carries SRS's
///    fields, and on_unpublish/on_stop follow the end of a session;
///    `hook_failure = allow` lets a timed-out callback through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_decide_publish_and_play() {
    let (hooks, addr) = Hooks::start().await;
    let origin = Node::builder().args(hook_args(addr)).start().await;

    // Allowed: `0`; the body has the documented fields.
    let url = format!("{}?token=abc&x=1", origin.rtmp_url(APP, "cam"));
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let asked = Instant::now();
    let mut first = publisher(&url).await;
    println!(
        "publish with an on_publish callback answering 0: accepted in {:?}",
        asked.elapsed()
    );
    let body = hooks.wait("on_publish", "cam").await;
    assert_eq!(body["app"], APP);
    assert_eq!(body["param"], "?token=abc&x=1");
    assert_eq!(body["vhost"], "__defaultVhost__");
    assert_eq!(body["ip"], "127.0.0.1");
    assert!(
        body["client_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert!(
        body["tcUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("rtmp://")),
        "{body}"
    );
    assert!(
        body["server_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("baton-origin")),
        "{body}"
    );
    let mut sent = synth.gop();
    send_all(&mut first, &headers).await.expect("headers");
    send_all(&mut first, &sent).await.expect("GOP");
    let mut player = rtmp_player(&format!("{}?p=1", origin.rtmp_url(APP, "cam"))).await;
    assert_eq!(hooks.wait("on_play", "cam").await["param"], "?p=1");

    // Refused: a non-zero code, a 500, a timeout; RTMP and HTTP-FLV.
    let unauthorized = "NetStream.Publish.Unauthorized";
    assert_eq!(
        refused_publish(&origin.rtmp_url(APP, "deny1")).await,
        unauthorized
    );
    assert_eq!(
        refused_publish(&origin.rtmp_url(APP, "down1")).await,
        unauthorized
    );
    let asked = Instant::now();
    assert_eq!(
        refused_publish(&origin.rtmp_url(APP, "slow1")).await,
        unauthorized
    );
    let waited = asked.elapsed();
    println!("a silent callback (hook_timeout 700ms) refused the publish after {waited:?}");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "a silent callback refuses after hook_timeout (700ms), took {waited:?}"
    );
    assert_eq!(
        refused_play(&origin.rtmp_url(APP, "deny2")).await,
        "NetStream.Play.Unauthorized"
    );
    assert_eq!(flv_status(&origin.flv_url(APP, "deny3")).await, 403);
    for stream in ["deny1", "down1", "slow1", "deny2", "deny3"] {
        assert!(
            origin.stream(APP, stream).await.is_none(),
            "{stream}: no source"
        );
    }

    // `{"code":0}` allows, over HTTP-FLV too.
    let mut json_publisher = publisher(&origin.rtmp_url(APP, "json1")).await;
    send_all(&mut json_publisher, &synth.headers())
        .await
        .expect("headers");
    let mut flv = within(
        Duration::from_secs(12),
        "FLV play",
        FlvPlayer::connect(&format!("{}?t=9", origin.flv_url(APP, "cam"))),
    )
    .await
    .expect("FLV play");
    assert_eq!(flv.status, 200);
    let flv_body = hooks.wait_param("on_play", "cam", "t=9").await;
    assert!(
        flv_body["tcUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://")),
        "{flv_body}"
    );

    // The publisher and its players were not disturbed; then end notices.
    let more = synth.gops(1);
    let last = last_index(&more);
    let (published, frames, flv_frames) = tokio::join!(
        send_paced(&mut first, &more, Duration::from_millis(2)),
        read_until_index(&mut player, last, READ_LIMIT),
        read_until_index(&mut flv, last, READ_LIMIT),
    );
    published.expect("publishing");
    frames.expect("RTMP player frames");
    flv_frames.expect("FLV player frames");
    sent.extend(more);
    drop(player);
    first.close().await.expect("close");
    let stop = hooks.wait("on_stop", "cam").await;
    assert_eq!(stop["app"], APP);
    let unpublish = hooks.wait("on_unpublish", "cam").await;
    assert_eq!(unpublish["param"], "?token=abc&x=1");
    let metrics = metrics_text(&origin).await;
    assert_eq!(counter(&metrics, "publish", "hook_refused"), 1, "{metrics}");
    assert_eq!(counter(&metrics, "publish", "hook_failed"), 2, "{metrics}");
    assert_eq!(counter(&metrics, "play", "hook_refused"), 2, "{metrics}");

    // Fail open when told to.
    let lenient = Node::builder()
        .args(hook_args(addr))
        .args(["--hook-failure", "allow"])
        .start()
        .await;
    let _slow = publisher(&lenient.rtmp_url(APP, "slow2")).await;
    assert_eq!(
        refused_publish(&lenient.rtmp_url(APP, "deny4")).await,
        unauthorized,
        "an explicit refusal still refuses"
    );
}

/// 3. Through an edge with the same token settings: the edge refuses a bad
///    token itself (the origin never hears of it), and a good one reaches
///    the origin, whose callback sees the client's param (publish via the
///    forward, play via the pull).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_checks_tokens_and_passes_them_to_the_origin() {
    let (hooks, addr) = Hooks::start().await;
    let tokens = ["--auth-token-required", "all"];
    let origin = Node::builder()
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .args(tokens)
        .args(hook_args(addr))
        .start()
        .await;
    let edge = Node::edge_builder()
        .origin(&origin)
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .args(tokens)
        .start()
        .await;
    let base = edge.rtmp_url(APP, "cam");

    // Refused by the edge itself.
    let bad = token(Action::Publish, "cam", -10);
    assert_eq!(
        refused_publish(&format!("{base}?{bad}")).await,
        "NetStream.Publish.Unauthorized"
    );
    let metrics = metrics_text(&edge).await;
    assert_eq!(
        counter(&metrics, "publish", "token_expired"),
        1,
        "{metrics}"
    );

    // A good token reaches the origin with the client's query.
    let good = token(Action::Publish, "cam", 600);
    let mut synth = Synth::standard();
    let headers = synth.headers();
    let mut first = publisher(&format!("{base}?{good}&who=encoder")).await;
    send_all(&mut first, &headers).await.expect("headers");
    let mut sent = synth.gop();
    send_all(&mut first, &sent).await.expect("GOP");
    let on_publish = hooks.wait("on_publish", "cam").await;
    let param = on_publish["param"].as_str().unwrap_or_default();
    assert!(
        param.starts_with('?') && param.contains(&good) && param.contains("who=encoder"),
        "the origin's callback sees the client's param: {on_publish}"
    );
    assert!(
        hooks.find("on_publish", "cam", &bad).is_none(),
        "the refused token never reached the origin: {:?}",
        hooks.all()
    );

    // Play through another edge (the publisher's edge serves its own
    // players without a pull): bad refused by that edge, good pulled with
    // its query.
    let edge = Node::edge_builder()
        .origin(&origin)
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .args(tokens)
        .start()
        .await;
    let base = edge.rtmp_url(APP, "cam");
    let bad_play = token(Action::Play, "cam", 600).replace("token=", "token=1");
    assert_eq!(
        refused_play(&format!("{base}?{bad_play}")).await,
        "NetStream.Play.Unauthorized"
    );
    assert_eq!(
        flv_status(&format!("{}?{bad_play}", edge.flv_url(APP, "cam"))).await,
        403
    );
    let good_play = token(Action::Play, "cam", 600);
    let mut player = rtmp_player(&format!("{base}?{good_play}")).await;
    let on_play = hooks.wait_param("on_play", "cam", &good_play).await;
    assert!(
        on_play["param"]
            .as_str()
            .is_some_and(|p| p.contains("baton_relay=1")),
        "the origin sees the edge's pull: {on_play}"
    );
    let more = synth.gops(2);
    let last = last_index(&more);
    let (published, frames) = tokio::join!(
        send_paced(&mut first, &more, Duration::from_millis(5)),
        read_until_index(&mut player, last, READ_LIMIT),
    );
    published.expect("publishing through the edge");
    sent.extend(more);
    let frames = frames.expect("frames through the edge");
    assert!(
        frames
            .iter()
            .any(|f| baton_tests::frame_index(f) == Some(last)),
        "the edge player got the stream"
    );
    let origin_metrics = metrics_text(&origin).await;
    assert!(
        !origin_metrics.contains("baton_auth_refusals_total"),
        "the origin refused nothing: {origin_metrics}"
    );

    // Accepted by the edge, refused by the origin's callback: the edge
    // disconnects its publisher, and that connection's line says why.
    let deny = token(Action::Publish, "deny4", 600);
    let mut refused = publisher(&format!("{}?{deny}", edge.rtmp_url(APP, "deny4"))).await;
    let _ = send_all(&mut refused, &headers).await;
    let said = eventually(Duration::from_secs(10), || async {
        edge.log()
            .contains("reason=\"the origin refused the forwarded publish: not authorized\"")
            .then_some(())
    })
    .await;
    assert!(
        said.is_some(),
        "the refused publisher's disconnect line:\n{}",
        edge.log_tail(30)
    );
    assert!(
        !edge.log().contains("kicked through the API"),
        "{}",
        edge.log_tail(30)
    );
}

/// 4. ffmpeg publishing to a signed URL: accepted with a good token (the
///    stream plays), refused with a bad one (ffmpeg fails, no source).
#[cfg(feature = "interop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_to_a_signed_url() {
    use baton_tests::ffmpeg::{self, publish_loop, stream_codecs};
    let origin = Node::builder()
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .start()
        .await;
    let fixture = ffmpeg::fixture_flv().await;
    let good = format!(
        "{}?{}",
        origin.rtmp_url(APP, "ff"),
        token(Action::Publish, "ff", 600)
    );
    let _publisher = publish_loop(&fixture, &good, origin.dir().join("ffmpeg-good.log"));
    // An unpublished HTTP-FLV stream is a 404 at once: probe once it is up.
    let published = baton_tests::eventually(Duration::from_secs(20), || async {
        origin.publishes(APP, "ff").await.then_some(())
    })
    .await;
    assert!(published.is_some(), "the signed publish was accepted");
    let codecs = stream_codecs(&origin.flv_url(APP, "ff"), Duration::from_secs(20))
        .await
        .expect("the signed publish plays");
    assert!(codecs.iter().any(|(kind, _)| kind == "video"), "{codecs:?}");

    let bad = format!(
        "{}?{}",
        origin.rtmp_url(APP, "ff2"),
        token(Action::Publish, "ff2", -1)
    );
    let fixture_path = fixture.to_string_lossy().to_string();
    let out = ffmpeg::ffmpeg(
        &[
            "-re",
            "-i",
            &fixture_path,
            "-c",
            "copy",
            "-t",
            "3",
            "-f",
            "flv",
            &bad,
        ],
        Duration::from_secs(20),
    )
    .await
    .expect("ffmpeg ran");
    assert!(
        !out.success(),
        "ffmpeg with an expired token must fail: {}",
        out.stderr
    );
    assert!(
        origin.stream(APP, "ff2").await.is_none(),
        "no source for the refused publish"
    );
    assert!(origin
        .stream(APP, "ff")
        .await
        .is_some_and(|s| s["publish"]["active"] == true));
}

/// 5. A publish through an edge outlives its token: when its origin dies
///    after the token expired, the edge (holding the secret) re-signs the
///    genuine token for the next origin, which accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_failing_over_after_the_token_expired_re_signs_it() {
    let mut origins = Vec::new();
    for _ in 0..2 {
        origins.push(
            Node::builder()
                .env("BATON_AUTH_TOKEN_SECRET", SECRET)
                .start()
                .await,
        );
    }
    let edge = Node::edge_builder()
        .origin(&origins[0])
        .origin(&origins[1])
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .start()
        .await;
    let expires_in = 2;
    let url = format!(
        "{}?{}",
        edge.rtmp_url(APP, "resign"),
        token(Action::Publish, "resign", expires_in)
    );
    let mut synth = Synth::standard();
    let mut publisher = publisher(&url).await;
    send_all(&mut publisher, &synth.headers())
        .await
        .expect("headers");
    let started = Instant::now();
    let holder = loop {
        send_all(&mut publisher, &synth.frames(3))
            .await
            .expect("publishing");
        let mut found = None;
        for (i, origin) in origins.iter().enumerate() {
            if origin
                .stream(APP, "resign")
                .await
                .is_some_and(|s| s["publish"]["active"] == true)
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never forwarded"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    // Keep publishing until the token has expired, then kill its origin.
    while started.elapsed() < Duration::from_secs(expires_in as u64 + 2) {
        send_all(&mut publisher, &synth.frames(3))
            .await
            .expect("publishing");
        tokio::time::sleep(Duration::from_millis(90)).await;
    }
    origins[holder].signal(baton_tests::Signal::SIGKILL);
    let other = &origins[1 - holder];
    let moved = Instant::now();
    let accepted = loop {
        send_all(&mut publisher, &synth.frames(3))
            .await
            .expect("the publisher stays connected to the edge");
        if other
            .stream(APP, "resign")
            .await
            .is_some_and(|s| s["publish"]["active"] == true)
        {
            break true;
        }
        if moved.elapsed() > Duration::from_secs(10) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(90)).await;
    };
    assert!(
        accepted,
        "the surviving origin never got the publish:\n--- edge ---\n{}\n--- origin ---\n{}",
        edge.log_tail(30),
        other.log_tail(30)
    );
    println!(
        "forward moved to the other origin {:?} after the kill, token expired {}s before",
        moved.elapsed(),
        started
            .elapsed()
            .as_secs()
            .saturating_sub(expires_in as u64)
    );
    let metrics = metrics_text(other).await;
    assert!(
        !metrics.contains("baton_auth_refusals_total"),
        "the surviving origin refused nothing: {metrics}"
    );
}

/// 6. An edge whose settings let a publisher in that the origin refuses
///    (misconfigured: different secrets) disconnects that publisher
///    rather than keeping a publish that reaches no origin; the origin is
///    not marked failed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_origin_refuses_is_disconnected_at_the_edge() {
    let origin = Node::builder()
        .env("BATON_AUTH_TOKEN_SECRET", "another-secret-0123456789")
        .start()
        .await;
    let edge = Node::edge_builder()
        .origin(&origin)
        .env("BATON_AUTH_TOKEN_SECRET", SECRET)
        .start()
        .await;
    let url = format!(
        "{}?{}",
        edge.rtmp_url(APP, "mismatch"),
        token(Action::Publish, "mismatch", 600)
    );
    let mut synth = Synth::standard();
    let mut publisher = publisher(&url).await;
    let started = Instant::now();
    let mut frames = synth.headers();
    let ended = loop {
        if send_all(&mut publisher, &frames).await.is_err() {
            break true;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
        frames = synth.frames(3);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        ended,
        "the edge kept a publish no origin accepts:\n{}",
        edge.log_tail(30)
    );
    let metrics = metrics_text(&origin).await;
    assert_eq!(
        counter(&metrics, "publish", "token_invalid"),
        1,
        "{metrics}"
    );
    let edge_metrics = metrics_text(&edge).await;
    assert!(
        edge_metrics.contains("baton_edge_upstream_unauthorized_total")
            && !edge_metrics.contains("baton_edge_upstream_failures_total"),
        "counted as a refusal, not an origin failure: {edge_metrics}"
    );
}
