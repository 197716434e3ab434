//! Where an origin's streams come from and go to: its own hub. A publisher
//! claims the stream in the hub, players read the hub's ring; there is
//! nothing behind it. (The edge's directory, by contrast, pulls from and
//! forwards to origins.)

use std::sync::Arc;

use baton_common::handover::Role;
use baton_common::serve::process::Service;

/// The origin as a service for the shared process supervisor.
pub fn service() -> Service {
    Service {
        role: Role::Origin,
        directory: Box::new(|hub, _shutdown| Arc::new(hub.clone())),
    }
}
