//! `baton-edge stack`: the whole system on one machine for a first look.
//! Two origins on loopback behind one edge on the default ports; the
//! banner says where to publish and play (the edge) and which PIDs to
//! `kill -9` to see that nothing happens. An origin that dies is started
//! again a second later, so it can be killed again. Ctrl-C (or SIGTERM)
//! stops the edge and the origins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, clap::Args)]
pub struct StackArgs {
    /// The edge's RTMP address.
    #[arg(long, default_value = "127.0.0.1:1935")]
    rtmp: SocketAddr,
    /// The edge's HTTP-FLV address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The edge's API address.
    #[arg(long, default_value = "127.0.0.1:1985")]
    api: SocketAddr,
    /// First port of the origins (each takes three: RTMP, HTTP-FLV, API).
    #[arg(long, default_value_t = 19350)]
    origin_base_port: u16,
    /// Log filter passed to every process.
    #[arg(long, default_value = "warn")]
    log: String,
}

struct OriginProc {
    index: usize,
    rtmp: SocketAddr,
    http: SocketAddr,
    api: SocketAddr,
    child: Child,
}

pub fn run(args: StackArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("baton-edge stack: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(stack(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("baton-edge stack: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        anyhow::bail!(
            "{} not found next to baton-edge; build both: cargo build --release -p baton-origin -p baton-edge",
            path.display()
        );
    }
    Ok(path)
}

fn spawn_origin(bin: &PathBuf, o: &mut OriginProc, log: &str) -> anyhow::Result<()> {
    o.child = Command::new(bin)
        .args(["--rtmp", &o.rtmp.to_string(), "--http", &o.http.to_string()])
        .args(["--api", &o.api.to_string(), "--log", log])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    Ok(())
}

async fn stack(args: StackArgs) -> anyhow::Result<()> {
    let origin_bin = sibling("baton-origin")?;
    let edge_bin = std::env::current_exe()?;
    let mut origins = Vec::new();
    for index in 0..2u16 {
        let port = args.origin_base_port + index * 3;
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut o = OriginProc {
            index: usize::from(index) + 1,
            rtmp: at(port),
            http: at(port + 1),
            api: at(port + 2),
            child: Command::new("true").spawn()?,
        };
        spawn_origin(&origin_bin, &mut o, &args.log)?;
        origins.push(o);
    }
    let mut edge = Command::new(&edge_bin);
    edge.args([
        "--rtmp",
        &args.rtmp.to_string(),
        "--http",
        &args.http.to_string(),
    ])
    .args(["--api", &args.api.to_string(), "--log", &args.log])
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true);
    for o in &origins {
        edge.args(["--origin", &format!("{},api={}", o.rtmp, o.api)]);
    }
    let mut edge = edge.spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rtmp, http, api) = (args.rtmp, args.http, args.api);
    println!("Baton local stack: one edge in front of two origins (loopback)");
    println!("  publish:  rtmp://{rtmp}/live/demo   (OBS: server rtmp://{rtmp}/live, key demo)");
    println!("            ffmpeg -re -f lavfi -i testsrc2=size=1280x720:rate=30 -f lavfi -i sine -c:v libx264 -preset veryfast -g 60 -c:a aac -f flv rtmp://{rtmp}/live/demo");
    println!(
        "  play:     ffplay rtmp://{rtmp}/live/demo   or   ffplay http://{http}/live/demo.flv"
    );
    println!(
        "  edge:     pid {}  api http://{api}/api/v1/upstreams",
        edge.id().unwrap_or(0)
    );
    for o in &origins {
        println!(
            "  origin {}: pid {}  rtmp {}  api http://{}/api/v1/streams",
            o.index,
            o.child.id().unwrap_or(0),
            o.rtmp,
            o.api
        );
    }
    println!("  try:      kill -9 <an origin pid>   (players and the publisher carry on; the stack restarts it)");
    println!("  stop:     Ctrl-C");
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            status = edge.wait() => {
                anyhow::bail!("the edge exited ({})", status.map(|s| s.to_string()).unwrap_or_default());
            }
            _ = tick.tick() => {
                for o in &mut origins {
                    if let Ok(Some(status)) = o.child.try_wait() {
                        println!("  origin {} exited ({status}); starting it again", o.index);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        spawn_origin(&origin_bin, o, &args.log)?;
                        println!("  origin {}: pid {}", o.index, o.child.id().unwrap_or(0));
                    }
                }
            }
        }
    }
    println!("stopping the stack");
    for child in std::iter::once(&mut edge).chain(origins.iter_mut().map(|o| &mut o.child)) {
        if let Some(pid) = child.id() {
            // SIGTERM: each process closes its clients and exits at once.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    for child in std::iter::once(&mut edge).chain(origins.iter_mut().map(|o| &mut o.child)) {
        let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    }
    Ok(())
}
