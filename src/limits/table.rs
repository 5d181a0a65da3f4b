//! The rate-limit state of one process: one GCRA TAT per (subject, limit),
//! in a sharded table of bounded size.
//!
//! Invariants:
//! - A request is admitted only if every limit it is charged against admits
//!   it, and then all of them are charged, under the locks of every shard
//!   involved (taken in shard order): concurrent requests are serialised per
//!   shard, so no interleaving admits more than one request would alone.
//! - The table knows nothing of the key cache: a key's buckets survive the
//!   cache's expiry, eviction and invalidation of the key.
//! - A bucket is dropped only when idle (TAT at or before now, and nothing
//!   left to sync), which loses nothing (see [`gcra`](super::gcra)). When a
//!   shard is full of busy buckets, a request that needs a new one is
//!   refused rather than a busy bucket dropped: memory stays bounded and no
//!   limit is ever reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::gcra;
use super::spec::RateLimit;
use crate::key::KeyId;

/// Whose budget a limit spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    /// One key: its own limits, or a route's default for keys without any.
    Key(KeyId),
    /// Every key of a service account.
    Account(Arc<str>),
}

impl Subject {
    /// The subject as text, for a shared store: `key:<id>`, `account:<id>`.
    pub(crate) fn to_text(&self) -> String {
        match self {
            Self::Key(id) => format!("key:{id}"),
            Self::Account(account) => format!("account:{account}"),
        }
    }
}

/// One subject's limits, charged together with the others of a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Charge<'a> {
    pub(crate) subject: &'a Subject,
    pub(crate) limits: &'a [RateLimit],
}

/// Where one limit stands after a decision, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Index of the charge, then of the limit within it.
    pub(crate) charge: usize,
    pub(crate) limit: RateLimit,
    /// Requests of cost 1 still admitted now.
    pub(crate) remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub(crate) reset_ns: u64,
}

/// A decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted and charged; the most restrictive limit, if any applied.
    Admitted(Option<Standing>),
    /// Refused by this limit; retry after `retry_ns` (`u64::MAX`: never, the
    /// cost exceeds the burst).
    Limited { standing: Standing, retry_ns: u64 },
    /// Refused: the table is full of busy buckets.
    Full,
}

struct Bucket {
    limit: RateLimit,
    tat: u64,
    /// Cost admitted here and not yet synced (shared mode only).
    unsynced: u64,
}

impl Bucket {
    fn idle(&self, now: u64) -> bool {
        self.tat <= now && self.unsynced == 0
    }
}

/// Most buckets one subject keeps: more appear only when its limits change
/// often within their periods; idle ones go first.
const MAX_BUCKETS_PER_SUBJECT: usize = 32;

#[derive(Default)]
struct Shard {
    subjects: HashMap<Subject, Vec<Bucket>, foldhash::fast::RandomState>,
    /// Subjects after the last sweep: the next sweep comes at twice this.
    swept_len: usize,
}

impl Shard {
    /// Drops idle subjects and idle buckets.
    fn sweep(&mut self, now: u64) {
        self.subjects.retain(|_, buckets| {
            buckets.retain(|b| !b.idle(now));
            !buckets.is_empty()
        });
        self.subjects.shrink_to(self.subjects.len() * 2);
        self.swept_len = self.subjects.len();
    }
}

/// One limit's decision for charge `charge` at `now`: its new TAT and where
/// it would stand, or the refusal.
fn decide(
    charge: usize,
    limit: &RateLimit,
    tat: u64,
    now: u64,
    cost: u64,
) -> Result<(u64, Standing), Verdict> {
    match gcra::next_tat(tat, now, cost, limit) {
        Ok(new_tat) => Ok((
            new_tat,
            Standing {
                charge,
                limit: *limit,
                remaining: gcra::remaining(new_tat, now, limit),
                reset_ns: gcra::until_full(new_tat, now),
            },
        )),
        Err(retry_ns) => Err(Verdict::Limited {
            standing: Standing {
                charge,
                limit: *limit,
                remaining: 0,
                reset_ns: gcra::until_full(tat, now),
            },
            retry_ns,
        }),
    }
}

/// Keeps the limit with the fewest requests left.
fn tighten(tightest: &mut Option<Standing>, standing: Standing) {
    if tightest.is_none_or(|t| standing.remaining < t.remaining) {
        *tightest = Some(standing);
    }
}

/// The table. Cheap to share behind an `Arc`.
pub(crate) struct Table {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    track_unsynced: bool,
}

const SHARDS: usize = 64;

impl Table {
    /// A table of at most `max_subjects` subjects (at least one per shard);
    /// `shared`: count what is admitted for a sync with other replicas.
    pub(crate) fn new(max_subjects: usize, shared: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max_subjects.div_ceil(SHARDS).max(1),
            track_unsynced: shared,
        }
    }

    /// The shard of a subject: from the key id's bytes (random, issued by
    /// the store) or an FNV-1a hash of the account id; the map inside the
    /// shard hashes with a random key as usual.
    fn shard_of(&self, subject: &Subject) -> usize {
        let h = match subject {
            Subject::Key(id) => {
                let b = id.as_str().as_bytes();
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            Subject::Account(account) => account.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }),
        };
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a bucket half-written
        // (each is a plain store), so a poisoned lock is still usable.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges `cost` against every limit of `charges` at `now`
    /// (nanoseconds since the Unix epoch), all or nothing.
    pub(crate) fn check(&self, charges: &[Charge<'_>], cost: u64, now: u64) -> Verdict {
        debug_assert!(charges.len() <= 2);
        if let [charge] = charges {
            return self.check_one(charge, cost, now);
        }
        self.check_many(charges, cost, now)
    }

    /// [`Table::check`] of any subjects: decides under every shard's lock,
    /// then makes room for new subjects, then charges.
    fn check_many(&self, charges: &[Charge<'_>], cost: u64, now: u64) -> Verdict {
        let mut order: [(usize, usize); 2] = [(usize::MAX, 0); 2];
        for (i, charge) in charges.iter().enumerate().take(2) {
            order[i] = (self.shard_of(charge.subject), i);
        }
        let n = charges.len().min(2);
        if n == 2 && order[1].0 < order[0].0 {
            order.swap(0, 1);
        }
        let first = self.lock(order[0].0);
        let second = (n == 2 && order[1].0 != order[0].0).then(|| self.lock(order[1].0));
        let mut guards: [Option<MutexGuard<'_, Shard>>; 2] = [Some(first), second];
        // Which guard holds each charge's shard.
        let mut guard_of = [0usize; 2];
        if n == 2 {
            guard_of[order[1].1] = usize::from(guards[1].is_some());
        }

        // Decide without writing.
        let mut tightest: Option<Standing> = None;
        for (c, charge) in charges.iter().enumerate().take(n) {
            let shard = guards[guard_of[c]].as_deref().expect("locked above");
            let buckets = shard.subjects.get(charge.subject);
            for limit in charge.limits {
                let tat = buckets
                    .and_then(|b| b.iter().find(|b| b.limit == *limit))
                    .map_or(0, |b| b.tat);
                match decide(c, limit, tat, now, cost) {
                    Ok((_, standing)) => tighten(&mut tightest, standing),
                    Err(refused) => return refused,
                }
            }
        }
        if tightest.is_none() {
            return Verdict::Admitted(None);
        }

        // Room for every new subject first, so nothing is charged unless all is.
        for (c, charge) in charges.iter().enumerate().take(n) {
            if charge.limits.is_empty() {
                continue;
            }
            let shard = guards[guard_of[c]].as_deref_mut().expect("locked above");
            if !shard.subjects.contains_key(charge.subject) {
                if shard.subjects.len() >= self.per_shard
                    || shard.subjects.len() >= 64 && shard.subjects.len() >= 2 * shard.swept_len
                {
                    shard.sweep(now);
                }
                if shard.subjects.len() >= self.per_shard {
                    return Verdict::Full;
                }
            }
        }
        for (c, charge) in charges.iter().enumerate().take(n) {
            if charge.limits.is_empty() {
                continue;
            }
            let shard = guards[guard_of[c]].as_deref_mut().expect("locked above");
            let buckets = shard.subjects.entry(charge.subject.clone()).or_default();
            for limit in charge.limits {
                let i = match buckets.iter().position(|b| b.limit == *limit) {
                    Some(i) => i,
                    None => {
                        if buckets.len() >= MAX_BUCKETS_PER_SUBJECT {
                            buckets.retain(|b| !b.idle(now));
                        }
                        if buckets.len() >= MAX_BUCKETS_PER_SUBJECT {
                            // Only a subject whose limits changed more than
                            // 32 times within their periods gets here.
                            let oldest = (0..buckets.len())
                                .min_by_key(|&i| buckets[i].tat)
                                .expect("not empty");
                            buckets.swap_remove(oldest);
                        }
                        buckets.push(Bucket {
                            limit: *limit,
                            tat: 0,
                            unsynced: 0,
                        });
                        buckets.len() - 1
                    }
                };
                let bucket = &mut buckets[i];
                bucket.tat = gcra::next_tat(bucket.tat, now, cost, limit).expect("decided above");
                if self.track_unsynced {
                    bucket.unsynced = bucket.unsynced.saturating_add(cost);
                }
            }
        }
        drop(guards);
        Verdict::Admitted(tightest)
    }

    /// [`Table::check`] of one subject (the common case): one lock and, for
    /// a subject seen before, one hash.
    fn check_one(&self, charge: &Charge<'_>, cost: u64, now: u64) -> Verdict {
        let mut shard = self.lock(self.shard_of(charge.subject));
        let Some(buckets) = shard.subjects.get_mut(charge.subject) else {
            // New: the general path decides, makes room and inserts.
            drop(shard);
            return self.check_many(std::slice::from_ref(charge), cost, now);
        };
        // Each limit's new TAT, decided before any is written.
        let mut decided = [(usize::MAX, 0u64); crate::limits::MAX_RATE_LIMITS];
        let mut tightest: Option<Standing> = None;
        for (l, limit) in charge.limits.iter().enumerate() {
            let found = buckets.iter().position(|b| b.limit == *limit);
            let tat = found.map_or(0, |i| buckets[i].tat);
            match decide(0, limit, tat, now, cost) {
                Ok((new_tat, standing)) => {
                    tighten(&mut tightest, standing);
                    match (found, decided.get_mut(l)) {
                        (Some(i), Some(slot)) => *slot = (i, new_tat),
                        // A limit with no bucket yet, or past the most a
                        // key carries (route defaults): the general path.
                        _ => {
                            drop(shard);
                            return self.check_many(std::slice::from_ref(charge), cost, now);
                        }
                    }
                }
                Err(refused) => return refused,
            }
        }
        for &(i, new_tat) in decided.iter().take(charge.limits.len()) {
            let bucket = &mut buckets[i];
            bucket.tat = new_tat;
            if self.track_unsynced {
                bucket.unsynced = bucket.unsynced.saturating_add(cost);
            }
        }
        Verdict::Admitted(tightest)
    }

    /// Takes every bucket's unsynced cost, leaving zero: what a sync sends.
    pub(crate) fn take_unsynced(&self) -> Vec<(Subject, RateLimit, u64)> {
        let mut out = Vec::new();
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            for (subject, buckets) in shard.subjects.iter_mut() {
                for b in buckets.iter_mut().filter(|b| b.unsynced > 0) {
                    out.push((subject.clone(), b.limit, std::mem::take(&mut b.unsynced)));
                }
            }
        }
        out
    }

    /// Moves a bucket's TAT up to the fleet's (never down: what this
    /// replica admitted since stays counted).
    pub(crate) fn merge(&self, subject: &Subject, limit: &RateLimit, shared_tat: u64) {
        let mut shard = self.lock(self.shard_of(subject));
        if let Some(bucket) = shard
            .subjects
            .get_mut(subject)
            .and_then(|b| b.iter_mut().find(|b| b.limit == *limit))
        {
            bucket.tat = bucket.tat.max(shared_tat);
        }
    }

    /// Subjects held now (idle ones included until swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).subjects.len()).sum()
    }

    /// Drops every idle bucket now.
    #[cfg(test)]
    pub(crate) fn sweep(&self, now: u64) {
        for i in 0..SHARDS {
            self.lock(i).sweep(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn key(n: u8) -> Subject {
        let text = format!("k{n:015}");
        Subject::Key(text.parse().unwrap())
    }

    fn per_sec(n: u32) -> RateLimit {
        RateLimit::new(n, Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn every_limit_of_every_subject_admits_or_none_is_charged() {
        let table = Table::new(1000, false);
        let k = key(1);
        let a = Subject::Account("sa-1".into());
        let key_limits = [per_sec(5)];
        let account_limits = [per_sec(2)];
        let charges = [
            Charge {
                subject: &k,
                limits: &key_limits,
            },
            Charge {
                subject: &a,
                limits: &account_limits,
            },
        ];
        let now = 100 * SEC;
        assert!(
            matches!(table.check(&charges, 1, now), Verdict::Admitted(Some(s)) if s.charge == 1 && s.remaining == 1)
        );
        assert!(
            matches!(table.check(&charges, 1, now), Verdict::Admitted(Some(s)) if s.remaining == 0)
        );
        assert!(
            matches!(table.check(&charges, 1, now), Verdict::Limited { standing, .. } if standing.charge == 1)
        );
        // The refused request charged nothing: the key alone still has 3.
        let alone = [Charge {
            subject: &k,
            limits: &key_limits,
        }];
        for left in (0..3).rev() {
            assert_eq!(
                table.check(&alone, 1, now),
                Verdict::Admitted(Some(Standing {
                    charge: 0,
                    limit: per_sec(5),
                    remaining: left,
                    reset_ns: (5 - left) * SEC / 5
                }))
            );
        }
        assert!(matches!(
            table.check(&alone, 1, now),
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn no_limits_charge_nothing_and_hold_no_state() {
        let table = Table::new(10, false);
        let k = key(2);
        assert_eq!(
            table.check(
                &[Charge {
                    subject: &k,
                    limits: &[]
                }],
                1,
                SEC
            ),
            Verdict::Admitted(None)
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn idle_subjects_are_dropped_and_busy_ones_never_are() {
        // One subject per shard: the 65th distinct subject lands in a full shard.
        let table = Table::new(SHARDS, false);
        let limits = [per_sec(1)];
        let now = 10 * SEC;
        let subjects: Vec<Subject> = (0..=255u8).map(key).collect();
        let mut busy = Vec::new();
        let mut full = 0;
        for s in &subjects {
            match table.check(
                &[Charge {
                    subject: s,
                    limits: &limits,
                }],
                1,
                now,
            ) {
                Verdict::Admitted(_) => busy.push(s.clone()),
                Verdict::Full => full += 1,
                Verdict::Limited { .. } => panic!("a new subject is never limited"),
            }
        }
        assert!(full > 0, "some shard filled up");
        // Every admitted subject keeps its state: none was reset to admit another.
        for s in &busy {
            assert!(matches!(
                table.check(
                    &[Charge {
                        subject: s,
                        limits: &limits
                    }],
                    1,
                    now
                ),
                Verdict::Limited { .. }
            ));
        }
        // A second later all are idle: a new subject finds room by a sweep.
        let later = now + SEC;
        for s in &subjects {
            assert!(matches!(
                table.check(
                    &[Charge {
                        subject: s,
                        limits: &limits
                    }],
                    1,
                    later
                ),
                Verdict::Admitted(_) | Verdict::Full
            ));
        }
        table.sweep(later + SEC);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn unsynced_cost_is_counted_only_in_shared_mode_and_taken_once() {
        let shared = Table::new(100, true);
        let local = Table::new(100, false);
        let k = key(3);
        let limits = [per_sec(10)];
        for table in [&shared, &local] {
            for _ in 0..3 {
                table.check(
                    &[Charge {
                        subject: &k,
                        limits: &limits,
                    }],
                    2,
                    SEC,
                );
            }
        }
        assert_eq!(shared.take_unsynced(), vec![(k.clone(), per_sec(10), 6)]);
        assert!(shared.take_unsynced().is_empty());
        assert!(local.take_unsynced().is_empty());
        // A merge moves the TAT forward only.
        shared.merge(&k, &per_sec(10), 2 * SEC);
        assert!(matches!(
            shared.check(
                &[Charge {
                    subject: &k,
                    limits: &limits
                }],
                1,
                SEC
            ),
            Verdict::Limited { .. }
        ));
        shared.merge(&k, &per_sec(10), 0);
        assert!(matches!(
            shared.check(
                &[Charge {
                    subject: &k,
                    limits: &limits
                }],
                1,
                SEC
            ),
            Verdict::Limited { .. }
        ));
    }

    #[test]
    fn concurrent_requests_never_exceed_the_burst() {
        let table = Arc::new(Table::new(1000, false));
        let k = key(4);
        let limits = [per_sec(50)];
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if let Verdict::Admitted(_) = table.check(
                            &[Charge {
                                subject: &k,
                                limits: &limits,
                            }],
                            1,
                            7 * SEC,
                        ) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 50);
    }
}
