//! Log output captured in memory, for tests that check what is logged (and
//! that no key material is).
//!
//! One global subscriber serves the whole test binary and routes each event
//! to the capture of the thread that logged it. A subscriber scoped with
//! `tracing::subscriber::set_default` is not enough: `tracing` caches whether
//! a call site is enabled, and a test that registers a call site on another
//! thread while a scoped subscriber is being installed caches "never" for it,
//! so the capturing test sees nothing (this failed in CI).

use std::cell::RefCell;
use std::io;
use std::sync::{Arc, Mutex, Once, OnceLock};

use tracing::{Level, Metadata};
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

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

thread_local! {
    /// This thread's capture and the most verbose level it keeps.
    static CAPTURE: RefCell<Option<(Logs, Level)>> = const { RefCell::new(None) };
}

/// The capture of every thread, when a test binary asked for it.
static EVERYTHING: OnceLock<Logs> = OnceLock::new();

/// Ends a thread's capture when dropped.
pub struct Capture(());

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    /// Captures the events of this thread at `level` and above until the
    /// guard is dropped: run the test on a current-thread runtime so that
    /// every event is on this thread.
    pub fn capture(level: Level) -> (Logs, Capture) {
        install();
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some((logs.clone(), level)));
        (logs, Capture(()))
    }

    /// The events of every thread and task, at every level, from the first
    /// call on; for test binaries whose work runs on runtimes of their own.
    #[allow(dead_code)] // not every test binary needs it
    pub fn everything() -> &'static Logs {
        let logs = EVERYTHING.get_or_init(Logs::default);
        install();
        logs
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Whether anyone keeps an event with this metadata.
fn wanted(meta: &Metadata<'_>) -> bool {
    EVERYTHING.get().is_some()
        || CAPTURE.with(|c| {
            c.borrow()
                .as_ref()
                .is_some_and(|(_, level)| meta.level() <= level)
        })
}

/// Installs the binary's one subscriber, once.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(Route)
            // Dynamic: a plain `filter_fn` caches its first answer per call
            // site, so a call site first reached on a thread capturing at
            // WARN would stay off for a later test capturing at INFO.
            .with_filter(dynamic_filter_fn(|meta, _| wanted(meta)));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the test binary's only subscriber");
    });
}

/// Writes each event to the captures that keep it.
struct Route;

/// The captures one event goes to.
struct Targets(Vec<Logs>);

impl io::Write for Targets {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for logs in &mut self.0 {
            logs.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Route {
    type Writer = Targets;

    fn make_writer(&'a self) -> Targets {
        Targets(Vec::new())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Targets {
        let mut targets: Vec<Logs> = EVERYTHING.get().cloned().into_iter().collect();
        CAPTURE.with(|c| {
            if let Some((logs, level)) = c.borrow().as_ref() {
                if meta.level() <= level {
                    targets.push(logs.clone());
                }
            }
        });
        Targets(targets)
    }
}
