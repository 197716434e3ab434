//! HTTP callbacks in the shape SRS uses (`on_publish`, `on_unpublish`,
//! `on_play`, `on_stop`), so an existing SRS hook service works unchanged:
//! what is POSTed ([`body`]) and what an answer means ([`judge`]). Pure;
//! the HTTP exchange is in [`super::hook_client`].

use std::net::IpAddr;

use serde_json::{json, Value};

/// The SRS vhost name when none is configured.
pub const DEFAULT_VHOST: &str = "__defaultVhost__";

/// Which event a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    OnPublish,
    OnUnpublish,
    OnPlay,
    OnStop,
}

impl HookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HookAction::OnPublish => "on_publish",
            HookAction::OnUnpublish => "on_unpublish",
            HookAction::OnPlay => "on_play",
            HookAction::OnStop => "on_stop",
        }
    }
}

/// Who did what, as the callback body reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub client_id: u64,
    pub ip: IpAddr,
    pub app: String,
    pub stream: String,
    /// The client's query string with its `?` (SRS's `param`), or "".
    pub param: String,
    pub tc_url: String,
    pub server_id: String,
}

/// The JSON body of `action` for `event`: SRS's documented fields
/// (`action`, `client_id`, `ip`, `vhost`, `app`, `stream`, `param`,
/// `tcUrl`, `stream_url`, `server_id`, `service_id`).
pub fn body(action: HookAction, event: &HookEvent) -> Value {
    json!({
        "action": action.as_str(),
        "server_id": event.server_id,
        "service_id": event.server_id,
        "client_id": event.client_id.to_string(),
        "ip": event.ip.to_string(),
        "vhost": DEFAULT_VHOST,
        "app": event.app,
        "stream": event.stream,
        "param": event.param,
        "tcUrl": event.tc_url,
        "stream_url": format!("/{}/{}", event.app, event.stream),
    })
}

/// `?query` as SRS's `param` ("" without one).
pub fn param_of(query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    }
}

/// What a callback's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 200 with `0` or `{"code": 0}`.
    Allow,
    /// 200 with another code: the hook service said no.
    Refuse(String),
    /// Not a usable answer (other status, unparsable body): the failure
    /// policy decides.
    Failed(String),
}

/// Judge an answer: HTTP 200 whose body is the integer `0` or a JSON
/// object whose `code` is 0 allows; 200 with any other code refuses;
/// anything else is a failed call.
pub fn judge(status: u16, body: &[u8]) -> Verdict {
    if status != 200 {
        return Verdict::Failed(format!("HTTP status {status}"));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let code = match serde_json::from_str::<Value>(text) {
        Ok(Value::Number(n)) => n.as_i64(),
        Ok(Value::Object(map)) => match map.get("code") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        },
        _ => None,
    };
    match code {
        Some(0) => Verdict::Allow,
        Some(code) => Verdict::Refuse(format!("the hook answered code {code}")),
        None => {
            let shown: String = text.chars().take(64).collect();
            Verdict::Failed(format!(
                "unreadable answer {shown:?} (expected 0 or {{\"code\":0}})"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_allows_in_both_spellings() {
        assert_eq!(judge(200, b"0"), Verdict::Allow);
        assert_eq!(judge(200, b" 0\n"), Verdict::Allow);
        assert_eq!(judge(200, br#"{"code":0}"#), Verdict::Allow);
        assert_eq!(
            judge(200, br#"{"code": 0, "data": {"x": 1}}"#),
            Verdict::Allow
        );
    }

    #[test]
    fn other_codes_refuse_and_bad_answers_fail() {
        assert!(matches!(judge(200, b"1"), Verdict::Refuse(_)));
        assert!(matches!(judge(200, br#"{"code":403}"#), Verdict::Refuse(_)));
        assert!(matches!(judge(200, b""), Verdict::Failed(_)));
        assert!(matches!(judge(200, b"ok"), Verdict::Failed(_)));
        assert!(matches!(judge(200, br#"{"ok":true}"#), Verdict::Failed(_)));
        assert!(matches!(judge(500, b"0"), Verdict::Failed(_)));
        assert!(matches!(judge(404, br#"{"code":0}"#), Verdict::Failed(_)));
        assert!(matches!(judge(200, &[0xff, 0xfe]), Verdict::Failed(_)));
    }

    #[test]
    fn the_body_has_the_srs_fields() {
        let event = HookEvent {
            client_id: 7,
            ip: "10.1.2.3".parse().unwrap(),
            app: "live".into(),
            stream: "cam".into(),
            param: param_of(Some("token=abc")),
            tc_url: "rtmp://h/live".into(),
            server_id: "baton-origin-1-g1".into(),
        };
        let b = body(HookAction::OnPublish, &event);
        assert_eq!(b["action"], "on_publish");
        assert_eq!(b["client_id"], "7");
        assert_eq!(b["ip"], "10.1.2.3");
        assert_eq!(b["vhost"], DEFAULT_VHOST);
        assert_eq!(b["app"], "live");
        assert_eq!(b["stream"], "cam");
        assert_eq!(b["param"], "?token=abc");
        assert_eq!(b["tcUrl"], "rtmp://h/live");
        assert_eq!(b["server_id"], "baton-origin-1-g1");
        assert_eq!(param_of(None), "");
        assert_eq!(param_of(Some("")), "");
    }
}
