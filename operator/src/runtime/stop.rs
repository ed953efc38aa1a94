//! A stop signal that many tasks can wait on: shutdown of the process, or of the
//! controllers when leadership ends.

use tokio::sync::watch;

/// Fires a [`Stop`].
pub struct StopTrigger {
    tx: watch::Sender<bool>,
}

/// Resolves once its trigger fires (or is dropped); cheap to clone.
#[derive(Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
}

/// A new trigger and the signal it fires.
pub fn stop_signal() -> (StopTrigger, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopTrigger { tx }, Stop { rx })
}

impl StopTrigger {
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl Stop {
    /// Wait for the signal. A dropped trigger counts as fired, so nothing waits forever.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Fires when the process receives SIGTERM or SIGINT.
pub fn on_termination_signal() -> Stop {
    let (trigger, stop) = stop_signal();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
        trigger.fire();
        // Keep the sender alive so waiters see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_signal() {
        let (trigger, stop) = stop_signal();
        let other = stop.clone();
        assert!(!stop.is_stopped());
        trigger.fire();
        stop.wait().await;
        other.wait().await;
        assert!(other.is_stopped());
    }

    #[tokio::test]
    async fn a_dropped_trigger_releases_waiters() {
        let (trigger, stop) = stop_signal();
        drop(trigger);
        stop.wait().await;
    }
}
