//! Shared by the benchmarks: the clock they are timed with.
//!
//! The benchmarks run on machines shared with other work (two cores and
//! parallel builds, here), where wall time mostly measures how often the
//! benchmark thread was descheduled. By default they are timed with the
//! thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`), which stops while the
//! thread waits; `BENCH_CLOCK=wall` switches to wall time. Everything a
//! benchmark measures runs on its own thread (the miss path uses a
//! current-thread runtime), so the two agree on an idle machine.

#![allow(dead_code)]

/// The services, runtime and keys the benchmarks share with the tools in `perf/`.
#[path = "../../support/mod.rs"]
pub mod harness;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;

/// The clock benchmarks are timed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// CPU time of the calling thread.
    ThreadCpu,
    /// Wall time.
    Wall,
}

impl Clock {
    /// `BENCH_CLOCK=wall` or thread CPU time.
    pub fn from_env() -> Self {
        match std::env::var("BENCH_CLOCK").as_deref() {
            Ok("wall") => Self::Wall,
            _ => Self::ThreadCpu,
        }
    }

    /// The current reading of this clock.
    pub fn now(self) -> Duration {
        match self {
            Self::ThreadCpu => thread_cpu_time(),
            Self::Wall => {
                static ORIGIN: OnceLock<Instant> = OnceLock::new();
                ORIGIN.get_or_init(Instant::now).elapsed()
            }
        }
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        self.now()
    }

    fn end(&self, started: Duration) -> Duration {
        self.now().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

/// Criterion timed with [`Clock::from_env`].
pub fn criterion() -> Criterion<Clock> {
    let clock = Clock::from_env();
    eprintln!(
        "timing with {}",
        match clock {
            Clock::ThreadCpu => "thread CPU time (BENCH_CLOCK=wall for wall time)",
            Clock::Wall => "wall time",
        }
    );
    Criterion::default().with_measurement(clock)
}
