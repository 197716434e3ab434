//! The per-process control socket and its request/response protocol.
//!
//! Every origin or edge process listens on `{control_dir}/baton-{role}-{pid}.sock`.
//! Through it the `upgrade` CLI asks the running process to start its
//! successor, the successor takes the listening sockets and announces that
//! it serves, and the newest generation asks older ones (still draining) for
//! their statistics.
//!
//! # Protocol
//!
//! One request, one response, possibly several in turn on one connection.
//! Each is a JSON document (a serde enum tagged by `"op"` / `"result"`)
//! carried in one [`fdpass`] message, so descriptors travel
//! with the message they belong to — the `listeners` response carries one
//! listening socket per entry, in order. Messages are bounded to 64 KiB and
//! the server to [`MAX_CONNECTIONS`] concurrent connections.
//!
//! ```text
//! {"op":"upgrade"}                      -> {"result":"upgraded","pid":4321} | {"result":"err","reason":"..."}
//! {"op":"take_listeners","pid":4321}    -> {"result":"listeners","listeners":[{"name":"rtmp","addr":"0.0.0.0:1935"}],
//!                                           "generation":3,"older":["/run/baton/baton-origin-99.sock"]} + fds
//! {"op":"ready","pid":4321}             -> {"result":"ok"}
//! {"op":"failed","pid":4321,"reason":"…"} -> {"result":"ok"}
//! {"op":"stats"}                        -> {"result":"stats","stats":{...}}
//! ```
//!
//! Old and new binaries talk to each other during an upgrade, so the
//! protocol must only ever grow: new fields get `#[serde(default)]`, and an
//! unknown request is answered with `err`, never a dropped connection.
//!
//! The server decodes requests and hands them, with a [`Responder`], to the
//! process's main loop through a channel, so a reply may come much later
//! (the `upgrade` reply is sent only once the successor serves).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::fdpass::{self, FdPassError, MAX_FDS, MAX_PAYLOAD};
use super::listener::listener_from_fd;

/// Environment variable through which a process learns that it is a
/// successor, and which control socket to take its listeners from.
pub const UPGRADE_FROM_ENV: &str = "BATON_UPGRADE_FROM";
/// Most control connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 32;
/// Default timeout for a client request (connect + send + reply).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of [`query_stats`]: it runs on behalf of an API request.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the server waits for a request on an idle connection.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on how long the main loop may take to answer one request
/// (an `upgrade` waits for the successor, 30 s by default).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Which kind of Baton process owns a control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Origin,
    Edge,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Origin => "origin",
            Role::Edge => "edge",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{dir}/baton-{role}-{pid}.sock`.
pub fn control_socket_path(dir: &Path, role: Role, pid: u32) -> PathBuf {
    dir.join(format!("baton-{}-{pid}.sock", role.as_str()))
}

/// The PID encoded in a control socket path made by [`control_socket_path`].
pub fn pid_from_control_path(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("baton-")?.strip_suffix(".sock")?;
    let (_role, pid) = rest.rsplit_once('-')?;
    pid.parse().ok()
}

/// The subset of `paths` (control sockets of older generations) whose
/// process is still alive and whose socket file still exists, in order. For
/// the `older` field of a `listeners` response.
pub fn live_control_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| pid_from_control_path(p).is_some_and(super::pidfile::is_alive) && p.exists())
        .cloned()
        .collect()
}

/// The control socket of the predecessor this process should take its
/// listeners from, if it was started as a successor.
pub fn upgrade_source_from_env() -> Option<PathBuf> {
    let value = std::env::var_os(UPGRADE_FROM_ENV)?;
    if value.is_empty() {
        None
    } else {
        Some(PathBuf::from(value))
    }
}

/// One listening socket as described in a `listeners` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerDesc {
    /// Stable name the processes agree on, e.g. `"rtmp"`, `"http"`.
    pub name: String,
    pub addr: SocketAddr,
}

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// Start a successor; answered with `Upgraded` once it serves.
    Upgrade,
    /// From a successor: hand over the listeners (answered with `Listeners`
    /// and the descriptors attached).
    TakeListeners { pid: u32 },
    /// From a successor: it has adopted the listeners and is accepting; the
    /// receiver stops accepting and drains. Answered with `Ok`, or `Err`
    /// (the successor must then exit: the receiver keeps serving).
    Ready { pid: u32 },
    /// From a successor that failed to start: why (shows up in the
    /// `upgrade` reply). Answered with `Ok`.
    Failed { pid: u32, reason: String },
    /// Answered with `Stats`.
    Stats,
}

/// A response on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    Ok,
    Upgraded {
        pid: u32,
    },
    Listeners {
        listeners: Vec<ListenerDesc>,
        /// The generation of the process that answers (the first process
        /// is generation 0; a successor is its predecessor's + 1).
        generation: u64,
        /// Control sockets of generations older than the one answering
        /// that are still alive (draining), newest first.
        #[serde(default)]
        older: Vec<PathBuf>,
    },
    Stats {
        stats: GenerationSummary,
    },
    Err {
        reason: String,
    },
}

impl ControlResponse {
    pub fn err(reason: impl Into<String>) -> Self {
        ControlResponse::Err {
            reason: reason.into(),
        }
    }
}

/// One process generation's own figures, as the newest generation's API
/// reports each older one that is still draining. Typed so that a field
/// added here is added on both sides of the control socket at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationSummary {
    pub generation: u64,
    pub pid: u32,
    /// "serving" or "draining".
    pub state: String,
    pub uptime_ms: u64,
    pub clients: u64,
    pub publishers: u64,
    pub players: u64,
    pub streams: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub mem_kbyte: u64,
    pub cpu_seconds: f64,
}

/// Why a control request failed, as seen by the client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no control socket at {} (is the process running?)", path.display())]
    NotFound { path: PathBuf },
    #[error("control socket {} refuses connections (stale socket of a process that is gone?)", path.display())]
    Refused { path: PathBuf },
    #[error("cannot connect to control socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {}: {source}", path.display())]
    Transfer {
        path: PathBuf,
        #[source]
        source: FdPassError,
    },
    #[error("control socket {}: no answer within {after:?}", path.display())]
    Timeout { path: PathBuf, after: Duration },
    #[error("control socket {}: malformed response: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("control socket {}: request refused: {reason}", path.display())]
    Remote { path: PathBuf, reason: String },
    #[error("control socket {}: unexpected response {response}", path.display())]
    Unexpected { path: PathBuf, response: String },
    #[error("control socket {}: {count} listener descriptors for {described} listeners", path.display())]
    FdMismatch {
        path: PathBuf,
        count: usize,
        described: usize,
    },
    #[error("control socket {}: request too large: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A decoded request waiting for the main loop's answer.
#[derive(Debug)]
pub struct ControlCall {
    pub request: ControlRequest,
    pub responder: Responder,
}

/// Answers one [`ControlCall`]. Dropping it unanswered sends the client an
/// `err` response.
#[derive(Debug)]
pub struct Responder {
    tx: oneshot::Sender<Reply>,
}

#[derive(Debug)]
struct Reply {
    response: ControlResponse,
    fds: Vec<OwnedFd>,
}

impl Responder {
    pub fn reply(self, response: ControlResponse) {
        let _ = self.tx.send(Reply {
            response,
            fds: Vec::new(),
        });
    }

    /// Replies with descriptors attached (e.g. duplicates of the listeners,
    /// see [`dup_fd`](super::listener::dup_fd)); they are closed in this
    /// process once sent. At most [`MAX_FDS`].
    pub fn reply_with_fds(self, response: ControlResponse, fds: Vec<OwnedFd>) {
        let _ = self.tx.send(Reply { response, fds });
    }

    pub fn reply_err(self, reason: impl Into<String>) {
        self.reply(ControlResponse::err(reason));
    }

    /// Whether the client gave up (connection closed, or the server is
    /// gone); the reply would go nowhere.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The listening control socket of this process. Dropping it stops serving
/// and removes the socket file.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `{dir}/baton-{role}-{pid}.sock`. Requests arrive on the returned
    /// channel; must be called inside a tokio runtime.
    pub fn bind(
        dir: &Path,
        role: Role,
        pid: u32,
    ) -> io::Result<(ControlServer, mpsc::Receiver<ControlCall>)> {
        Self::bind_path(control_socket_path(dir, role, pid))
    }

    /// Binds at an explicit path (replacing a stale socket there, but never
    /// a regular file). The file is made owner-only (0600).
    pub fn bind_path(path: PathBuf) -> io::Result<(ControlServer, mpsc::Receiver<ControlCall>)> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};

        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "control socket path {} is {len} bytes; Unix sockets allow at most {MAX_SOCKET_PATH}",
                    path.display()
                ),
            ));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind control socket {}: {e}", path.display()),
            )
        })?;
        if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
        let task = tokio::spawn(accept_loop(listener, tx));
        Ok((ControlServer { path, task }, rx))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<ControlCall>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned here so that aborting this task aborts every connection too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&limit).try_acquire_owned() {
                    Ok(permit) => {
                        let calls = calls.clone();
                        conns.spawn(async move {
                            serve_connection(stream, calls).await;
                            drop(permit);
                        });
                    }
                    Err(_) => tracing::warn!(
                        "control socket: {MAX_CONNECTIONS} connections busy; closing a new one"
                    ),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: UnixStream, calls: mpsc::Sender<ControlCall>) {
    loop {
        let msg = match tokio::time::timeout(REQUEST_READ_TIMEOUT, fdpass::recv_msg_async(&stream))
            .await
        {
            Err(_) | Ok(Err(FdPassError::Closed)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "control socket: bad request message");
                return;
            }
            Ok(Ok(msg)) => msg,
        };
        let reply = if !msg.fds.is_empty() {
            Reply {
                response: ControlResponse::err("requests must not carry file descriptors"),
                fds: Vec::new(),
            }
        } else {
            match serde_json::from_slice::<ControlRequest>(&msg.payload) {
                Err(e) => Reply {
                    response: ControlResponse::err(format!("unknown or malformed request: {e}")),
                    fds: Vec::new(),
                },
                Ok(request) => dispatch(request, &calls).await,
            }
        };
        if !send_reply(&stream, reply).await {
            return;
        }
    }
}

async fn dispatch(request: ControlRequest, calls: &mpsc::Sender<ControlCall>) -> Reply {
    let plain = |response| Reply {
        response,
        fds: Vec::new(),
    };
    let (tx, rx) = oneshot::channel();
    let call = ControlCall {
        request,
        responder: Responder { tx },
    };
    if calls.send(call).await.is_err() {
        return plain(ControlResponse::err("the process is shutting down"));
    }
    match tokio::time::timeout(REPLY_TIMEOUT, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => plain(ControlResponse::err(
            "the request was dropped without an answer",
        )),
        Err(_) => plain(ControlResponse::err(format!(
            "no answer within {REPLY_TIMEOUT:?}"
        ))),
    }
}

/// Sends a reply; false if the connection is unusable afterwards.
async fn send_reply(stream: &UnixStream, reply: Reply) -> bool {
    let (payload, fds) = match encode_reply(&reply) {
        Ok(payload) => (payload, reply.fds.as_slice()),
        Err(reason) => {
            tracing::error!(%reason, "control socket: cannot encode reply");
            match serde_json::to_vec(&ControlResponse::err(reason)) {
                Ok(p) => (p, &[][..]),
                Err(_) => return false,
            }
        }
    };
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        fdpass::send_msg_async(stream, &payload, &borrowed),
    )
    .await
    {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "control socket: cannot send reply");
            false
        }
        Err(_) => false,
    }
}

fn encode_reply(reply: &Reply) -> Result<Vec<u8>, String> {
    if reply.fds.len() > MAX_FDS {
        return Err(format!(
            "reply would carry {} descriptors (max {MAX_FDS})",
            reply.fds.len()
        ));
    }
    let payload = serde_json::to_vec(&reply.response).map_err(|e| e.to_string())?;
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "reply of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        ));
    }
    Ok(payload)
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// Sends one request and returns the response (an `Err` response is
/// returned as such, not as an error).
pub async fn request(
    path: &Path,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, ControlError> {
    let (response, _fds) = request_with_fds(path, req, timeout).await?;
    Ok(response)
}

/// [`request`] that also returns the descriptors attached to the response.
pub async fn request_with_fds(
    path: &Path,
    req: &ControlRequest,
    timeout: Duration,
) -> Result<(ControlResponse, Vec<OwnedFd>), ControlError> {
    match tokio::time::timeout(timeout, request_inner(path, req)).await {
        Ok(result) => result,
        Err(_) => Err(ControlError::Timeout {
            path: path.to_path_buf(),
            after: timeout,
        }),
    }
}

async fn request_inner(
    path: &Path,
    req: &ControlRequest,
) -> Result<(ControlResponse, Vec<OwnedFd>), ControlError> {
    let owned = || path.to_path_buf();
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ControlError::NotFound { path: owned() },
            io::ErrorKind::ConnectionRefused => ControlError::Refused { path: owned() },
            _ => ControlError::Connect {
                path: owned(),
                source: e,
            },
        })?;
    let payload = serde_json::to_vec(req).map_err(|source| ControlError::Encode {
        path: owned(),
        source,
    })?;
    let transfer = |source| ControlError::Transfer {
        path: owned(),
        source,
    };
    fdpass::send_msg_async(&stream, &payload, &[])
        .await
        .map_err(transfer)?;
    let msg = fdpass::recv_msg_async(&stream).await.map_err(transfer)?;
    let response = serde_json::from_slice(&msg.payload).map_err(|source| ControlError::Decode {
        path: owned(),
        source,
    })?;
    Ok((response, msg.fds))
}

fn unexpected(path: &Path, response: ControlResponse) -> ControlError {
    match response {
        ControlResponse::Err { reason } => ControlError::Remote {
            path: path.to_path_buf(),
            reason,
        },
        other => ControlError::Unexpected {
            path: path.to_path_buf(),
            response: format!("{other:?}"),
        },
    }
}

/// A listener received from the predecessor.
#[derive(Debug)]
pub struct InheritedListener {
    pub desc: ListenerDesc,
    pub fd: OwnedFd,
}

impl InheritedListener {
    /// Checks the descriptor and makes it a non-blocking std listener.
    pub fn into_std(self) -> io::Result<std::net::TcpListener> {
        let name = self.desc.name;
        listener_from_fd(self.fd)
            .map_err(|e| io::Error::new(e.kind(), format!("inherited listener {name:?}: {e}")))
    }
}

/// What a successor gets from [`take_listeners`].
#[derive(Debug)]
pub struct Inherited {
    /// In the order the predecessor listed them.
    pub listeners: Vec<InheritedListener>,
    /// The predecessor's generation.
    pub source_generation: u64,
    /// Control sockets of all older generations that were alive at the
    /// hand-over, newest first: the predecessor itself, then its own
    /// `older` list. Query them with [`query_stats`]; prune those that fail.
    pub older: Vec<PathBuf>,
}

impl Inherited {
    /// This (the successor's) generation number.
    pub fn generation(&self) -> u64 {
        self.source_generation.saturating_add(1)
    }

    /// Removes and returns the listener named `name`. Listeners nobody takes
    /// are closed when `self` is dropped (e.g. removed from the config).
    /// Whether the predecessor handed over a listener of this name.
    pub fn has(&self, name: &str) -> bool {
        self.listeners.iter().any(|l| l.desc.name == name)
    }

    pub fn take(&mut self, name: &str) -> Option<InheritedListener> {
        let idx = self.listeners.iter().position(|l| l.desc.name == name)?;
        Some(self.listeners.remove(idx))
    }
}

/// Successor side: asks the predecessor at `path` for its listeners.
pub async fn take_listeners(path: &Path, my_pid: u32) -> Result<Inherited, ControlError> {
    let (response, fds) = request_with_fds(
        path,
        &ControlRequest::TakeListeners { pid: my_pid },
        DEFAULT_REQUEST_TIMEOUT,
    )
    .await?;
    match response {
        ControlResponse::Listeners {
            listeners,
            generation,
            older,
        } => {
            if listeners.len() != fds.len() {
                return Err(ControlError::FdMismatch {
                    path: path.to_path_buf(),
                    count: fds.len(),
                    described: listeners.len(),
                });
            }
            let mut all_older = Vec::with_capacity(older.len() + 1);
            all_older.push(path.to_path_buf());
            all_older.extend(older);
            Ok(Inherited {
                listeners: listeners
                    .into_iter()
                    .zip(fds)
                    .map(|(desc, fd)| InheritedListener { desc, fd })
                    .collect(),
                source_generation: generation,
                older: all_older,
            })
        }
        other => Err(unexpected(path, other)),
    }
}

/// Successor side: tells the predecessor that we accept on the listeners.
/// An error means it did not agree (or is gone): see [`ControlRequest::Ready`].
pub async fn send_ready(path: &Path, pid: u32) -> Result<(), ControlError> {
    expect_ok(path, &ControlRequest::Ready { pid }).await
}

/// Successor side: tells the predecessor why start-up failed, before
/// exiting, so the operator's `upgrade` command shows the reason.
pub async fn report_failure(path: &Path, pid: u32, reason: &str) -> Result<(), ControlError> {
    expect_ok(
        path,
        &ControlRequest::Failed {
            pid,
            reason: reason.to_owned(),
        },
    )
    .await
}

async fn expect_ok(path: &Path, req: &ControlRequest) -> Result<(), ControlError> {
    match request(path, req, DEFAULT_REQUEST_TIMEOUT).await? {
        ControlResponse::Ok => Ok(()),
        other => Err(unexpected(path, other)),
    }
}

/// Asks the process at `path` for its statistics (within [`STATS_TIMEOUT`]).
pub async fn query_stats(path: &Path) -> Result<GenerationSummary, ControlError> {
    match request(path, &ControlRequest::Stats, STATS_TIMEOUT).await? {
        ControlResponse::Stats { stats } => Ok(stats),
        other => Err(unexpected(path, other)),
    }
}

/// CLI side: asks the process at `path` to upgrade itself; returns the
/// successor's PID once it serves. `timeout` must exceed the process's
/// successor timeout (30 s by default), e.g. 60 s.
pub async fn request_upgrade(path: &Path, timeout: Duration) -> Result<u32, ControlError> {
    match request(path, &ControlRequest::Upgrade, timeout).await? {
        ControlResponse::Upgraded { pid } => Ok(pid),
        other => Err(unexpected(path, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        // Short: Unix socket paths are limited to 107 bytes.
        let dir = std::env::temp_dir().join(format!("bt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn wire_format() {
        let req = serde_json::to_string(&ControlRequest::TakeListeners { pid: 7 }).unwrap();
        assert_eq!(req, r#"{"op":"take_listeners","pid":7}"#);
        assert_eq!(
            serde_json::to_string(&ControlRequest::Upgrade).unwrap(),
            r#"{"op":"upgrade"}"#
        );
        let resp = ControlResponse::Listeners {
            listeners: vec![ListenerDesc {
                name: "rtmp".into(),
                addr: "0.0.0.0:1935".parse().unwrap(),
            }],
            generation: 2,
            older: vec![],
        };
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            text,
            r#"{"result":"listeners","listeners":[{"name":"rtmp","addr":"0.0.0.0:1935"}],"generation":2,"older":[]}"#
        );
        // Older peers may omit `older`; unknown fields are ignored.
        let parsed: ControlResponse = serde_json::from_str(
            r#"{"result":"listeners","listeners":[],"generation":1,"extra":true}"#,
        )
        .unwrap();
        assert!(matches!(
            parsed,
            ControlResponse::Listeners { generation: 1, .. }
        ));
    }

    #[test]
    fn paths() {
        let p = control_socket_path(Path::new("/run/baton"), Role::Edge, 42);
        assert_eq!(p, Path::new("/run/baton/baton-edge-42.sock"));
        assert_eq!(pid_from_control_path(&p), Some(42));
        assert_eq!(pid_from_control_path(Path::new("/tmp/other.sock")), None);

        let dir = temp_dir("live");
        let me = control_socket_path(&dir, Role::Origin, std::process::id());
        let _bound = std::os::unix::net::UnixListener::bind(&me).unwrap();
        let gone = control_socket_path(&dir, Role::Origin, u32::MAX);
        let no_file = control_socket_path(&dir, Role::Edge, std::process::id());
        assert_eq!(live_control_paths(&[gone, me.clone(), no_file]), vec![me]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn requests_reach_the_handler_and_replies_come_back() {
        let dir = temp_dir("ctl");
        // A stale socket file from a dead process with our PID is replaced.
        let stale = control_socket_path(&dir, Role::Origin, 1);
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let (server, mut calls) = ControlServer::bind(&dir, Role::Origin, 1).unwrap();
        assert_eq!(server.path(), stale);
        let meta = std::fs::symlink_metadata(server.path()).unwrap();
        assert!(meta.file_type().is_socket());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let handler = tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                match call.request {
                    ControlRequest::Stats => call.responder.reply(ControlResponse::Stats {
                        stats: GenerationSummary {
                            clients: 3,
                            ..GenerationSummary::default()
                        },
                    }),
                    ControlRequest::Ready { pid } => {
                        call.responder.reply_err(format!("not expecting {pid}"))
                    }
                    // Dropped unanswered.
                    _ => drop(call.responder),
                }
            }
        });

        let path = server.path().to_path_buf();
        assert_eq!(query_stats(&path).await.unwrap().clients, 3);
        let err = send_ready(&path, 9).await.unwrap_err();
        assert!(err.to_string().contains("not expecting 9"), "{err}");
        let err = take_listeners(&path, 9).await.unwrap_err();
        assert!(
            err.to_string().contains("dropped without an answer"),
            "{err}"
        );

        // Garbage JSON gets an error response, not a hang.
        let stream = UnixStream::connect(&path).await.unwrap();
        fdpass::send_msg_async(&stream, br#"{"op":"self_destruct"}"#, &[])
            .await
            .unwrap();
        let msg = fdpass::recv_msg_async(&stream).await.unwrap();
        let resp: ControlResponse = serde_json::from_slice(&msg.payload).unwrap();
        assert!(
            matches!(&resp, ControlResponse::Err { reason } if reason.contains("unknown")),
            "{resp:?}"
        );
        // The same connection serves a second request.
        fdpass::send_msg_async(&stream, br#"{"op":"stats"}"#, &[])
            .await
            .unwrap();
        let msg = fdpass::recv_msg_async(&stream).await.unwrap();
        let resp: ControlResponse = serde_json::from_slice(&msg.payload).unwrap();
        assert!(matches!(resp, ControlResponse::Stats { .. }), "{resp:?}");

        drop(server);
        assert!(!path.exists(), "socket file removed on drop");
        let err = query_stats(&path).await.unwrap_err();
        assert!(matches!(err, ControlError::NotFound { .. }), "{err}");
        handler.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file_and_overlong_paths() {
        let dir = temp_dir("ctlf");
        let path = control_socket_path(&dir, Role::Origin, 2);
        std::fs::write(&path, "precious").unwrap();
        let err = ControlServer::bind(&dir, Role::Origin, 2).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let long = dir.join("x".repeat(120));
        let err = ControlServer::bind(&long, Role::Origin, 2).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn timeout_when_the_handler_is_slow() {
        let dir = temp_dir("ctlt");
        let (server, mut calls) = ControlServer::bind(&dir, Role::Edge, 3).unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Some(call) = calls.recv().await {
                kept.push(call);
            }
        });
        let err = request(
            server.path(),
            &ControlRequest::Upgrade,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ControlError::Timeout { .. }), "{err}");
        held.abort();
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
