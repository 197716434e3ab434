//! The edge's [`StreamDirectory`]: where the shared serving layer's
//! players and publishers meet the origins.
//!
//! - A player attaches to the edge's hub; if no publisher of this edge
//!   owns the stream, the first player starts a pull (one per stream,
//!   shared by every player; it ends `pull_linger` after the last left).
//! - A publisher publishes into the edge's hub (so players of this edge
//!   get it directly) and a forward sends it on to an origin.
//! - A publish of a stream this edge is already pulling (published
//!   elsewhere) is refused like a second publisher on an origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_common::hub::{Hub, PublishError, Publisher, PublisherInfo, StreamKey, Subscriber};
use baton_common::kick::Kick;
use baton_common::lifecycle::Shutdown;
use baton_common::serve::auth::AuthSettings;
use baton_common::serve::{Presence, StreamDirectory};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use crate::origin_tls::OriginTls;
use crate::origins::Origins;
use crate::pull::{self, PullHandle};
use crate::settings::EdgeSettings;
use crate::status::{Direction, StatusCell};

/// What every pull and forward of this edge shares.
pub struct EdgeCore {
    pub hub: Hub,
    pub origins: Origins,
    /// How upstreams connect to TLS origins.
    pub origin_tls: OriginTls,
    pub settings: EdgeSettings,
    pub shutdown: Shutdown,
    /// How long a pull may look for a stream no origin has yet (the
    /// players' own `play_wait_timeout`).
    pub play_wait_timeout: Duration,
    /// The node's authorization settings: with a token secret, an edge
    /// re-signs a client's genuine token that expired before it re-opens
    /// an upstream (failover hours into a publish).
    pub auth: AuthSettings,
}

pub struct EdgeDirectory {
    core: Arc<EdgeCore>,
    pulls: Mutex<HashMap<StreamKey, PullHandle>>,
    forwards: Mutex<HashMap<StreamKey, StatusCell>>,
}

impl EdgeDirectory {
    pub fn new(core: Arc<EdgeCore>) -> Arc<Self> {
        Arc::new(EdgeDirectory {
            core,
            pulls: Mutex::new(HashMap::new()),
            forwards: Mutex::new(HashMap::new()),
        })
    }

    fn pulls(&self) -> MutexGuard<'_, HashMap<StreamKey, PullHandle>> {
        self.pulls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forwards(&self) -> MutexGuard<'_, HashMap<StreamKey, StatusCell>> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start a pull for `key` unless one runs or a local publisher owns it.
    /// The pull uses `client_query`, the query of the player that started
    /// it (each player is authorized by the edge itself; the origin sees
    /// the first one's credentials).
    fn ensure_pull(&self, key: &StreamKey, client_query: Option<&str>) {
        let locally_published = self.forwards().contains_key(key)
            && self.core.hub.source(key).is_some_and(|s| s.is_publishing());
        if locally_published {
            return;
        }
        let mut pulls = self.pulls();
        if pulls.get(key).is_some_and(|p| !p.stop.is_cancelled()) {
            return;
        }
        pulls.retain(|_, p| !p.stop.is_cancelled());
        let handle = PullHandle::new();
        pulls.insert(key.clone(), handle.clone());
        drop(pulls);
        tracing::info!(stream = %key, "pull started");
        let (core, key) = (self.core.clone(), key.clone());
        let client_query = client_query.map(str::to_owned);
        let stop = handle.stop.clone();
        tokio::spawn(async move {
            pull::run(core, key, handle, client_query).await;
            // Marks this pull over; a later player starts a new one.
            stop.cancel();
        });
    }
}

impl StreamDirectory for EdgeDirectory {
    fn publish(&self, key: StreamKey, publisher: PublisherInfo) -> Result<Publisher, PublishError> {
        self.publish_with_query(key, publisher, None, Kick::new())
    }

    fn publish_with_query(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        client_query: Option<&str>,
        disconnect: Kick,
    ) -> Result<Publisher, PublishError> {
        if let Some(pull) = self.pulls().get(&key) {
            if pull.is_delivering() {
                // Published elsewhere already; the origin would refuse it.
                return Err(PublishError::AlreadyPublishing(key));
            }
            pull.stop.cancel();
        }
        let timeline = publisher.timeline.clone();
        let claimed = self.core.hub.publish(key.clone(), publisher)?;
        let status = StatusCell::new(Direction::Forward);
        let mut forwards = self.forwards();
        forwards.retain(|key, _| self.core.hub.source(key).is_some_and(|s| s.is_publishing()));
        forwards.insert(key.clone(), status.clone());
        drop(forwards);
        tokio::spawn(crate::forward::run(
            self.core.clone(),
            key,
            timeline,
            status,
            client_query.map(str::to_owned),
            disconnect,
        ));
        Ok(claimed)
    }

    fn subscribe(&self, key: &StreamKey, resume_after: Option<u32>) -> Subscriber {
        self.subscribe_with_query(key, resume_after, None)
    }

    fn subscribe_with_query(
        &self,
        key: &StreamKey,
        resume_after: Option<u32>,
        client_query: Option<&str>,
    ) -> Subscriber {
        let subscriber = self.core.hub.subscribe_resuming(key, resume_after);
        self.ensure_pull(key, client_query);
        subscriber
    }

    fn unpublish_ends_play(&self) -> bool {
        true
    }

    fn locate<'a>(&'a self, key: &'a StreamKey) -> BoxFuture<'a, Presence> {
        Box::pin(async move {
            if self.core.hub.source(key).is_some_and(|s| s.is_publishing()) {
                return Presence::Here;
            }
            let lookup = self.core.origins.lookup(key).await;
            if !lookup.holders.is_empty() {
                Presence::Upstream
            } else if lookup.complete {
                Presence::Absent
            } else {
                Presence::Unknown
            }
        })
    }

    fn upstreams_json(&self) -> Option<Value> {
        let mut upstreams: Vec<Value> = self
            .pulls()
            .iter()
            .filter(|(_, p)| !p.stop.is_cancelled())
            .map(|(key, p)| p.status.to_json(&key.to_string()))
            .collect();
        self.forwards()
            .retain(|key, _| self.core.hub.source(key).is_some_and(|s| s.is_publishing()));
        upstreams.extend(
            self.forwards()
                .iter()
                .map(|(key, status)| status.to_json(&key.to_string())),
        );
        Some(json!({
            "upstreams": upstreams,
            "origins": self.core.origins.to_json(),
        }))
    }
}
