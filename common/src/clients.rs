//! The registry of connected clients: what the API lists and kicks, what
//! the lifecycle counts while draining, and where per-client byte counters
//! live.
//!
//! Every accepted connection registers at once and holds a [`ClientGuard`];
//! dropping the guard (however the connection ends) unregisters it, so the
//! count the drain waits on can never leak.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use crate::hub::StreamKey;
use crate::kick::Kick;

/// Bytes received from and sent to clients since the process started,
/// including clients that have left.
static TOTAL_BYTES_IN: AtomicU64 = AtomicU64::new(0);
static TOTAL_BYTES_OUT: AtomicU64 = AtomicU64::new(0);

pub fn total_bytes_in() -> u64 {
    TOTAL_BYTES_IN.load(Ordering::Relaxed)
}

pub fn total_bytes_out() -> u64 {
    TOTAL_BYTES_OUT.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    /// Connected, not yet publishing or playing.
    Pending = 0,
    Publisher = 1,
    Player = 2,
}

impl ClientRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Pending => "pending",
            ClientRole::Publisher => "publisher",
            ClientRole::Player => "player",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => ClientRole::Publisher,
            2 => ClientRole::Player,
            _ => ClientRole::Pending,
        }
    }
}

impl fmt::Display for ClientRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Rtmp,
    HttpFlv,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Rtmp => "rtmp",
            Transport::HttpFlv => "http-flv",
        }
    }
}

#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub connected_at: SystemTime,
    pub started: Instant,
    role: AtomicU8,
    stream: Mutex<Option<StreamKey>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Input buffered and not yet decoded (RTMP), in the memory ledger.
    pub input_buffered: AtomicU64,
    /// Kicks this client (API `DELETE`, memory shed, an edge's refused
    /// forward), with the reason its connection logs.
    pub kick: Kick,
}

impl ClientEntry {
    pub fn role(&self) -> ClientRole {
        ClientRole::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn stream(&self) -> Option<StreamKey> {
        self.stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        TOTAL_BYTES_IN.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.add_own_bytes_out(n);
        count_total_bytes_out(n);
    }

    /// Adds to this client's counter only, for bytes already counted in
    /// the process's total ([`count_total_bytes_out`]).
    pub fn add_own_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

/// Adds to the process's total of bytes sent to clients.
pub fn count_total_bytes_out(n: u64) {
    TOTAL_BYTES_OUT.fetch_add(n, Ordering::Relaxed);
}

#[derive(Clone)]
pub struct ClientRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    next_id: AtomicU64,
    count: watch::Sender<usize>,
    by_role: [AtomicU64; 3],
}

impl Default for ClientRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("count", &self.count())
            .finish()
    }
}

/// Counts per role, for the API and the drain log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleCounts {
    pub pending: u64,
    pub publishers: u64,
    pub players: u64,
}

impl RoleCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.publishers + self.players
    }
}

impl ClientRegistry {
    pub fn new() -> Self {
        ClientRegistry {
            inner: Arc::new(Inner {
                clients: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                count: watch::Sender::new(0),
                by_role: Default::default(),
            }),
        }
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<u64, Arc<ClientEntry>>> {
        self.inner.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, peer: SocketAddr, transport: Transport) -> ClientGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            id,
            peer,
            transport,
            connected_at: SystemTime::now(),
            started: Instant::now(),
            role: AtomicU8::new(ClientRole::Pending as u8),
            stream: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            input_buffered: AtomicU64::new(0),
            kick: Kick::new(),
        });
        {
            // The count is published under the map's lock: published after
            // it, two concurrent changes could leave a stale count last.
            let mut clients = self.clients();
            clients.insert(id, entry.clone());
            self.inner.count.send_replace(clients.len());
        }
        self.role_changed(None, Some(ClientRole::Pending));
        metrics::counter!("baton_connections_accepted_total", "transport" => transport.as_str())
            .increment(1);
        ClientGuard {
            registry: self.clone(),
            entry,
        }
    }

    fn role_changed(&self, from: Option<ClientRole>, to: Option<ClientRole>) {
        if let Some(from) = from {
            self.inner.by_role[from as usize].fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("baton_connections", "role" => from.as_str()).decrement(1.0);
        }
        if let Some(to) = to {
            self.inner.by_role[to as usize].fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("baton_connections", "role" => to.as_str()).increment(1.0);
        }
    }

    pub fn count(&self) -> usize {
        *self.inner.count.borrow()
    }

    pub fn role_counts(&self) -> RoleCounts {
        let load = |r: ClientRole| self.inner.by_role[r as usize].load(Ordering::Relaxed);
        RoleCounts {
            pending: load(ClientRole::Pending),
            publishers: load(ClientRole::Publisher),
            players: load(ClientRole::Player),
        }
    }

    /// A receiver that sees the client count change.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.clients().get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        let mut list: Vec<_> = self.clients().values().cloned().collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// Ask one client's connection to close. Returns false for unknown ids.
    pub fn kick(&self, id: u64) -> bool {
        match self.get(id) {
            Some(entry) => {
                entry.kick.kick(crate::kick::KICKED_THROUGH_THE_API);
                true
            }
            None => false,
        }
    }

    /// Wait until no client is connected.
    pub async fn wait_empty(&self) {
        let mut rx = self.watch_count();
        // The sender lives in `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Registration of one live connection; unregisters on drop.
#[derive(Debug)]
pub struct ClientGuard {
    registry: ClientRegistry,
    entry: Arc<ClientEntry>,
}

impl ClientGuard {
    pub fn entry(&self) -> &Arc<ClientEntry> {
        &self.entry
    }

    pub fn id(&self) -> u64 {
        self.entry.id
    }

    pub fn set_role(&self, role: ClientRole, stream: Option<StreamKey>) {
        let previous = ClientRole::from_u8(self.entry.role.swap(role as u8, Ordering::Relaxed));
        *self.entry.stream.lock().unwrap_or_else(|p| p.into_inner()) = stream;
        if previous != role {
            self.registry.role_changed(Some(previous), Some(role));
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        {
            // Published under the lock (see `register`): a mass disconnect
            // on several threads must not end on a stale count, which would
            // hold a drain or a fast exit open.
            let mut clients = self.registry.clients();
            clients.remove(&self.entry.id);
            crate::hub::shrink_if_mostly_empty(&mut clients);
            self.registry.inner.count.send_replace(clients.len());
        }
        self.registry.role_changed(Some(self.entry.role()), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_counts_roles_and_empties() {
        let registry = ClientRegistry::new();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let a = registry.register(peer, Transport::Rtmp);
        let b = registry.register(peer, Transport::HttpFlv);
        a.set_role(ClientRole::Publisher, Some(StreamKey::new("live", "x")));
        b.set_role(ClientRole::Player, None);
        assert_eq!(
            registry.role_counts(),
            RoleCounts {
                pending: 0,
                publishers: 1,
                players: 1
            }
        );
        assert!(registry.kick(a.id()));
        assert!(a.entry().kick.is_kicked());
        assert!(!registry.kick(999));
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.wait_empty().await })
        };
        drop(a);
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(registry.role_counts().total(), 0);
    }
}
