//! `baton-edge`: the node every client talks to, in front of the origins.
//!
//! Its client side is the shared serving layer (`baton_common::serve`:
//! the same URLs, limits, slow-player policy, drain and smooth upgrade as
//! an origin); what is the edge's own is where streams come from and go
//! to: `streams.rs` (the directory: pull on the first player, forward a
//! publish), `origins.rs` (one health table: probes, failures, DNS),
//! `locate.rs` (rendezvous order of origins per stream), `pull.rs` and
//! `forward.rs` (the upstream tasks, failing over without the clients
//! noticing), `upstream.rs` (the RTMP client glue), `retry.rs` (when to try
//! which origin). `baton-edge stack` runs a local stack to try it all.

mod forward;
mod locate;
mod origin_tls;
mod origins;
mod pull;
mod retry;
mod settings;
mod stack;
mod status;
mod streams;
mod upstream;

use std::process::ExitCode;
use std::sync::Arc;

use baton_common::handover::Role;
use baton_common::serve::process::{self, NodeCommand, Service};
use baton_common::serve::settings::{Settings, SettingsArgs};
use clap::{Parser, Subcommand};

use settings::{EdgeArgs, EdgeSettings};
use streams::{EdgeCore, EdgeDirectory};

#[derive(Debug, Parser)]
#[command(
    name = "baton-edge",
    version,
    about = "Baton edge: clients connect here; streams are pulled from and forwarded to origins, \
             and an origin can die, drain or upgrade without a client noticing",
    after_help = "Signals: SIGTERM/SIGINT fast exit; SIGQUIT graceful exit; SIGUSR2 smooth upgrade; SIGHUP reloads the TLS certificate.\n\
                  Shared settings are top-level keys of the TOML file (--config); edge settings \
                  go in its [edge] table."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<EdgeCommand>,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    edge: EdgeArgs,
}

#[derive(Debug, Subcommand)]
enum EdgeCommand {
    #[command(flatten)]
    Node(NodeCommand),
    /// Run a local stack on loopback: two origins behind one edge (built-in
    /// defaults), printing where to publish and play and the origins' PIDs.
    /// Kill an origin with -9 while you watch: nothing happens to the
    /// stream (the stack restarts it). Ctrl-C stops everything.
    Stack(stack::StackArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(EdgeCommand::Stack(args)) => return stack::run(args),
        Some(EdgeCommand::Node(command)) => Some(command),
        None => None,
    };
    process::main(Role::Edge, command, || {
        let settings = Settings::resolve(&cli.settings)?;
        let file = cli.settings.with_file()?.edge;
        let mut edge = EdgeSettings::resolve(&cli.edge, file.as_ref())?;
        // One token for a cluster unless the origins' is given apart.
        if edge.origin_api_token.is_none() {
            edge.origin_api_token = settings.api_token.clone();
        }
        let origin_tls = origin_tls::OriginTls::new(&edge)?;
        Ok((settings.clone(), service(settings, edge, origin_tls)))
    })
}

/// The edge as a service for the shared process supervisor.
fn service(settings: Settings, edge: EdgeSettings, origin_tls: origin_tls::OriginTls) -> Service {
    Service {
        role: Role::Edge,
        directory: Box::new(move |hub, shutdown| {
            let origins = origins::Origins::new(&edge);
            tokio::spawn(origins.clone().probe_forever(edge.health_interval));
            if let Some(dns) = edge.origin_dns.clone() {
                let tls_name = dns.tls.then(|| {
                    let name = edge.origin_tls_name.as_deref().unwrap_or(&dns.name);
                    settings::TlsName(Some(settings::intern(name)))
                });
                tokio::spawn(
                    origins
                        .clone()
                        .resolve_forever(dns, edge.dns_server, tls_name),
                );
            }
            let core = Arc::new(EdgeCore {
                hub: hub.clone(),
                origins,
                origin_tls,
                settings: edge,
                shutdown: shutdown.clone(),
                play_wait_timeout: settings.play_wait_timeout,
                auth: settings.auth.clone(),
            });
            EdgeDirectory::new(core)
        }),
    }
}
