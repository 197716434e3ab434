//! Who may publish and who may play: the one gate both transports (RTMP,
//! HTTP-FLV) and both roles pass a request through before it touches the
//! stream directory.
//!
//! Two mechanisms, each optional, both applied when both are configured:
//! signed URLs checked locally ([`token`]: `?token=HEX&expires=UNIX`, an
//! HMAC-SHA256 with a shared secret) and SRS-compatible HTTP callbacks
//! ([`hooks`]: `on_publish`/`on_play` decide, `on_unpublish`/`on_stop`
//! are notifications sent in the background, never in the data path).
//! A refusal is logged once (reason, peer, stream) and counted in
//! `baton_auth_refusals_total{action, reason}`; the caller turns it into
//! an RTMP error status or an HTTP 401/403. An edge runs the same gate
//! with its own settings and passes the client's query on to the origin,
//! which checks it again with its own.

pub mod hook_client;
pub mod hooks;
pub mod token;

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Semaphore;

use crate::config::{ConfigError, HumanDuration};
use crate::hub::StreamKey;
use hook_client::HookUrl;
use hooks::{HookAction, HookEvent, Verdict};
pub use token::Action;

/// The RTMP status code of a refused publish.
pub const PUBLISH_UNAUTHORIZED: &str = "NetStream.Publish.Unauthorized";
/// The RTMP status code of a refused play.
pub const PLAY_UNAUTHORIZED: &str = "NetStream.Play.Unauthorized";

/// End-of-session notifications (`on_unpublish`, `on_stop`) in flight at
/// most; more are dropped and counted rather than queued without bound.
const MAX_PENDING_NOTIFICATIONS: usize = 1024;
/// An edge re-signs a genuine token that expires within this margin when
/// it re-opens an upstream...
pub const TOKEN_REFRESH_MARGIN: u64 = 60;
/// ...with this lifetime.
pub const TOKEN_REFRESH_TTL: u64 = 3600;
/// A shorter secret is refused at start (it could be guessed).
const MIN_SECRET_LEN: usize = 16;

/// A shared secret: never shown in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_string()))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(deserializer)?))
    }
}

/// Which requests need a signed token when a secret is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Publishing needs a token, playing does not.
    Publish,
    /// Playing needs a token, publishing does not.
    Play,
    /// Both.
    All,
}

impl TokenScope {
    fn covers(self, action: Action) -> bool {
        matches!(
            (self, action),
            (TokenScope::All, _)
                | (TokenScope::Publish, Action::Publish)
                | (TokenScope::Play, Action::Play)
        )
    }
}

/// What an unreachable or failing callback (timeout, connection error,
/// non-200, unreadable answer) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookFailure {
    /// Refuse the request (fail closed).
    Reject,
    /// Let the request through, logged (fail open).
    Allow,
}

/// The resolved authorization settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub token_secret: Option<Secret>,
    pub token_required: TokenScope,
    pub on_publish: Vec<HookUrl>,
    pub on_unpublish: Vec<HookUrl>,
    pub on_play: Vec<HookUrl>,
    pub on_stop: Vec<HookUrl>,
    pub hook_timeout: Duration,
    pub hook_failure: HookFailure,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            token_secret: None,
            token_required: TokenScope::Publish,
            on_publish: Vec::new(),
            on_unpublish: Vec::new(),
            on_play: Vec::new(),
            on_stop: Vec::new(),
            hook_timeout: Duration::from_secs(3),
            hook_failure: HookFailure::Reject,
        }
    }
}

impl AuthSettings {
    /// From the shared settings' flags/file values (see `settings.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        token_secret: Option<Secret>,
        token_required: Option<TokenScope>,
        on_publish: Option<Vec<HookUrl>>,
        on_unpublish: Option<Vec<HookUrl>>,
        on_play: Option<Vec<HookUrl>>,
        on_stop: Option<Vec<HookUrl>>,
        hook_timeout: Option<HumanDuration>,
        hook_failure: Option<HookFailure>,
    ) -> Result<AuthSettings, ConfigError> {
        let defaults = AuthSettings::default();
        let settings = AuthSettings {
            token_secret: token_secret.filter(|s| !s.0.is_empty()),
            token_required: token_required.unwrap_or(defaults.token_required),
            on_publish: on_publish.unwrap_or_default(),
            on_unpublish: on_unpublish.unwrap_or_default(),
            on_play: on_play.unwrap_or_default(),
            on_stop: on_stop.unwrap_or_default(),
            hook_timeout: hook_timeout.map_or(defaults.hook_timeout, HumanDuration::get),
            hook_failure: hook_failure.unwrap_or(defaults.hook_failure),
        };
        if settings
            .token_secret
            .as_ref()
            .is_some_and(|s| s.0.len() < MIN_SECRET_LEN)
        {
            return Err(ConfigError::Setting {
                name: "auth_token_secret",
                reason: format!(
                    "must be at least {MIN_SECRET_LEN} bytes (e.g. openssl rand -hex 32)"
                ),
            });
        }
        if settings.hook_timeout.is_zero() {
            return Err(ConfigError::Setting {
                name: "hook_timeout",
                reason: "must be non-zero".into(),
            });
        }
        Ok(settings)
    }

    fn deciding_hooks(&self, action: Action) -> &[HookUrl] {
        match action {
            Action::Publish => &self.on_publish,
            Action::Play => &self.on_play,
        }
    }

    fn ending_hooks(&self, action: Action) -> &[HookUrl] {
        match action {
            Action::Publish => &self.on_unpublish,
            Action::Play => &self.on_stop,
        }
    }
}

/// A request to publish or play, as the gate sees it.
#[derive(Debug, Clone)]
pub struct AuthRequest<'a> {
    pub action: Action,
    pub key: &'a StreamKey,
    /// The client's query string, without `?`.
    pub query: Option<&'a str>,
    pub client_id: u64,
    pub peer: SocketAddr,
    /// The RTMP tcUrl, or the HTTP-FLV request's `http://host/app`.
    pub tc_url: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The metric's `reason` label.
    pub reason: &'static str,
    pub detail: String,
}

impl Refusal {
    /// 401 when the client brought no credentials, 403 otherwise.
    pub fn http_status(&self) -> http::StatusCode {
        if self.reason == token::TokenError::Missing.label() {
            http::StatusCode::UNAUTHORIZED
        } else {
            http::StatusCode::FORBIDDEN
        }
    }

    /// The RTMP status code for a refused `action`.
    pub fn rtmp_code(action: Action) -> &'static str {
        match action {
            Action::Publish => PUBLISH_UNAUTHORIZED,
            Action::Play => PLAY_UNAUTHORIZED,
        }
    }

    /// The status description a client shows.
    pub fn description(&self, action: Action, key: &StreamKey) -> String {
        format!("{action} of {key} not authorized: {}", self.detail)
    }
}

/// The node's gate (one per process, shared by every connection).
#[derive(Clone)]
pub struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    server_id: String,
    notifications: Arc<Semaphore>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authorizer {
    pub fn new(settings: AuthSettings, server_id: String) -> Self {
        Authorizer {
            inner: Arc::new(Inner {
                settings,
                server_id,
                notifications: Arc::new(Semaphore::new(MAX_PENDING_NOTIFICATIONS)),
            }),
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.inner.settings
    }

    /// Token first (local, cheap), then the deciding callbacks in order;
    /// every configured check must pass. A refusal is logged and counted
    /// here. The returned guard sends `on_unpublish`/`on_stop` when the
    /// publish or play ends (dropped).
    pub async fn authorize(&self, request: AuthRequest<'_>) -> Result<Authorized, Refusal> {
        let result = self.check(&request).await;
        match result {
            Ok(event) => Ok(Authorized {
                end: event.map(|event| (self.inner.clone(), request.action, event)),
            }),
            Err(refusal) => {
                tracing::warn!(
                    action = %request.action,
                    reason = refusal.reason,
                    peer = %request.peer,
                    stream = %request.key,
                    detail = %refusal.detail,
                    "{} refused: not authorized",
                    request.action
                );
                metrics::counter!(
                    "baton_auth_refusals_total",
                    "action" => request.action.as_str(),
                    "reason" => refusal.reason
                )
                .increment(1);
                Err(refusal)
            }
        }
    }

    /// The checks; the hook event when callbacks are configured for the
    /// action (its end is then reported too).
    async fn check(&self, request: &AuthRequest<'_>) -> Result<Option<HookEvent>, Refusal> {
        let settings = &self.inner.settings;
        if let Some(secret) = &settings.token_secret {
            if settings.token_required.covers(request.action) {
                token::verify(
                    secret.expose(),
                    request.action,
                    &request.key.app,
                    &request.key.stream,
                    request.query,
                    unix_now(),
                )
                .map_err(|error| Refusal {
                    reason: error.label(),
                    detail: error.to_string(),
                })?;
            }
        }
        let deciding = settings.deciding_hooks(request.action);
        let ending = settings.ending_hooks(request.action);
        if deciding.is_empty() && ending.is_empty() {
            return Ok(None);
        }
        let event = HookEvent {
            client_id: request.client_id,
            ip: request.peer.ip(),
            app: request.key.app.clone(),
            stream: request.key.stream.clone(),
            param: hooks::param_of(request.query),
            tc_url: request.tc_url.clone(),
            server_id: self.inner.server_id.clone(),
        };
        let action = match request.action {
            Action::Publish => HookAction::OnPublish,
            Action::Play => HookAction::OnPlay,
        };
        let body = Bytes::from(hooks::body(action, &event).to_string());
        for url in deciding {
            let verdict = match hook_client::post(url, body.clone(), settings.hook_timeout).await {
                Ok((status, answer)) => hooks::judge(status, &answer),
                Err(error) => Verdict::Failed(error),
            };
            match verdict {
                Verdict::Allow => {}
                Verdict::Refuse(detail) => {
                    return Err(Refusal {
                        reason: "hook_refused",
                        detail: format!("{} {url}: {detail}", action.as_str()),
                    })
                }
                Verdict::Failed(detail) => match settings.hook_failure {
                    HookFailure::Reject => {
                        return Err(Refusal {
                            reason: "hook_failed",
                            detail: format!("{} {url} failed: {detail}", action.as_str()),
                        })
                    }
                    HookFailure::Allow => {
                        tracing::warn!(hook = %url, detail, "callback failed; allowed by hook_failure = allow");
                        metrics::counter!("baton_auth_hook_failures_allowed_total").increment(1);
                    }
                },
            }
        }
        Ok(Some(event))
    }
}

/// An authorized publish or play; when dropped (the session ended, for
/// whatever reason) its `on_unpublish`/`on_stop` callbacks are sent in
/// the background, their answers ignored.
pub struct Authorized {
    end: Option<(Arc<Inner>, Action, HookEvent)>,
}

impl Authorized {
    /// For a request that needs no gate (none configured).
    pub fn unchecked() -> Self {
        Authorized { end: None }
    }
}

impl Drop for Authorized {
    fn drop(&mut self) {
        let Some((inner, action, event)) = self.end.take() else {
            return;
        };
        let urls = inner.settings.ending_hooks(action).to_vec();
        if urls.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(slot) = inner.notifications.clone().try_acquire_owned() else {
            metrics::counter!("baton_auth_notifications_dropped_total").increment(1);
            tracing::warn!(stream = %format!("{}/{}", event.app, event.stream), "too many callbacks in flight; end notification dropped");
            return;
        };
        let hook = match action {
            Action::Publish => HookAction::OnUnpublish,
            Action::Play => HookAction::OnStop,
        };
        let body = Bytes::from(hooks::body(hook, &event).to_string());
        let timeout = inner.settings.hook_timeout;
        runtime.spawn(async move {
            let _slot = slot;
            for url in urls {
                if let Err(error) = hook_client::post(&url, body.clone(), timeout).await {
                    tracing::debug!(hook = %url, error, "{} notification failed", hook.as_str());
                }
            }
        });
    }
}

/// `baton-origin sign` / `baton-edge sign`: print the query for a
/// signed publish or play URL.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The shared secret (as the nodes' auth_token_secret).
    #[arg(long, env = "BATON_AUTH_TOKEN_SECRET", hide_env_values = true)]
    pub secret: Secret,
    /// publish or play.
    #[arg(long, value_parser = ["publish", "play"])]
    pub action: String,
    /// The app (first path segment), e.g. live.
    #[arg(long)]
    pub app: String,
    /// The stream name, e.g. demo.
    #[arg(long)]
    pub stream: String,
    /// How long the token is valid from now.
    #[arg(long, default_value = "1h")]
    pub ttl: HumanDuration,
}

/// Print `token=...&expires=...` for [`SignArgs`].
pub fn run_sign_command(args: &SignArgs) -> ExitCode {
    if args.secret.0.len() < MIN_SECRET_LEN {
        eprintln!("the secret must be at least {MIN_SECRET_LEN} bytes");
        return ExitCode::from(2);
    }
    let action = if args.action == "publish" {
        Action::Publish
    } else {
        Action::Play
    };
    let expires = unix_now().saturating_add(args.ttl.get().as_secs());
    println!(
        "{}",
        token::signed_query(
            args.secret.expose(),
            action,
            &args.app,
            &args.stream,
            expires
        )
    );
    ExitCode::SUCCESS
}

/// The client's query as an edge passes it to an origin for `action` on
/// `key` (see [`token::forwardable_query`]).
pub fn upstream_query(
    settings: &AuthSettings,
    action: Action,
    key: &StreamKey,
    client_query: Option<&str>,
) -> Option<String> {
    let refresh = settings.token_secret.as_ref().map(|secret| {
        (
            secret.expose(),
            action,
            key.app.as_str(),
            key.stream.as_str(),
        )
    });
    token::forwardable_query(
        client_query,
        refresh,
        unix_now(),
        TOKEN_REFRESH_MARGIN,
        TOKEN_REFRESH_TTL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(action: Action, key: &'a StreamKey, query: Option<&'a str>) -> AuthRequest<'a> {
        AuthRequest {
            action,
            key,
            query,
            client_id: 1,
            peer: "127.0.0.1:5000".parse().unwrap(),
            tc_url: "rtmp://127.0.0.1/live".into(),
        }
    }

    #[tokio::test]
    async fn no_settings_allow_everything() {
        let gate = Authorizer::new(AuthSettings::default(), "t".into());
        let key = StreamKey::new("live", "cam");
        assert!(gate
            .authorize(request(Action::Publish, &key, None))
            .await
            .is_ok());
        assert!(gate
            .authorize(request(Action::Play, &key, None))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_scope_says_which_actions_need_a_token() {
        let secret = Secret("0123456789abcdef".into());
        let settings = AuthSettings {
            token_secret: Some(secret.clone()),
            ..AuthSettings::default()
        };
        let gate = Authorizer::new(settings, "t".into());
        let key = StreamKey::new("live", "cam");
        let refused = gate
            .authorize(request(Action::Publish, &key, None))
            .await
            .err()
            .expect("no token, refused");
        assert_eq!(refused.http_status(), http::StatusCode::UNAUTHORIZED);
        assert!(gate
            .authorize(request(Action::Play, &key, None))
            .await
            .is_ok());
        let good = token::signed_query(
            secret.expose(),
            Action::Publish,
            "live",
            "cam",
            unix_now() + 60,
        );
        assert!(gate
            .authorize(request(Action::Publish, &key, Some(&good)))
            .await
            .is_ok());
        let bad = good.replace("token=", "token=0");
        let refused = gate
            .authorize(request(Action::Publish, &key, Some(&bad)))
            .await
            .err()
            .expect("bad token, refused");
        assert_eq!(refused.http_status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn settings_come_from_flags_and_the_file() {
        use crate::serve::settings::{Settings, SettingsArgs};
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        let dir = std::env::temp_dir().join(format!("baton-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "auth_token_secret = \"0123456789abcdef0\"\nauth_token_required = \"all\"\n\
             on_publish = [\"http://127.0.0.1:8085/a\", \"http://hooks:9/b\"]\n\
             hook_failure = \"allow\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "node",
            "--config",
            path.to_str().unwrap(),
            "--on-play",
            "http://127.0.0.1:1/x,http://127.0.0.1:2/y",
            "--hook-timeout",
            "500ms",
        ])
        .unwrap();
        let auth = Settings::resolve(&cli.settings).unwrap().auth;
        assert_eq!(auth.token_secret, Some(Secret("0123456789abcdef0".into())));
        assert_eq!(auth.token_required, TokenScope::All);
        assert_eq!(auth.on_publish.len(), 2);
        assert_eq!(auth.on_play.len(), 2);
        assert_eq!(auth.on_play[1].as_str(), "http://127.0.0.1:2/y");
        assert_eq!(auth.hook_timeout, Duration::from_millis(500));
        assert_eq!(auth.hook_failure, HookFailure::Allow);
        std::fs::write(&path, "on_publish = [\"https://x/y\"]\n").unwrap();
        assert!(
            Settings::resolve(&cli.settings).is_err(),
            "https is refused"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn short_secrets_and_zero_timeouts_are_refused() {
        let short = AuthSettings::resolve(
            Some(Secret("abc".into())),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        );
        assert!(short.is_err());
        let zero = AuthSettings::resolve(
            None,
            None,
            None,
            None,
            None,
            None,
            Some(HumanDuration(Duration::ZERO)),
            None,
        );
        assert!(zero.is_err());
        assert!(format!("{:?}", Secret("visible?".into())).contains("***"));
    }
}
