//! Smooth upgrades: handing the listening sockets from one process
//! generation to the next without losing or refusing a connection.
//!
//! Like nginx's binary upgrade, HAProxy's seamless reload and Pingora's
//! graceful upgrade, the new process does not bind its own sockets while
//! the old one runs: it receives *the same* listening sockets over a Unix
//! socket (`SCM_RIGHTS`). One socket means one accept queue shared by both
//! processes, so a connection the kernel has queued is accepted by whichever
//! process calls `accept` next, and nothing is reset when the old process
//! closes its copy. (`SO_REUSEPORT` with two sockets has two queues; closing
//! one resets what is queued on it, so it is only a fallback.)
//!
//! The sequence, origin and edge alike:
//!
//! 1. Every process serves a [`ControlServer`] at
//!    `{control_dir}/baton-{role}-{pid}.sock`.
//! 2. `upgrade` (CLI request) or SIGUSR2 reaches the running process, which
//!    starts its successor with [`Upgrader::spawn_and_wait`] — the
//!    successor's environment has `BATON_UPGRADE_FROM=<old control socket>`
//!    — and keeps accepting.
//! 3. The successor sees [`upgrade_source_from_env`], calls
//!    [`take_listeners`] (the old process answers with duplicates of its
//!    listening descriptors), starts accepting on them, writes the PID file
//!    and calls [`send_ready`].
//! 4. On `ready` the old process stops accepting (drops its listeners) and
//!    drains; the `upgrade` request is answered with the successor's PID.
//!    If the successor exits or is not ready in time, it is killed and the
//!    old process carries on as if nothing happened.
//!
//! Modules: [`fdpass`] (descriptors over Unix sockets), [`control`] (the
//! control socket protocol, server and clients), [`successor`] (spawning the
//! next generation), [`pidfile`], [`listener`] (binding and adopting TCP
//! listeners). Linux only.

pub mod control;
pub mod fdpass;
pub mod listener;
pub mod pidfile;
pub mod successor;

pub use control::{
    control_socket_path, live_control_paths, pid_from_control_path, query_stats, report_failure,
    request, request_upgrade, request_with_fds, send_ready, take_listeners,
    upgrade_source_from_env, ControlCall, ControlError, ControlRequest, ControlResponse,
    ControlServer, GenerationSummary, Inherited, InheritedListener, ListenerDesc, Responder, Role,
    DEFAULT_REQUEST_TIMEOUT, STATS_TIMEOUT, UPGRADE_FROM_ENV,
};
pub use fdpass::{FdPassError, Received};
pub use listener::{
    bind_listener, dup_fd, into_tokio, listener_from_fd, BindError, DEFAULT_BACKLOG,
};
pub use pidfile::{is_alive, PidFile};
pub use successor::{
    ReadyVerdict, SuccessorCommand, UpgradeError, Upgrader, DEFAULT_SUCCESSOR_TIMEOUT,
};

#[cfg(test)]
mod tests;
