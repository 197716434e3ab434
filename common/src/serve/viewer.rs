//! The viewer page: `GET /` on the HTTP-FLV listener lists this node's live
//! streams and plays them in the browser with mpegts.js.
//!
//! Why it exists: most HTTP-FLV viewers watch in a browser, and the
//! continuity guarantees (one timeline across a publisher's reconnect, an
//! edge's failover) only count if a browser player keeps playing through
//! them. This page is the smallest real browser viewer of a node: operators
//! check a stream by opening the node's address, and the browser test
//! (`tests/browser/`) drives it in headless Chromium.
//!
//! The page is self-contained apart from mpegts.js, which it loads from
//! `player_js_url` (a CDN by default; serve a copy where viewers cannot
//! reach it). Stream names are publisher-controlled: they only ever go into
//! HTML text and attribute values, escaped; the one inline script is a
//! constant that reads them from `data-*` attributes, so no stream name is
//! ever parsed as script.

use crate::hub::StreamKey;

/// HTML-escape `text` for element content and double- or single-quoted
/// attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '`' => out.push_str("&#96;"),
            c => out.push(c),
        }
    }
    out
}

/// The page listing `streams` (in this order), loading mpegts.js from
/// `player_js_url`.
pub fn page(streams: &[StreamKey], player_js_url: &str) -> String {
    let mut list = String::new();
    if streams.is_empty() {
        list.push_str("<p id=\"empty\">No live streams on this node right now. Publish to <code>rtmp://HOST/{app}/{stream}</code> and reload.</p>\n");
    } else {
        list.push_str("<ul id=\"streams\">\n");
        for key in streams {
            let name = escape_html(&format!("{}/{}", key.app, key.stream));
            let url = escape_html(&format!("/{}/{}.flv", key.app, key.stream));
            list.push_str(&format!(
                "<li><button type=\"button\" data-stream=\"{name}\" data-url=\"{url}\">&#9654; {name}</button> <a href=\"{url}\">{url}</a></li>\n"
            ));
        }
        list.push_str("</ul>\n");
    }
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<link rel=\"icon\" href=\"data:,\">
<title>Baton: live streams</title>
<style>{STYLE}</style>
<script src=\"{js}\"></script>
</head>
<body>
<h1>Live streams</h1>
{list}<p id=\"status\" role=\"status\"></p>
<div id=\"players\"></div>
<script>{SCRIPT}</script>
</body>
</html>
",
        js = escape_html(player_js_url),
    )
}

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #111; color: #eee; }
a { color: #8cf; }
ul { padding-left: 0; list-style: none; }
li { margin: .3rem 0; }
button { font: inherit; cursor: pointer; }
#status:empty { display: none; }
#status { color: #f88; }
#players { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; }
video { width: 640px; max-width: 100%; background: #000; }
";

/// Constant: stream names reach it only through `data-*` attributes.
/// `window.baton` is the handle for tests and the console:
/// `baton.streams` (names listed), `baton.play(name)` (returns the entry
/// `{name, url, video, player, errors, warnings}`), `baton.players[name]`,
/// `baton.stop(name)`.
const SCRIPT: &str = r#"
(function () {
  'use strict';
  var players = {};
  var status = document.getElementById('status');
  var buttons = Array.prototype.slice.call(document.querySelectorAll('button[data-stream]'));
  function say(text) { status.textContent = text; }
  function buttonOf(name) {
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].dataset.stream === name) return buttons[i];
    }
    return null;
  }
  function stop(name) {
    var entry = players[name];
    if (!entry) return false;
    entry.player.destroy();
    entry.box.remove();
    delete players[name];
    return true;
  }
  function play(name) {
    if (players[name]) return players[name];
    var button = buttonOf(name);
    if (!button) throw new Error('no live stream named ' + name);
    if (typeof mpegts === 'undefined') {
      say('mpegts.js did not load (player_js_url)');
      throw new Error('mpegts.js is not loaded');
    }
    if (!mpegts.isSupported()) {
      say('this browser has no Media Source Extensions');
      throw new Error('mpegts.js is not supported here');
    }
    var url = new URL(button.dataset.url, location.href).href;
    var box = document.createElement('figure');
    var video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    video.controls = true;
    video.playsInline = true;
    var caption = document.createElement('figcaption');
    caption.textContent = name;
    box.appendChild(video);
    box.appendChild(caption);
    document.getElementById('players').appendChild(box);
    var player = mpegts.createPlayer(
      { type: 'flv', isLive: true, url: url },
      { enableStashBuffer: false, liveSync: true }
    );
    var entry = { name: name, url: url, video: video, player: player, box: box, errors: [], warnings: [] };
    player.on(mpegts.Events.ERROR, function (type, detail, info) {
      entry.errors.push({ type: String(type), detail: String(detail), info: info && info.msg ? String(info.msg) : String(info) });
      say(name + ': ' + type + ' ' + detail);
    });
    video.addEventListener('error', function () {
      var e = video.error;
      entry.errors.push({ type: 'video', detail: e ? e.code + ' ' + e.message : 'unknown' });
      say(name + ': video error ' + (e ? e.message : ''));
    });
    player.attachMediaElement(video);
    player.load();
    var started = player.play();
    if (started && started.catch) {
      started.catch(function (e) { entry.warnings.push('play(): ' + e); });
    }
    players[name] = entry;
    return entry;
  }
  buttons.forEach(function (button) {
    button.addEventListener('click', function () {
      try { play(button.dataset.stream); } catch (e) { say(String(e.message || e)); }
    });
  });
  window.baton = {
    streams: buttons.map(function (b) { return b.dataset.stream; }),
    players: players,
    play: play,
    stop: stop
  };
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_could_leave_text_or_an_attribute() {
        assert_eq!(
            escape_html(r#"<script>alert("x" + 'y' + `z`)</script>&"#),
            "&lt;script&gt;alert(&quot;x&quot; + &#39;y&#39; + &#96;z&#96;)&lt;/script&gt;&amp;"
        );
        assert_eq!(escape_html("live/demo_1-ü"), "live/demo_1-ü");
    }

    #[test]
    fn the_page_lists_streams_escaped_and_loads_the_configured_player() {
        let evil = StreamKey::new("live", "\"><script>alert(1)</script>");
        let html = page(
            &[StreamKey::new("live", "demo"), evil],
            "http://127.0.0.1:9/mpegts.js?a=1&b=\"2",
        );
        assert!(html.contains("data-stream=\"live/demo\" data-url=\"/live/demo.flv\""));
        assert!(html
            .contains("<script src=\"http://127.0.0.1:9/mpegts.js?a=1&amp;b=&quot;2\"></script>"));
        assert!(!html.contains("<script>alert(1)"), "{html}");
        assert!(html.contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        // The only scripts: the player and the constant one.
        assert_eq!(html.matches("<script").count(), 2, "{html}");
        assert!(html.contains("mpegts.createPlayer"));
        assert!(html.contains("window.baton"));
        assert!(!page(&[], "x.js").contains("<ul"));
    }
}
