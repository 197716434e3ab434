//! Everything a Baton node runs between accepting a socket and exiting,
//! written once for both roles.
//!
//! The origin and the edge serve the same URLs with the same code: the
//! accept loop and its limits ([`accept`]), RTMP ([`rtmp`]) and HTTP-FLV
//! ([`http_flv`]) serving over one player pump ([`playback`]), the HTTP API
//! ([`api`], [`generations`], [`metrics`]), the browser viewer page at
//! `GET /` ([`viewer`]), the settings ([`settings`]) and
//! the process supervisor ([`process`]: listeners, signals, drain, smooth
//! upgrade, PID file, sd_notify). What differs between the roles is one
//! narrow seam, [`StreamDirectory`]: where a played stream comes from and
//! where a publish goes. The origin answers both with its hub; the edge
//! pulls from and forwards to origins.

pub mod accept;
pub mod api;
pub mod api_auth;
pub mod auth;
pub mod generations;
pub mod http_flv;
mod http_flv_direct;
pub mod limits;
pub mod metrics;
pub mod names;
mod parked_play;
pub mod playback;
pub mod process;
pub mod rtmp;
pub mod settings;
pub mod stall;
pub mod tag_batch;
pub mod tls;
pub mod viewer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::clients::ClientRegistry;
use crate::handover::Role;
use crate::hub::{Hub, PublishError, Publisher, PublisherInfo, StreamKey, Subscriber};
use crate::lifecycle::Shutdown;
use settings::Settings;

/// The seam between the shared serving code and a role: where a stream a
/// client plays comes from, and where a stream a client publishes goes.
///
/// Both calls return handles on the node's local [`Hub`], so fan-out, the
/// GOP cache and the slow-player policy are the same in every role; a role
/// adds what happens behind the hub (the edge starts a pull on the first
/// player and forwards a publish to an origin).
pub trait StreamDirectory: Send + Sync + 'static {
    /// Claim `key` for a publisher connected to this node.
    fn publish(&self, key: StreamKey, publisher: PublisherInfo) -> Result<Publisher, PublishError>;

    /// Attach a player to `key` (it may wait for the stream to appear; the
    /// caller bounds that wait with `play_wait_timeout`). `resume_after`:
    /// the player already has the stream up to this timestamp (an edge
    /// re-attaching after a failover asks with `?baton_resume=TS`).
    fn subscribe(&self, key: &StreamKey, resume_after: Option<u32>) -> Subscriber;

    /// [`StreamDirectory::publish`] for a client whose URL carried
    /// `client_query` (already authorized here): an edge passes it on to
    /// the origin, which authorizes the publish again with its settings,
    /// and cancels `disconnect` (ending the client's connection) if the
    /// origin refuses it.
    fn publish_with_query(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        client_query: Option<&str>,
        disconnect: crate::kick::Kick,
    ) -> Result<Publisher, PublishError> {
        let _ = (client_query, disconnect);
        self.publish(key, publisher)
    }

    /// [`StreamDirectory::subscribe`] for a player whose URL carried
    /// `client_query`: an edge's pull started by this player passes it on
    /// to the origin.
    fn subscribe_with_query(
        &self,
        key: &StreamKey,
        resume_after: Option<u32>,
        client_query: Option<&str>,
    ) -> Subscriber {
        let _ = client_query;
        self.subscribe(key, resume_after)
    }

    /// Whether a player's play ends when its stream is unpublished. The
    /// origin keeps players waiting for the next publisher (bounded by
    /// `play_wait_timeout`); the edge has already held them through the
    /// upstream outage (`upstream_outage_max`) before it unpublishes.
    fn unpublish_ends_play(&self) -> bool {
        false
    }

    /// Where `key` is published, for a player that should not wait for a
    /// stream nobody has (HTTP-FLV). The origin looks at its hub; the edge
    /// at its hub, then asks the origins.
    fn locate<'a>(&'a self, key: &'a StreamKey) -> BoxFuture<'a, Presence>;

    /// Role-specific state for the API: the edge lists its upstreams (which
    /// origin each stream comes from or goes to, since when, how many
    /// moves) and its origins' health. `None` for the origin.
    fn upstreams_json(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The origin's directory, and the edge's local part: the hub itself.
impl StreamDirectory for Hub {
    fn publish(&self, key: StreamKey, publisher: PublisherInfo) -> Result<Publisher, PublishError> {
        Hub::publish(self, key, publisher)
    }

    fn subscribe(&self, key: &StreamKey, resume_after: Option<u32>) -> Subscriber {
        Hub::subscribe_resuming(self, key, resume_after)
    }

    fn locate<'a>(&'a self, key: &'a StreamKey) -> BoxFuture<'a, Presence> {
        let published = self.source(key).is_some_and(|s| s.is_publishing());
        Box::pin(std::future::ready(if published {
            Presence::Here
        } else {
            Presence::Absent
        }))
    }
}

/// What [`StreamDirectory::locate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Published on this node.
    Here,
    /// Published on an upstream this node can pull from.
    Upstream,
    /// Published nowhere this node knows of (every place was asked).
    Absent,
    /// Could not tell (an upstream without an API, or one that did not
    /// answer): a player waits as for a stream that may come.
    Unknown,
}

/// The query parameter an edge adds to its upstream play to resume after
/// the last timestamp it delivered.
pub const RESUME_PARAM: &str = "baton_resume";

/// The query parameter an edge adds to its upstream play: it relays the
/// stream to its own players, so the origin writes to it as frames come
/// (the edge coalesces for its players) rather than once per window.
pub const RELAY_PARAM: &str = "baton_relay";

/// The query parameter an edge adds to its upstream publish so the origin
/// announces the edge publisher's timeline id (not a new one).
pub const TIMELINE_PARAM: &str = "baton_timeline";

/// The value of `name` in a `a=1&b=2` query string.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `baton_resume=TS` from a play request's query string.
pub fn resume_after(query: Option<&str>) -> Option<u32> {
    query_param(query, RESUME_PARAM)?.parse().ok()
}

/// Everything the servers of one process share.
pub struct ServerContext {
    pub role: Role,
    pub settings: Settings,
    /// The node's local streams (publishers and pulls push here, players
    /// read from here).
    pub hub: Hub,
    /// Where streams come from and go to (see [`StreamDirectory`]).
    pub streams: Arc<dyn StreamDirectory>,
    pub clients: ClientRegistry,
    /// Who may connect (see [`limits::admission`]).
    pub admission: limits::Admission,
    pub shutdown: Shutdown,
    pub metrics: PrometheusHandle,
    /// Who may publish and play (signed URLs, callbacks).
    pub auth: auth::Authorizer,
    /// 1 for a fresh start, predecessor + 1 after an upgrade.
    pub generation: u64,
    pub started: Instant,
    older_generations: Mutex<Vec<PathBuf>>,
}

impl ServerContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        role: Role,
        settings: Settings,
        hub: Hub,
        streams: Arc<dyn StreamDirectory>,
        shutdown: Shutdown,
        metrics: PrometheusHandle,
        generation: u64,
        older_generations: Vec<PathBuf>,
    ) -> Self {
        let server_id = format!("baton-{role}-{}-g{generation}", std::process::id());
        let admission = limits::Admission::new(settings.limits.admission(settings.max_connections));
        ServerContext {
            role,
            auth: auth::Authorizer::new(settings.auth.clone(), server_id),
            settings,
            hub,
            streams,
            clients: ClientRegistry::new(),
            admission,
            shutdown,
            metrics,
            generation,
            started: Instant::now(),
            older_generations: Mutex::new(older_generations),
        }
    }

    /// `baton-{role}-{pid}-g{generation}`, the `server` field of API answers.
    pub fn server_id(&self) -> String {
        format!(
            "baton-{}-{}-g{}",
            self.role,
            std::process::id(),
            self.generation
        )
    }

    /// Control sockets of older generations still draining, newest first.
    pub fn older_generations(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        self.older_generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}
