//! Closing one client's connection from elsewhere in the process, with the
//! reason it goes.
//!
//! Three parts of a node end a single client on purpose: the API
//! (`DELETE /api/v1/clients/ID`), the memory governor shedding the largest
//! buffered input, and an edge whose origin refused the publish it
//! forwards. The connection logs one line when it ends; that line must
//! name which of them it was, so the kick carries its reason.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// What a kick says when whoever kicked gave no reason of its own.
pub const KICKED_THROUGH_THE_API: &str = "kicked through the API";

/// A cancellation token with the reason of its (first) cancellation.
#[derive(Debug, Clone, Default)]
pub struct Kick {
    token: CancellationToken,
    reason: Arc<OnceLock<&'static str>>,
}

impl Kick {
    pub fn new() -> Self {
        Self::default()
    }

    /// Close the connection, saying why; the first reason given stays.
    pub fn kick(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn is_kicked(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why the connection was kicked ([`KICKED_THROUGH_THE_API`] if it was
    /// not said).
    pub fn reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or(KICKED_THROUGH_THE_API)
    }

    /// Resolves once kicked.
    pub async fn kicked(&self) {
        self.token.cancelled().await
    }

    /// [`Kick::kicked`] for a future that must own what it waits on.
    pub fn kicked_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stays() {
        let kick = Kick::new();
        assert!(!kick.is_kicked());
        assert_eq!(kick.reason(), KICKED_THROUGH_THE_API);
        let seen_by_the_connection = kick.clone();
        kick.kick("memory shed");
        kick.kick("a later reason");
        assert!(seen_by_the_connection.is_kicked());
        assert_eq!(seen_by_the_connection.reason(), "memory shed");
    }
}
