//! The viewer page (`GET /` on the HTTP-FLV listener) of a real origin:
//! it lists the streams being published, escaped, with their play URLs,
//! and loads mpegts.js from the configured `player_js_url`. That a browser
//! actually plays from it is `tests/browser/run.sh` (headless Chromium).

use std::time::Duration;

use baton_common::rtmp::client::{ClientError, RtmpPublisher};
use baton_tests::http;
use baton_tests::play::{publisher, send_all};
use baton_tests::synth::{Synth, SynthConfig};
use baton_tests::{eventually, Origin};

const PLAYER_JS: &str = "http://127.0.0.1:9/vendor/mpegts.js?v=1.8&x=\"y";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_page_lists_published_streams_and_loads_the_configured_player() {
    let origin = Origin::start(&["--player-js-url", PLAYER_JS]).await;
    let root = format!("http://{}/", origin.http_addr());

    let empty = http::get(&root).await.expect("GET /");
    assert_eq!(empty.status, 200, "{}", empty.text());
    assert_eq!(
        empty.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(empty.text().contains("No live streams"), "{}", empty.text());

    // A stream name a publisher chose to break out of the HTML is refused
    // at publish (serve::names); the page's own escaping is unit-tested in
    // serve/viewer.rs.
    let hostile = "x\"><img src=y onerror=alert(1)>";
    match RtmpPublisher::connect(&origin.rtmp_url("live", hostile)).await {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, "NetStream.Publish.BadName"),
        Err(other) => panic!("hostile name: expected BadName, got {other}"),
        Ok(_) => panic!("a hostile stream name was accepted"),
    }
    let mut demo = publisher(&origin.rtmp_url("live", "demo")).await;
    let mut synth = Synth::new(SynthConfig::default());
    let mut frames = synth.headers();
    frames.extend(synth.gop());
    send_all(&mut demo, &frames).await.expect("publishing demo");

    let page = eventually(Duration::from_secs(10), || async {
        let page = http::get(&root).await.ok()?;
        page.text().contains("live/demo").then_some(page)
    })
    .await
    .expect("GET / lists the published stream");
    let html = page.text();
    assert_eq!(page.status, 200);
    assert_eq!(page.header("access-control-allow-origin"), None);
    assert!(
        html.contains("data-stream=\"live/demo\" data-url=\"/live/demo.flv\""),
        "{html}"
    );
    assert!(
        html.contains(
            "<script src=\"http://127.0.0.1:9/vendor/mpegts.js?v=1.8&amp;x=&quot;y\"></script>"
        ),
        "the page does not load the configured player_js_url: {html}"
    );
    assert!(
        !html.contains("<img") && !html.contains("onerror"),
        "a stream name became markup: {html}"
    );
    assert_eq!(html.matches("<script").count(), 2, "{html}");
    assert!(html.contains("mpegts.createPlayer") && html.contains("window.baton"));

    let head = http::head(&root).await.expect("HEAD /");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // The listed play URL plays.
    let flv = http::head(&origin.flv_url("live", "demo"))
        .await
        .expect("HEAD demo.flv");
    assert_eq!(flv.status, 200);

    // Other paths are still 404s.
    let other = http::get(&format!("http://{}/index.html", origin.http_addr()))
        .await
        .expect("GET /index.html");
    assert_eq!(other.status, 404);
    drop(demo);
}
