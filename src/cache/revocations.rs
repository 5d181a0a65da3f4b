//! Invalidation bookkeeping: the epoch, tombstones and account floors.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Caller;
use crate::key::KeyId;

/// Tombstones of one service account past this count (a bit above the
/// stores' default key limit per account) collapse into one floor for that
/// account: its cached keys are re-verified, other accounts' are not.
const MAX_TOMBSTONES_PER_ACCOUNT: usize = 1_024;
/// Tombstones and account floors past this count, all accounts together,
/// are replaced by one cache-wide flush.
const MAX_TOMBSTONES: usize = 100_000;

/// Invalidation bookkeeping: a global epoch, bumped by every invalidation, a
/// tombstone per recently invalidated key id, and a floor per service account
/// whose keys were invalidated in bulk. An entry whose epoch is the current
/// one needs no further check, so a hit costs two atomic loads.
///
/// Invariants (each invalidation gets a new epoch `E`, published last):
/// - an entry is stale if its checked epoch is below the global floor, below
///   the epoch of a tombstone of its key id, or below the floor of its own
///   service account (`Caller::service_account_id`);
/// - every invalidation of key `k` at epoch `E` leaves, until it is pruned,
///   a tombstone of `k` at `E` or later, or (only when it named `k`'s account
///   `a`) a floor of `a` at `E` or later;
/// - pruning a tombstone or floor at `E` raises the global floor to `E`, so
///   an entry fetched before it (a verifier call that hung past `retain`) is
///   still never admitted;
/// - at most `total` tombstones and account floors are kept: one more resets
///   the global floor instead (every entry is re-verified).
pub(super) struct Revocations {
    epoch: AtomicU64,
    /// Entries fetched before this epoch are stale (set by `invalidate_all`).
    floor: AtomicU64,
    tombstones: Mutex<Tombstones>,
    retain: Duration,
    /// Tombstones of one account past this count collapse into its floor.
    per_account: usize,
    /// Tombstones and account floors past this count flush everything.
    total: usize,
}

#[derive(Default)]
struct Tombstones {
    by_id: HashMap<KeyId, Tombstone>,
    /// Accounts with tombstones or a floor; never an account with neither.
    accounts: HashMap<Arc<str>, AccountMarks>,
    /// Accounts whose floor is set.
    floors: usize,
    /// Every tombstone and floor as set, oldest first, for pruning. Records
    /// superseded since (a later epoch for the same key or account, a
    /// collapse) are skipped when pruned and compacted away in bulk.
    by_age: VecDeque<Aged>,
}

struct Tombstone {
    epoch: u64,
    /// The account every invalidation of this key in the window named; `None`
    /// if one did not name it or two disagreed, so the tombstone is never
    /// collapsed into a floor that might not cover the key's entry.
    account: Option<Arc<str>>,
}

#[derive(Default)]
struct AccountMarks {
    /// Tombstones tagged with this account.
    tombstones: usize,
    /// Entries of this account checked before this epoch are stale; 0: none.
    floor: u64,
}

struct Aged {
    at: Instant,
    epoch: u64,
    what: Marked,
}

enum Marked {
    Key(KeyId),
    Floor(Arc<str>),
}

impl Tombstones {
    fn live(&self) -> usize {
        self.by_id.len() + self.floors
    }

    /// Whether `record` is still what its key or account carries.
    fn is_latest(&self, record: &Aged) -> bool {
        match &record.what {
            Marked::Key(id) => self.by_id.get(id).is_some_and(|t| t.epoch == record.epoch),
            Marked::Floor(account) => self
                .accounts
                .get(account)
                .is_some_and(|a| a.floor == record.epoch),
        }
    }

    fn untag(&mut self, account: &Arc<str>) {
        if let Some(marks) = self.accounts.get_mut(account) {
            marks.tombstones -= 1;
            if marks.tombstones == 0 && marks.floor == 0 {
                self.accounts.remove(account);
            }
        }
    }

    /// Drops the records older than `retain` at `now`, raising `floor` to
    /// each one's epoch.
    fn prune(&mut self, now: Instant, retain: Duration, floor: &AtomicU64) {
        while let Some(oldest) = self.by_age.front() {
            if now.saturating_duration_since(oldest.at) < retain {
                break;
            }
            let Some(oldest) = self.by_age.pop_front() else {
                break;
            };
            if self.is_latest(&oldest) {
                match &oldest.what {
                    Marked::Key(id) => {
                        if let Some(Tombstone {
                            account: Some(account),
                            ..
                        }) = self.by_id.remove(id)
                        {
                            self.untag(&account);
                        }
                    }
                    Marked::Floor(account) => {
                        if let Some(marks) = self.accounts.get_mut(account) {
                            marks.floor = 0;
                            self.floors -= 1;
                            if marks.tombstones == 0 {
                                self.accounts.remove(account);
                            }
                        }
                    }
                }
            }
            // An entry fetched before this record (say by a verifier call
            // that hung past `retain`) must still never be admitted: without
            // the record, the floor refuses it (one re-fetch for entries not
            // checked since, which is cheap). A superseded record is covered
            // by its successor, so raising the floor for it is merely early.
            floor.fetch_max(oldest.epoch, Ordering::AcqRel);
        }
    }

    /// Replaces `account`'s tombstones with its floor at `epoch`. Every
    /// tombstone dropped is older and tagged with `account`, and a key never
    /// changes account: the floor covers each of their keys' entries.
    fn collapse(&mut self, account: &Arc<str>, epoch: u64, now: Instant) {
        self.by_id
            .retain(|_, t| t.account.as_deref() != Some(&**account));
        let marks = self.accounts.entry(account.clone()).or_default();
        marks.tombstones = 0;
        if marks.floor == 0 {
            self.floors += 1;
        }
        marks.floor = epoch;
        self.by_age.push_back(Aged {
            at: now,
            epoch,
            what: Marked::Floor(account.clone()),
        });
    }

    /// Drops superseded records once they are as many as the live ones, so
    /// repeated invalidations of one key or account take bounded space.
    fn compact(&mut self) {
        if self.by_age.len() > 2 * self.live() + 64 {
            let by_age = std::mem::take(&mut self.by_age);
            self.by_age = by_age.into_iter().filter(|r| self.is_latest(r)).collect();
        }
    }
}

impl Revocations {
    pub(super) fn new(retain: Duration) -> Self {
        Self::with_bounds(retain, MAX_TOMBSTONES_PER_ACCOUNT, MAX_TOMBSTONES)
    }

    fn with_bounds(retain: Duration, per_account: usize, total: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            tombstones: Mutex::new(Tombstones::default()),
            retain,
            per_account,
            total,
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tombstones> {
        self.tombstones.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_current(&self, entry: &Caller) -> bool {
        let epoch = &entry.cache_slot().epoch;
        let checked = epoch.load(Ordering::Acquire);
        let now = self.epoch();
        if checked >= now {
            return true;
        }
        if checked < self.floor.load(Ordering::Acquire) {
            return false;
        }
        {
            let tombstones = self.lock();
            let revoked_at = tombstones.by_id.get(&entry.key_id()).map(|t| t.epoch);
            if revoked_at.is_some_and(|at| at > checked) {
                return false;
            }
            if tombstones.floors > 0 {
                let floor = tombstones
                    .accounts
                    .get(entry.service_account_id())
                    .map_or(0, |a| a.floor);
                if floor > checked {
                    return false;
                }
            }
        }
        // Checked against every invalidation up to `now`; skip them next time.
        epoch.fetch_max(now, Ordering::AcqRel);
        true
    }

    /// Invalidates key `id`, of `account` if the publisher named it.
    pub(super) fn invalidate(&self, id: KeyId, account: Option<Arc<str>>, now: Instant) {
        let mut tombstones = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        tombstones.prune(now, self.retain, &self.floor);
        let collapsed = account
            .as_ref()
            .filter(|a| tombstones.accounts.get(*a).is_some_and(|m| m.floor > 0))
            .cloned();
        if let Some(account) = collapsed {
            // The account's keys are re-verified in bulk already: raise its
            // floor. A tombstone of `id` under another (or no) account stays.
            if let Some(marks) = tombstones.accounts.get_mut(&account) {
                marks.floor = epoch;
            }
            tombstones.by_age.push_back(Aged {
                at: now,
                epoch,
                what: Marked::Floor(account),
            });
        } else if tombstones.live() >= self.total && !tombstones.by_id.contains_key(&id) {
            // Too many to track one by one: treat everything as invalidated.
            self.floor.store(epoch, Ordering::Release);
            *tombstones = Tombstones::default();
        } else {
            let previous = tombstones.by_id.remove(&id);
            let account = match previous {
                None => account,
                Some(previous) => {
                    if let Some(old) = &previous.account {
                        tombstones.untag(old);
                    }
                    // Two invalidations naming different accounts (or one
                    // naming none): trust neither.
                    account.filter(|a| previous.account.as_ref() == Some(a))
                }
            };
            let mut overflowing = None;
            if let Some(account) = &account {
                let marks = tombstones.accounts.entry(account.clone()).or_default();
                marks.tombstones += 1;
                if marks.tombstones > self.per_account {
                    overflowing = Some(account.clone());
                }
            }
            tombstones.by_id.insert(id, Tombstone { epoch, account });
            tombstones.by_age.push_back(Aged {
                at: now,
                epoch,
                what: Marked::Key(id),
            });
            if let Some(account) = overflowing {
                tombstones.collapse(&account, epoch, now);
            }
        }
        tombstones.compact();
        // Published last, under the lock: whoever sees the new epoch sees the tombstone.
        self.epoch.store(epoch, Ordering::Release);
    }

    pub(super) fn invalidate_all(&self) {
        let mut tombstones = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        self.floor.store(epoch, Ordering::Release);
        *tombstones = Tombstones::default();
        self.epoch.store(epoch, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::super::caller::CacheSlot;
    use super::*;
    use crate::record::KeyRecord;

    const RETAIN: Duration = Duration::from_secs(60);

    fn id(i: usize) -> KeyId {
        format!("{i:016}").parse().unwrap()
    }

    /// Small bounds: 4 tombstones per account, 64 in all.
    fn revocations() -> Revocations {
        Revocations::with_bounds(RETAIN, 4, 64)
    }

    /// An entry as a verifier call starting now would cache it.
    fn fetch(revocations: &Revocations, key: usize, account: &str) -> Caller {
        Caller::cached(
            KeyRecord::new(id(key), account),
            CacheSlot::new(revocations.epoch()),
        )
    }

    fn revoke(revocations: &Revocations, key: usize, account: &str, at: Instant) {
        revocations.invalidate(id(key), Some(account.into()), at);
    }

    /// Asserts the bookkeeping is within its bounds.
    fn assert_bounded(revocations: &Revocations) {
        let t = revocations.lock();
        assert!(t.live() <= revocations.total, "{} live", t.live());
        assert!(
            t.accounts.len() <= revocations.total,
            "{}",
            t.accounts.len()
        );
        assert!(
            t.by_age.len() <= 2 * revocations.total + 65,
            "{} aged",
            t.by_age.len()
        );
    }

    #[test]
    fn an_account_past_its_bound_is_re_verified_alone_and_its_revoked_keys_stay_refused() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        let kept = fetch(&r, 1, "sa-flood");
        let revoked: Vec<Caller> = (100..120).map(|k| fetch(&r, k, "sa-flood")).collect();
        for k in 100..120 {
            revoke(&r, k, "sa-flood", now);
        }
        assert_eq!(r.lock().floors, 1, "the account collapsed into its floor");
        assert!(
            r.is_current(&bystander),
            "another account is not re-verified"
        );
        assert!(!r.is_current(&kept), "the flooding account's keys are");
        for entry in &revoked {
            assert!(!r.is_current(entry), "{:?}", entry.key_id());
        }
        // Re-fetched after the flood: current until the account's next change.
        let refetched = fetch(&r, 1, "sa-flood");
        assert!(r.is_current(&refetched));
        revoke(&r, 200, "sa-flood", now);
        assert!(!r.is_current(&refetched));
        assert!(r.is_current(&bystander));
        assert_bounded(&r);
    }

    #[test]
    fn invalidations_naming_no_account_keep_the_cache_wide_backstop() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        for k in 100..=164 {
            r.invalidate(id(k), None, now);
            assert_bounded(&r);
        }
        assert!(
            !r.is_current(&bystander),
            "65 > 64 untracked: all re-verified"
        );
    }

    #[test]
    fn many_accounts_each_under_their_bound_cannot_grow_the_bookkeeping_past_its_total() {
        let r = revocations();
        let now = Instant::now();
        let bystander = fetch(&r, 0, "sa-bystander");
        for k in 1..=10_000 {
            revoke(&r, k, &format!("sa-{}", k / 3), now);
            assert_bounded(&r);
        }
        // The total bound was reached: the cache-wide flush took over.
        assert!(!r.is_current(&bystander));
    }

    #[test]
    fn invalidating_one_key_or_one_collapsed_account_again_and_again_takes_bounded_space() {
        let r = revocations();
        let now = Instant::now();
        for k in 0..5 {
            revoke(&r, k, "sa-flood", now);
        }
        for _ in 0..10_000 {
            revoke(&r, 7, "sa-flood", now);
            revoke(&r, 1_000, "sa-other", now);
            r.invalidate(id(1_001), None, now);
            assert_bounded(&r);
        }
    }

    #[test]
    fn a_tombstone_two_invalidations_tag_with_different_accounts_is_never_collapsed_away() {
        let r = revocations();
        let now = Instant::now();
        // Key 1 belongs to sa-b; one announcement names sa-a by mistake.
        let entry = fetch(&r, 1, "sa-b");
        revoke(&r, 1, "sa-b", now);
        revoke(&r, 1, "sa-a", now);
        for k in 100..110 {
            revoke(&r, k, "sa-a", now);
        }
        assert_eq!(r.lock().floors, 1, "sa-a collapsed");
        assert!(!r.is_current(&entry));
        // Named again under the collapsed account: the tombstone stays too.
        revoke(&r, 1, "sa-a", now);
        assert!(!r.is_current(&entry));
    }

    #[test]
    fn an_entry_fetched_before_an_account_floor_is_refused_after_the_floor_is_pruned() {
        let r = revocations();
        let start = Instant::now();
        for k in 100..110 {
            revoke(&r, k, "sa-flood", start);
        }
        assert_eq!(r.lock().floors, 1);
        // A verifier call starts after the collapse and hangs past `retain`;
        // its key is revoked meanwhile, which only raises the account floor.
        let hung = fetch(&r, 200, "sa-flood");
        revoke(&r, 200, "sa-flood", start);
        assert!(!r.lock().by_id.contains_key(&id(200)));
        assert!(!r.is_current(&hung));
        let bystander = fetch(&r, 0, "sa-bystander");
        // Any later invalidation prunes what is older than `retain`.
        revoke(&r, 500, "sa-other", start + RETAIN);
        {
            let t = r.lock();
            assert_eq!(t.floors, 0, "the account floor was pruned");
            assert!(!t.accounts.contains_key("sa-flood"));
        }
        assert!(!r.is_current(&hung), "a revoked key is never re-admitted");
        assert!(r.is_current(&bystander), "checked since: not re-verified");
    }

    #[test]
    fn an_entry_fetched_before_a_tombstone_is_refused_after_the_tombstone_is_pruned() {
        let r = revocations();
        let start = Instant::now();
        let hung = fetch(&r, 100, "sa-1");
        revoke(&r, 100, "sa-1", start);
        let bystander = fetch(&r, 0, "sa-1");
        revoke(&r, 500, "sa-2", start + RETAIN);
        assert!(!r.lock().by_id.contains_key(&id(100)), "pruned");
        assert!(!r.is_current(&hung));
        assert!(r.is_current(&bystander));
    }
}
