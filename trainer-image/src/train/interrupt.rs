//! SIGTERM/SIGINT as a flag the training loop polls between micro-steps, so the
//! process can finish what it is doing, save a checkpoint and exit cleanly within
//! the pod's grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a termination signal has arrived.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// A flag set by SIGTERM or SIGINT; must be called inside a tokio runtime.
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let flag = Self::default();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let set = flag.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!("termination requested: saving a checkpoint after this micro-step");
            set.request();
        });
        Ok(flag)
    }

    /// Also requests a stop when stdin reaches end of file (for processes
    /// started by [`super::launch`], whose launcher holds the other end).
    pub fn on_stdin_eof(&self) {
        let flag = self.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            tracing::warn!("the launcher asked to stop: saving a checkpoint after this micro-step");
            flag.request();
        });
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
