//! End-to-end tests of the hand-over: listeners passed through a real
//! control socket while clients keep connecting, the `SO_REUSEPORT`
//! counter-example, and successor start-up success and failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    // Short: Unix socket paths are limited to 107 bytes.
    let dir = std::env::temp_dir().join(format!("bt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the origin's main loop does with control requests, reduced to the
/// hand-over: answer `take_listeners` with duplicates of `listeners`, and on
/// an accepted `ready` tell the accept loops to stop (and drop our copies).
async fn old_side_main_loop(
    mut calls: mpsc::Receiver<ControlCall>,
    upgrader: Upgrader,
    mut listeners: Option<Vec<(ListenerDesc, Arc<TcpListener>)>>,
    stop_accepting: watch::Sender<bool>,
) {
    while let Some(ControlCall { request, responder }) = calls.recv().await {
        match request {
            ControlRequest::TakeListeners { .. } => {
                let Some(ls) = listeners.as_ref() else {
                    responder.reply_err("draining; listeners already handed over");
                    continue;
                };
                let fds: std::io::Result<Vec<_>> = ls.iter().map(|(_, l)| dup_fd(&**l)).collect();
                match fds {
                    Ok(fds) => responder.reply_with_fds(
                        ControlResponse::Listeners {
                            listeners: ls.iter().map(|(d, _)| d.clone()).collect(),
                            generation: 0,
                            older: Vec::new(),
                        },
                        fds,
                    ),
                    Err(e) => responder.reply_err(format!("cannot duplicate listeners: {e}")),
                }
            }
            ControlRequest::Ready { pid } => {
                let verdict = upgrader.on_ready(pid);
                match verdict {
                    ReadyVerdict::Rejected(reason) => responder.reply_err(reason),
                    _ => {
                        // Drop our copies and stop the accept loops, then
                        // confirm.
                        listeners = None;
                        let _ = stop_accepting.send(true);
                        responder.reply(ControlResponse::Ok);
                    }
                }
            }
            ControlRequest::Failed { pid, reason } => {
                upgrader.on_failed(pid, &reason);
                responder.reply(ControlResponse::Ok);
            }
            ControlRequest::Stats => responder.reply(ControlResponse::Stats {
                stats: GenerationSummary::default(),
            }),
            ControlRequest::Upgrade => responder.reply_err("not in this test"),
        }
    }
}

/// Accepts until told to stop, greeting each connection with `greeting`;
/// returns how many it accepted. The listener is dropped when it returns.
async fn accept_loop(
    listener: Arc<TcpListener>,
    greeting: u8,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let mut accepted = 0;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return accepted,
            conn = listener.accept() => match conn {
                Ok((mut stream, _)) => {
                    accepted += 1;
                    tokio::spawn(async move {
                        let _ = stream.write_all(&[greeting]).await;
                    });
                }
                Err(e) => panic!("accept failed: {e}"),
            },
        }
    }
}

/// Connects and reads the one-byte greeting.
async fn connect_and_read(addr: SocketAddr) -> Result<u8, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(b[0])
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no greeting within 10 s (stuck in a queue?)".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_under_load_loses_no_connection() {
    const TOTAL: usize = 2000;
    const CLIENTS: usize = 16;

    let dir = temp_dir("load");
    let std_listener =
        bind_listener("127.0.0.1:0".parse().unwrap(), false, DEFAULT_BACKLOG).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let old_listener = Arc::new(into_tokio(std_listener).unwrap());

    // Old generation: control server, main loop, accept loop.
    let (server, calls) = ControlServer::bind(&dir, Role::Origin, 1).unwrap();
    let old_path = server.path().to_path_buf();
    let (stop_old_tx, stop_old_rx) = watch::channel(false);
    let main_loop = tokio::spawn(old_side_main_loop(
        calls,
        Upgrader::new(&old_path),
        Some(vec![(
            ListenerDesc {
                name: "rtmp".into(),
                addr,
            },
            Arc::clone(&old_listener),
        )]),
        stop_old_tx,
    ));
    let old_accept = tokio::spawn(accept_loop(Arc::clone(&old_listener), b'O', stop_old_rx));
    let weak_old = Arc::downgrade(&old_listener);
    drop(old_listener);

    // Clients connect continuously.
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                results.push(connect_and_read(addr).await);
                done.fetch_add(1, Ordering::Relaxed);
            }
            results
        }));
    }

    // Midway, the new generation takes over.
    while done.load(Ordering::Relaxed) < TOTAL / 4 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut inherited = take_listeners(&old_path, 2).await.unwrap();
    assert_eq!(inherited.generation(), 1);
    assert_eq!(inherited.older, vec![old_path.clone()]);
    let rtmp = inherited.take("rtmp").unwrap();
    assert_eq!(rtmp.desc.addr, addr);
    let new_listener = Arc::new(into_tokio(rtmp.into_std().unwrap()).unwrap());
    let (stop_new_tx, stop_new_rx) = watch::channel(false);
    let new_accept = tokio::spawn(accept_loop(new_listener, b'N', stop_new_rx));
    send_ready(&old_path, 2).await.unwrap();
    let handed_over_at = done.load(Ordering::Relaxed);

    // The old generation stops accepting and closes its copy.
    let old_accepted = old_accept.await.unwrap();
    assert!(
        weak_old.upgrade().is_none(),
        "old generation still holds the listener"
    );

    let mut errors = Vec::new();
    let (mut by_old, mut by_new) = (0, 0);
    for c in clients {
        for r in c.await.unwrap() {
            match r {
                Ok(b'O') => by_old += 1,
                Ok(b'N') => by_new += 1,
                Ok(other) => errors.push(format!("bad greeting {other}")),
                Err(e) => errors.push(e),
            }
        }
    }
    let _ = stop_new_tx.send(true);
    let new_accepted = new_accept.await.unwrap();
    eprintln!(
        "handover at ~{handed_over_at}/{TOTAL}: old served {by_old}, new served {by_new}, errors {}",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} failures, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(by_old + by_new, TOTAL);
    assert_eq!(old_accepted + new_accepted, TOTAL);
    assert!(
        by_old >= TOTAL / 4 && by_new > 0,
        "old {by_old} new {by_new}"
    );

    main_loop.abort();
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn queued_connections_survive_the_old_copy_closing() {
    const QUEUED: usize = 20;
    let dir = temp_dir("queue");
    let std_listener = bind_listener("127.0.0.1:0".parse().unwrap(), false, 128).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let old_listener = Arc::new(into_tokio(std_listener).unwrap());

    // Nobody accepts: the connections complete the handshake and wait in
    // the kernel's accept queue.
    let mut clients = Vec::new();
    for _ in 0..QUEUED {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }

    let (server, calls) = ControlServer::bind(&dir, Role::Edge, 1).unwrap();
    let (stop_tx, _stop_rx) = watch::channel(false);
    let main_loop = tokio::spawn(old_side_main_loop(
        calls,
        Upgrader::new(server.path()),
        Some(vec![(
            ListenerDesc {
                name: "http".into(),
                addr,
            },
            Arc::clone(&old_listener),
        )]),
        stop_tx,
    ));
    let inherited = take_listeners(server.path(), 2).await.unwrap();
    send_ready(server.path(), 2).await.unwrap();
    // A second successor is refused: the listeners are gone.
    let err = take_listeners(server.path(), 3).await.unwrap_err();
    assert!(err.to_string().contains("already handed over"), "{err}");
    // Old generation closes every copy it had.
    drop(old_listener);
    main_loop.abort();
    let _ = main_loop.await;

    let new_listener = into_tokio(
        inherited
            .listeners
            .into_iter()
            .next()
            .unwrap()
            .into_std()
            .unwrap(),
    )
    .unwrap();
    for _ in 0..QUEUED {
        let (mut s, _) = new_listener.accept().await.unwrap();
        s.write_all(b"N").await.unwrap();
    }
    for mut c in clients {
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"N");
    }
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Why `SO_REUSEPORT` is only a fallback: two REUSEPORT sockets have two
/// accept queues, and closing one resets every connection queued on it.
#[test]
fn closing_a_reuseport_listener_resets_its_queued_connections() {
    use std::io::{Read, Write};

    if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        eprintln!("net.ipv4.tcp_migrate_req=1 migrates queued connections; nothing to show");
        return;
    }
    const CONNS: usize = 64;
    let old = bind_listener("127.0.0.1:0".parse().unwrap(), true, 128).unwrap();
    let addr = old.local_addr().unwrap();
    let new = bind_listener(addr, true, 128).unwrap();

    let mut clients: Vec<std::net::TcpStream> = (0..CONNS)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Let the final ACKs land so every connection sits in one of the queues.
    std::thread::sleep(Duration::from_millis(200));
    drop(old);

    let mut served_by_new = 0;
    loop {
        match new.accept() {
            Ok((mut s, _)) => {
                s.write_all(b"N").unwrap();
                served_by_new += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    let mut resets = 0;
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) => assert_eq!(&b, b"N"),
            Ok(_) => resets += 1, // orderly EOF would be a loss too
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => resets += 1,
            Err(e) => panic!("unexpected client error: {e}"),
        }
    }
    eprintln!("SO_REUSEPORT: {served_by_new} served by the remaining socket, {resets} reset");
    assert_eq!(served_by_new + resets, CONNS);
    // Each connection picks a socket by hash: with 64 of them, all landing
    // on the remaining socket has probability 2^-64.
    assert!(
        resets > 0,
        "expected queued connections of the closed socket to be reset"
    );
}

async fn wait_for_pending(upgrader: &Upgrader) -> u32 {
    for _ in 0..500 {
        if let Some(pid) = upgrader.in_progress() {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("successor never started");
}

#[tokio::test]
async fn successor_that_exits_is_reported_with_its_status() {
    let upgrader = Upgrader::new("/nonexistent/ctl.sock");
    let cmd = SuccessorCommand::new("/bin/sh")
        .args(["-c", "echo bad config >&2; exit 1"])
        .timeout(Duration::from_secs(10));
    let err = upgrader.spawn_and_wait(&cmd).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, UpgradeError::Exited { .. }), "{text}");
    assert!(text.contains("exit status: 1"), "{text}");
    assert!(upgrader.in_progress().is_none());

    let err = upgrader
        .spawn_and_wait(&SuccessorCommand::new("/nonexistent/baton-origin"))
        .await
        .unwrap_err();
    assert!(matches!(err, UpgradeError::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/baton-origin"),
        "{err}"
    );
}

#[tokio::test]
async fn successor_that_hangs_is_killed_after_the_timeout() {
    let upgrader = Upgrader::new("/nonexistent/ctl.sock");
    let cmd = SuccessorCommand::new("sleep")
        .arg("30")
        .timeout(Duration::from_millis(300));
    let waiting = {
        let upgrader = upgrader.clone();
        let cmd = cmd.clone();
        tokio::spawn(async move { upgrader.spawn_and_wait(&cmd).await })
    };
    let pid = wait_for_pending(&upgrader).await;
    assert!(is_alive(pid));
    // Only one upgrade at a time.
    let err = upgrader.spawn_and_wait(&cmd).await.unwrap_err();
    assert!(
        matches!(err, UpgradeError::InProgress { pid: p } if p == pid),
        "{err}"
    );

    let err = waiting.await.unwrap().unwrap_err();
    assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("killed"), "{err}");
    assert!(
        !is_alive(pid),
        "timed-out successor must be killed and reaped"
    );
    // Its late `ready` is refused.
    assert!(!upgrader.on_ready(pid).hand_over());
    assert!(upgrader.in_progress().is_none());
}

#[tokio::test]
async fn dropping_the_wait_kills_the_successor() {
    let upgrader = Upgrader::new("/nonexistent/ctl.sock");
    let cmd = SuccessorCommand::new("sleep").arg("30");
    let waiting = {
        let upgrader = upgrader.clone();
        tokio::spawn(async move { upgrader.spawn_and_wait(&cmd).await })
    };
    let pid = wait_for_pending(&upgrader).await;
    waiting.abort();
    let _ = waiting.await;
    for _ in 0..200 {
        if !is_alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!is_alive(pid));
    assert!(upgrader.in_progress().is_none());
}

async fn upgrade_round_trip_setup(
    tag: &str,
) -> (
    PathBuf,
    ControlServer,
    Upgrader,
    tokio::task::JoinHandle<()>,
    watch::Receiver<bool>,
) {
    let dir = temp_dir(tag);
    let (server, calls) = ControlServer::bind(&dir, Role::Origin, 1).unwrap();
    let upgrader = Upgrader::new(server.path());
    let (stop_tx, stop_rx) = watch::channel(false);
    let main_loop = tokio::spawn(old_side_main_loop(
        calls,
        upgrader.clone(),
        Some(Vec::new()),
        stop_tx,
    ));
    (dir, server, upgrader, main_loop, stop_rx)
}

#[tokio::test]
async fn successor_ready_over_the_control_socket_completes_the_upgrade() {
    let (dir, server, upgrader, main_loop, stop_rx) = upgrade_round_trip_setup("ready").await;
    let env_file = dir.join("env");
    // The "successor" records BATON_UPGRADE_FROM and idles; the test plays
    // its control-socket part.
    let cmd = SuccessorCommand::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo \"$BATON_UPGRADE_FROM $EXTRA\" > {}; exec sleep 30",
            env_file.display()
        ))
        .env("EXTRA", "x1");
    let waiting = {
        let upgrader = upgrader.clone();
        tokio::spawn(async move { upgrader.spawn_and_wait(&cmd).await })
    };
    let pid = wait_for_pending(&upgrader).await;
    assert!(!*stop_rx.borrow(), "old side keeps accepting until ready");
    // Someone else's `ready` does not count while ours is pending.
    let err = send_ready(server.path(), pid + 100_000).await.unwrap_err();
    assert!(err.to_string().contains("in progress"), "{err}");
    assert!(!*stop_rx.borrow());

    send_ready(server.path(), pid).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), pid);
    assert!(*stop_rx.borrow(), "old side stops accepting on ready");
    assert!(is_alive(pid), "a ready successor keeps running");
    let seen = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(seen.trim(), format!("{} x1", server.path().display()));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    main_loop.abort();
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn successor_failure_reason_reaches_the_upgrade_error() {
    let (dir, server, upgrader, main_loop, stop_rx) = upgrade_round_trip_setup("fail").await;
    let cmd = SuccessorCommand::new("/bin/sh").args(["-c", "sleep 1; exit 3"]);
    let waiting = {
        let upgrader = upgrader.clone();
        tokio::spawn(async move { upgrader.spawn_and_wait(&cmd).await })
    };
    let pid = wait_for_pending(&upgrader).await;
    report_failure(server.path(), pid, "config: bad listen address")
        .await
        .unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("config: bad listen address"), "{text}");
    assert!(!*stop_rx.borrow());
    main_loop.abort();
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
