//! Who may give a key which scopes: the rule that keeps a management key
//! from minting (or patching, or reissuing) a key more powerful than itself.
//!
//! The invariant: no management request brings into existence a key that is
//! accepted on a route where the calling key is refused, unless the operator
//! granted it explicitly. Against the scope rules of a route
//! ([`ScopePolicy`](crate::scope::ScopePolicy)) that means:
//!
//! - a scope may be given only if the caller holds it (so the new key is
//!   accepted only where some scope of the caller is), and never one of the
//!   router's own management scopes, which would let a key copy itself;
//! - an unscoped key (accepted on every route that declares no scopes, where
//!   a scoped caller is refused) only by an unscoped caller.
//!
//! "Management scopes" are those of every management router built on the
//! same [`Authenticator`](crate::Authenticator), not only this one's: a key
//! minted on `/admin` holding `/console`'s scope would open `/console`.
//!
//! What the operator adds on top is explicit: [`Grants::scopes`], scopes any
//! manager of the router may hand out; [`Grants::unscoped`]; and a custom
//! rule over a typed [`GrantRequest`].
//!
//! Limits follow the same invariant: a caller whose key is limited (rate
//! limits or credits of its own, or rate limits of its account) could
//! otherwise mint an unlimited key, lift or top up its own limits, or hand
//! its scopes to an unlimited key. By default it may do none of that
//! ([`Grants::refuses_limited`]); unless [`Grants::limited_callers`] says so,
//! it may only read, delete, narrow, change descriptions and expiries, and
//! rotate itself.
//!
//! Fields the operator reserved follow the same idea: a key the operator
//! marked read-only ([`KeyRecord::operator_locked`]) takes no change of its
//! fields (metadata included), and no manager sets or clears the mark,
//! unless the router says so ([`Grants::lock_keys`]). Deleting and
//! reissuing a locked key stay allowed: a manager must always be able to
//! kill or rotate a leaked key.

use std::fmt;
use std::sync::Arc;

use crate::cache::Caller;
use crate::network::Networks;
use crate::record::KeyRecord;
use crate::scope::{Scope, ScopeSet};

/// A custom grant rule: `(caller, request) -> allowed`.
pub(crate) type GrantRule = dyn Fn(&Caller, &GrantRequest<'_>) -> bool + Send + Sync;

/// What a management request asks to bring into existence, as a custom
/// [`grant_rule`](super::ManagementApiBuilder::grant_rule) sees it.
///
/// The rule is asked only about what the default rules and the explicit
/// grants refuse, and only widens them.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct GrantRequest<'a> {
    /// What kind of change it is.
    pub kind: GrantKind,
    /// The service account of the key.
    pub service_account_id: &'a str,
    /// The scopes the key holds once the request is done.
    pub requested: KeyScopes<'a>,
    /// The key as it is now (the state the write will replace, checked
    /// atomically); `None` for a key being created.
    pub current: Option<&'a KeyRecord>,
}

/// The kind of change a [`GrantRequest`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantKind {
    /// A new key (`POST /keys`).
    Create,
    /// An existing key's scopes replaced (`PATCH /keys/{id}` with `scopes`).
    ChangeScopes,
    /// A new secret for an existing key, handed to the caller
    /// (`POST /keys/{id}:reissue`): the caller receives everything the key
    /// can do.
    Reissue,
    /// An expired key made valid again by a new expiry (`PATCH` with
    /// `expires_at`): its scopes are given anew.
    Revive,
}

/// A key's scopes as a grant sees them: an unscoped key is not "a key with
/// no scopes" but one accepted on every route that declares none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyScopes<'a> {
    /// Unscoped: accepted on every route without scopes, refused on every
    /// route that requires some.
    Unscoped,
    /// Scoped: accepted only where one of these (never empty) is required.
    Scoped(&'a ScopeSet),
}

impl<'a> KeyScopes<'a> {
    /// The scopes of a key holding `scopes` (empty: unscoped).
    pub fn of(scopes: &'a ScopeSet) -> Self {
        if scopes.is_empty() {
            Self::Unscoped
        } else {
            Self::Scoped(scopes)
        }
    }
}

/// What a request would do to a key's scopes.
#[derive(Clone, Copy)]
pub(crate) enum Change<'a> {
    /// A new key with these scopes.
    Create(&'a ScopeSet),
    /// An existing key's scopes replaced: `from` what it holds `to` these.
    Replace {
        from: &'a ScopeSet,
        to: &'a ScopeSet,
    },
    /// A new secret for an existing key holding these scopes, handed to the
    /// caller: the caller must be entitled to everything the key can do.
    Reissue(&'a ScopeSet),
    /// An expired key made valid again, holding these scopes: as a create.
    Revive(&'a ScopeSet),
}

impl Change<'_> {
    /// The scopes the key holds once the request is done.
    fn result(&self) -> &ScopeSet {
        match self {
            Change::Create(to)
            | Change::Replace { to, .. }
            | Change::Reissue(to)
            | Change::Revive(to) => to,
        }
    }

    fn kind(&self) -> GrantKind {
        match self {
            Change::Create(_) => GrantKind::Create,
            Change::Replace { .. } => GrantKind::ChangeScopes,
            Change::Reissue(_) => GrantKind::Reissue,
            Change::Revive(_) => GrantKind::Revive,
        }
    }
}

/// The key a [`Change`] is about: its account, and its record unless it is
/// being created.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    pub(crate) service_account_id: &'a str,
    pub(crate) current: Option<&'a KeyRecord>,
}

/// The operator's explicit grants on top of the default rule.
#[derive(Clone, Default)]
pub(crate) struct Grants {
    /// Scopes any manager may give, whether or not its key holds them.
    pub(crate) scopes: Vec<Scope>,
    /// Any manager may create unscoped keys.
    pub(crate) unscoped: bool,
    /// Decides what the rules above refuse.
    pub(crate) rule: Option<Arc<GrantRule>>,
    /// Callers whose keys are limited may do what unlimited callers may.
    pub(crate) limited_callers: bool,
    /// Callers may lock and unlock keys, and change locked keys.
    pub(crate) lock_keys: bool,
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("scopes", &self.scopes)
            .field("unscoped", &self.unscoped)
            .field("custom_rule", &self.rule.is_some())
            .field("limited_callers", &self.limited_callers)
            .field("lock_keys", &self.lock_keys)
            .finish()
    }
}

/// Why a change was refused: what the caller may not give.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Scopes the caller may not give, sorted.
    pub(crate) scopes: Vec<Scope>,
    /// The key would be unscoped and the caller may not make one.
    pub(crate) unscoped: bool,
}

/// Whether `caller`'s key is limited: it carries rate limits or credits,
/// or its service account carries rate limits.
pub(crate) fn is_limited(caller: &Caller) -> bool {
    let record = caller.record();
    !record.rate_limits.is_empty()
        || !record.account_rate_limits.is_empty()
        || record.credits.is_some()
}

/// Whether a key with `requested` networks (`None`: any) is used only where
/// `caller` may be: a caller with allowed networks may give only networks
/// inside its own, never none. Networks widen where a key is accepted as
/// scopes do.
pub(crate) fn networks_within(caller: &Caller, requested: Option<&Networks>) -> bool {
    let Some(own) = &caller.record().allowed_networks else {
        return true;
    };
    let Some(requested) = requested else {
        return false;
    };
    requested
        .as_slice()
        .iter()
        .all(|net| own.as_slice().iter().any(|mine| mine.contains(net)))
}

impl Grants {
    /// Whether `caller` is refused what only unlimited callers may do: it
    /// is limited, and the router does not let limited callers do it.
    pub(crate) fn refuses_limited(&self, caller: &Caller) -> bool {
        !self.limited_callers && is_limited(caller)
    }

    fn granted(&self, scope: &Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// Checks `change` of `target` by `caller`, where `managing` holds the
    /// management scopes of every router on the caller's authenticator.
    pub(crate) fn check(
        &self,
        caller: &Caller,
        managing: &[Scope],
        target: Target<'_>,
        change: Change<'_>,
    ) -> Result<(), Refused> {
        let held = caller.scopes();
        let result = change.result();
        let mut refused = Refused {
            scopes: Vec::new(),
            unscoped: false,
        };
        if result.is_empty() {
            // Unscoped: accepted on every route without scopes. Keeping a key
            // unscoped is no gain; making one needs an unscoped caller.
            let already = matches!(change, Change::Replace { from, .. } if from.is_empty());
            refused.unscoped = !already && !held.is_empty() && !self.unscoped;
        } else {
            for scope in result {
                let allowed = match change {
                    // A scope the key keeps is no gain.
                    Change::Replace { from, .. } if from.contains(scope) => true,
                    // The caller receives the key itself: holding the scope
                    // is enough, and for its own key management scopes too
                    // (a key may rotate itself: no key is added). Another
                    // key holding a management scope would be a second
                    // management credential, which outlives a revocation of
                    // the caller's own.
                    Change::Reissue(_) => {
                        let itself = target.current.is_some_and(|k| k.key_id == caller.key_id());
                        (held.contains(scope) && (itself || !managing.contains(scope)))
                            || self.granted(scope)
                    }
                    _ => (held.contains(scope) && !managing.contains(scope)) || self.granted(scope),
                };
                if !allowed {
                    refused.scopes.push(scope.clone());
                }
            }
        }
        if refused.scopes.is_empty() && !refused.unscoped {
            return Ok(());
        }
        let request = GrantRequest {
            kind: change.kind(),
            service_account_id: target.service_account_id,
            requested: KeyScopes::of(result),
            current: target.current,
        };
        match &self.rule {
            Some(rule) if rule(caller, &request) => Ok(()),
            _ => Err(refused),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyId;
    use crate::record::KeyRecord;

    fn set(names: &[&str]) -> ScopeSet {
        ScopeSet::new(names.iter().copied()).unwrap()
    }

    fn caller(scopes: &[&str]) -> Caller {
        Caller::from(KeyRecord::new(KeyId::random().unwrap(), "sa-1").with_scopes(set(scopes)))
    }

    const MANAGE: &str = "apikeys.manage";

    #[test]
    fn a_caller_with_networks_gives_only_networks_inside_its_own() {
        let nets = |n: &[&str]| Networks::parse(n).unwrap();
        let free = caller(&[MANAGE]);
        assert!(networks_within(&free, None));
        let bound = Caller::from(
            KeyRecord::new(KeyId::random().unwrap(), "sa-1")
                .with_allowed_networks(Some(nets(&["10.0.0.0/8", "2001:db8::/32"]))),
        );
        assert!(!networks_within(&bound, None), "no networks: anywhere");
        assert!(networks_within(
            &bound,
            Some(&nets(&["10.1.0.0/16", "2001:db8:1::/48", "10.9.9.9"]))
        ));
        assert!(!networks_within(&bound, Some(&nets(&["10.0.0.0/7"]))));
        assert!(!networks_within(
            &bound,
            Some(&nets(&["10.0.0.0/8", "192.0.2.1"]))
        ));
    }

    fn check(grants: &Grants, caller: &Caller, change: Change<'_>) -> Result<(), Refused> {
        let target = Target {
            service_account_id: "sa-1",
            current: None,
        };
        grants.check(caller, &[Scope::new(MANAGE).unwrap()], target, change)
    }

    fn refused(scopes: &[&str]) -> Result<(), Refused> {
        Err(Refused {
            scopes: set(scopes).iter().cloned().collect(),
            unscoped: false,
        })
    }

    #[test]
    fn by_default_a_caller_gives_only_scopes_it_holds_never_the_management_scope() {
        let grants = Grants::default();
        let manager = caller(&[MANAGE, "a.x"]);
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&["a.x"]))),
            Ok(())
        );
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&["a.x", "b.y"]))),
            refused(&["b.y"])
        );
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&[MANAGE]))),
            refused(&[MANAGE])
        );
        assert_eq!(
            check(&grants, &manager, Change::Create(&ScopeSet::empty())),
            Err(Refused {
                scopes: Vec::new(),
                unscoped: true
            })
        );
    }

    #[test]
    fn explicit_grants_add_scopes_and_unscoped_keys() {
        let grants = Grants {
            scopes: vec![Scope::new("b.y").unwrap(), Scope::new(MANAGE).unwrap()],
            unscoped: true,
            rule: None,
            limited_callers: false,
            lock_keys: false,
        };
        let manager = caller(&[MANAGE]);
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&["b.y", MANAGE]))),
            Ok(())
        );
        assert_eq!(
            check(&grants, &manager, Change::Create(&ScopeSet::empty())),
            Ok(())
        );
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&["c.z"]))),
            refused(&["c.z"])
        );
    }

    #[test]
    fn a_replacement_may_keep_what_the_key_holds_but_add_only_what_may_be_given() {
        let grants = Grants::default();
        let manager = caller(&[MANAGE, "a.x"]);
        let from = set(&["b.y", "c.z"]);
        let replace = |to: &ScopeSet| check(&grants, &manager, Change::Replace { from: &from, to });
        assert_eq!(replace(&set(&["b.y"])), Ok(()), "narrowing");
        assert_eq!(
            replace(&set(&["a.x", "b.y"])),
            Ok(()),
            "adding a held scope"
        );
        assert_eq!(replace(&set(&["b.y", "d.w"])), refused(&["d.w"]));
        assert_eq!(
            replace(&ScopeSet::empty()),
            Err(Refused {
                scopes: Vec::new(),
                unscoped: true
            }),
            "widening to unscoped"
        );
        let unscoped = ScopeSet::empty();
        assert_eq!(
            check(
                &grants,
                &manager,
                Change::Replace {
                    from: &unscoped,
                    to: &unscoped
                }
            ),
            Ok(()),
            "an unscoped key staying unscoped"
        );
    }

    #[test]
    fn a_reissue_hands_over_only_keys_the_caller_could_use_itself() {
        let grants = Grants::default();
        let manager = caller(&[MANAGE, "a.x"]);
        let managing = [Scope::new(MANAGE).unwrap()];
        let itself = Target {
            service_account_id: "sa-1",
            current: Some(manager.record()),
        };
        assert_eq!(
            grants.check(
                &manager,
                &managing,
                itself,
                Change::Reissue(&set(&[MANAGE, "a.x"]))
            ),
            Ok(()),
            "itself: a rotation"
        );
        assert_eq!(
            check(&grants, &manager, Change::Reissue(&set(&[MANAGE, "a.x"]))),
            refused(&[MANAGE]),
            "a twin would be a second management key"
        );
        assert_eq!(
            check(&grants, &manager, Change::Reissue(&set(&["a.x"]))),
            Ok(()),
            "a key the caller could use itself, without a management scope"
        );
        assert_eq!(
            check(
                &grants,
                &manager,
                Change::Reissue(&set(&["a.x", "ops.admin"]))
            ),
            refused(&["ops.admin"])
        );
        assert!(check(&grants, &manager, Change::Reissue(&ScopeSet::empty())).is_err());
    }

    #[test]
    fn a_custom_rule_decides_what_the_defaults_refuse() {
        let grants = Grants {
            rule: Some(Arc::new(|caller: &Caller, request: &GrantRequest<'_>| {
                caller.service_account_id() == "sa-1"
                    && matches!(request.requested, KeyScopes::Scoped(scopes)
                        if scopes.iter().all(|s| s.as_str().starts_with("team.")))
            })),
            ..Grants::default()
        };
        let manager = caller(&[MANAGE]);
        assert_eq!(
            check(&grants, &manager, Change::Create(&set(&["team.read"]))),
            Ok(())
        );
        assert_eq!(
            check(
                &grants,
                &manager,
                Change::Create(&set(&["team.read", "x.y"]))
            ),
            refused(&["team.read", "x.y"])
        );
        // The rule's natural form cannot mistake an unscoped key for a key
        // with no scopes requested.
        assert!(check(&grants, &manager, Change::Create(&ScopeSet::empty())).is_err());
        let team = set(&["team.read"]);
        assert!(check(
            &grants,
            &manager,
            Change::Replace {
                from: &team,
                to: &ScopeSet::empty()
            }
        )
        .is_err());
        assert!(check(&grants, &manager, Change::Reissue(&ScopeSet::empty())).is_err());
    }

    #[test]
    fn a_custom_rule_sees_the_kind_the_account_and_the_current_key() {
        use std::sync::Mutex;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let grants = Grants {
            rule: Some(Arc::new(move |_: &Caller, request: &GrantRequest<'_>| {
                log.lock().unwrap().push((
                    request.kind,
                    request.service_account_id.to_owned(),
                    request.current.map(|r| r.scopes.clone()),
                    matches!(request.requested, KeyScopes::Unscoped),
                ));
                false
            })),
            ..Grants::default()
        };
        let manager = caller(&[MANAGE]);
        let held = set(&["b.y"]);
        let record = KeyRecord::new(KeyId::random().unwrap(), "sa-9").with_scopes(held.clone());
        let target = Target {
            service_account_id: "sa-9",
            current: Some(&record),
        };
        let managing = [Scope::new(MANAGE).unwrap()];
        let unscoped = ScopeSet::empty();
        let _ = grants.check(
            &manager,
            &managing,
            target,
            Change::Replace {
                from: &held,
                to: &unscoped,
            },
        );
        let _ = grants.check(&manager, &managing, target, Change::Reissue(&held));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (
                    GrantKind::ChangeScopes,
                    "sa-9".to_owned(),
                    Some(held.clone()),
                    true
                ),
                (GrantKind::Reissue, "sa-9".to_owned(), Some(held), false),
            ]
        );
    }

    #[test]
    fn a_caller_is_limited_by_its_own_limits_its_credits_or_its_accounts_limits() {
        use crate::limits::{Credits, RateLimit};
        let limit: RateLimit = "5/1s".parse().unwrap();
        let plain = caller(&[MANAGE]);
        assert!(!is_limited(&plain));
        let record = || KeyRecord::new(KeyId::random().unwrap(), "sa-1");
        for limited in [
            record().with_rate_limits(vec![limit]),
            record().with_account_rate_limits(vec![limit]),
            record().with_credits(Some(Credits::new(0).unwrap())),
        ] {
            let limited = Caller::from(limited);
            assert!(is_limited(&limited));
            assert!(Grants::default().refuses_limited(&limited));
            let open = Grants {
                limited_callers: true,
                ..Grants::default()
            };
            assert!(!open.refuses_limited(&limited));
        }
        assert!(!Grants::default().refuses_limited(&plain));
    }
}
