//! Sharing what many cached records have in common.
//!
//! A verifier backed by a database decodes every record afresh, each with its
//! own copy of the service account id and of the scope set; a million cached
//! keys usually belong to far fewer accounts and scope sets. The cache passes
//! each fetched record through an [`Interner`], which swaps those parts for
//! shared copies. Misses only: a hit never touches it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::record::KeyRecord;
use crate::scope::ScopeSet;

/// Table sizes below which unused entries are not swept.
const MIN_SWEEP: usize = 1024;

/// Shared service account ids and scope sets. Entries nothing else uses any
/// more are swept whenever the tables have doubled since the last sweep, so
/// the tables stay within a constant factor of what cached records use.
#[derive(Default)]
pub(crate) struct Interner {
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    accounts: HashSet<Arc<str>>,
    scopes: HashSet<ScopeSet>,
    /// Sweep when the tables hold this many entries.
    sweep_at: usize,
}

impl Interner {
    /// `record` with its account id and scope set replaced by shared copies
    /// (equal to the originals).
    pub(crate) fn share(&self, mut record: KeyRecord) -> KeyRecord {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        record.service_account_id = tables.account(record.service_account_id);
        record.scopes = tables.scopes(record.scopes);
        tables.sweep_if_grown();
        record
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.accounts.len() + tables.scopes.len()
    }
}

impl Tables {
    fn account(&mut self, id: Arc<str>) -> Arc<str> {
        if let Some(shared) = self.accounts.get(&*id) {
            return shared.clone();
        }
        self.accounts.insert(id.clone());
        id
    }

    fn scopes(&mut self, scopes: ScopeSet) -> ScopeSet {
        if let Some(shared) = self.scopes.get(&scopes) {
            return shared.clone();
        }
        self.scopes.insert(scopes.clone());
        scopes
    }

    fn sweep_if_grown(&mut self) {
        if self.accounts.len() + self.scopes.len() < self.sweep_at.max(MIN_SWEEP) {
            return;
        }
        // Only this table holds them: no cached record uses them any more.
        self.accounts.retain(|id| Arc::strong_count(id) > 1);
        self.scopes.retain(ScopeSet::is_shared);
        self.sweep_at = 2 * (self.accounts.len() + self.scopes.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyId;

    fn record(n: usize, account: &str, scopes: &[&str]) -> KeyRecord {
        let id: KeyId = format!("{n:016}").parse().unwrap();
        KeyRecord::new(id, account).with_scopes(ScopeSet::new(scopes.iter().copied()).unwrap())
    }

    #[test]
    fn equal_parts_are_shared_and_records_stay_equal() {
        let interner = Interner::default();
        let a = record(1, "sa-1", &["x.read", "x.write"]);
        let b = record(2, "sa-1", &["x.write", "x.read"]);
        let (a2, b2) = (interner.share(a.clone()), interner.share(b.clone()));
        assert_eq!(a2, a);
        assert_eq!(b2, b);
        assert!(Arc::ptr_eq(&a2.service_account_id, &b2.service_account_id));
        assert!(std::ptr::eq(a2.scopes.as_slice(), b2.scopes.as_slice()));
        let c = interner.share(record(3, "sa-2", &["x.read"]));
        assert!(!Arc::ptr_eq(&a2.service_account_id, &c.service_account_id));
        assert_eq!(&*c.service_account_id, "sa-2");
    }

    #[test]
    fn unused_entries_are_swept() {
        let interner = Interner::default();
        let kept: Vec<KeyRecord> = (0..10)
            .map(|i| interner.share(record(i, &format!("kept-{i}"), &["x.read"])))
            .collect();
        for i in 0..10 * MIN_SWEEP {
            drop(interner.share(record(i, &format!("gone-{i}"), &[])));
        }
        // The kept accounts and the two scope sets, plus at most what the
        // last sweep let through.
        assert!(interner.len() <= 2 * MIN_SWEEP, "{}", interner.len());
        let again = interner.share(record(99, "kept-3", &["x.read"]));
        assert!(Arc::ptr_eq(
            &again.service_account_id,
            &kept[3].service_account_id
        ));
    }
}
