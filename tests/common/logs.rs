//! Log output captured in memory, for tests that check what is logged (and
//! that no key material is).

use std::io;
use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// Every line written through it, kept in memory; clones share the buffer.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures the events of this thread at `level` and above until the
    /// guard is dropped: run the test on a current-thread runtime so that
    /// every event is on this thread.
    pub fn capture(level: tracing::Level) -> (Logs, DefaultGuard) {
        let logs = Logs::default();
        let guard = tracing::subscriber::set_default(logs.subscriber(level));
        (logs, guard)
    }

    /// A subscriber that writes to these logs at `level` and above.
    pub fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
