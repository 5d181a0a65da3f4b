//! DESIGN.md's scope table, one test per cell, named `<row>__<column>__<outcome>`.
//!
//! | route policy | scoped key holding a required scope | scoped key without it | unscoped key |
//! |---|---|---|---|
//! | `require any of {S1, S2, ...}` | allowed | 403 insufficient_scope | 403 insufficient_scope |
//! | no scopes declared | - | 403 (a scoped key is only for its scopes) | allowed |
//! | `any valid key` | allowed | allowed | allowed |
#![allow(non_snake_case)]

use tower_api_key::{Scope, ScopeDenied, ScopeError, ScopePolicy, ScopeSet};

const TRANSLATE: &str = "yc.ai.translate.execute";
const FOUNDATION: &str = "yc.ai.foundationModels.execute";
const STORAGE: &str = "yc.storage.read";

fn keys_scopes(scopes: &[&str]) -> ScopeSet {
    ScopeSet::new(scopes.iter().copied()).unwrap()
}

fn require_translate_or_foundation() -> ScopePolicy {
    ScopePolicy::require_any([TRANSLATE, FOUNDATION]).unwrap()
}

// --- row: require any of {S1, S2, ...} --------------------------------------

#[test]
fn require_any__scoped_key_holding_a_required_scope__allowed() {
    let route = require_translate_or_foundation();
    assert_eq!(route.check(&keys_scopes(&[TRANSLATE])), Ok(()));
    assert_eq!(route.check(&keys_scopes(&[STORAGE, FOUNDATION])), Ok(()));
}

#[test]
fn require_any__scoped_key_without_a_required_scope__denied_missing_scope() {
    let route = require_translate_or_foundation();
    assert_eq!(
        route.check(&keys_scopes(&[STORAGE])),
        Err(ScopeDenied::MissingScope)
    );
}

#[test]
fn require_any__unscoped_key__denied_missing_scope() {
    let route = require_translate_or_foundation();
    assert_eq!(
        route.check(&ScopeSet::empty()),
        Err(ScopeDenied::MissingScope)
    );
    assert_eq!(
        route.check(&ScopeSet::default()),
        Err(ScopeDenied::MissingScope)
    );
}

// --- row: no scopes declared (the route does not support scopes) ------------

#[test]
fn unscoped_only__scoped_key_holding_a_required_scope__not_applicable_the_route_requires_none() {
    // The cell is "-": a route without scopes has no required scope a key
    // could hold. Whatever scope a key holds, it is refused as scoped.
    let route = ScopePolicy::unscoped_keys_only();
    assert_eq!(route.required(), None);
    for scopes in [
        &[TRANSLATE][..],
        &[FOUNDATION],
        &[TRANSLATE, FOUNDATION, STORAGE],
    ] {
        assert_eq!(
            route.check(&keys_scopes(scopes)),
            Err(ScopeDenied::ScopedKeyOnUnscopedRoute)
        );
    }
}

#[test]
fn unscoped_only__scoped_key_without_a_required_scope__denied_scoped_key_on_unscoped_route() {
    let route = ScopePolicy::unscoped_keys_only();
    assert_eq!(
        route.check(&keys_scopes(&[STORAGE])),
        Err(ScopeDenied::ScopedKeyOnUnscopedRoute)
    );
}

#[test]
fn unscoped_only__unscoped_key__allowed() {
    let route = ScopePolicy::unscoped_keys_only();
    assert_eq!(route.check(&ScopeSet::empty()), Ok(()));
}

// --- row: any valid key (explicit opt-in) -----------------------------------

#[test]
fn any_valid_key__scoped_key_holding_a_required_scope__allowed() {
    // The route names no scopes, so "holding a required scope" is any scoped key.
    let route = ScopePolicy::any_valid_key();
    assert_eq!(route.required(), None);
    assert_eq!(route.check(&keys_scopes(&[TRANSLATE])), Ok(()));
}

#[test]
fn any_valid_key__scoped_key_without_a_required_scope__allowed() {
    let route = ScopePolicy::any_valid_key();
    assert_eq!(route.check(&keys_scopes(&[STORAGE])), Ok(()));
}

#[test]
fn any_valid_key__unscoped_key__allowed() {
    let route = ScopePolicy::any_valid_key();
    assert_eq!(route.check(&ScopeSet::empty()), Ok(()));
}

// --- a route accepting a narrow and a broad scope ---------------------------

#[test]
fn require_any_of_a_narrow_and_a_broad_scope__each_one_alone_is_allowed() {
    let route = ScopePolicy::require_any([TRANSLATE, FOUNDATION]).unwrap();
    assert_eq!(route.check(&keys_scopes(&[TRANSLATE])), Ok(()));
    assert_eq!(route.check(&keys_scopes(&[FOUNDATION])), Ok(()));
    assert_eq!(route.check(&keys_scopes(&[FOUNDATION, TRANSLATE])), Ok(()));
    assert_eq!(
        route.check(&keys_scopes(&[STORAGE])),
        Err(ScopeDenied::MissingScope)
    );
    let required = route.required().unwrap();
    assert_eq!(required.len(), 2);
    assert!(required.contains(&Scope::new(TRANSLATE).unwrap()));
    assert!(required.contains(&Scope::new(FOUNDATION).unwrap()));
}

// --- scope names are compared exactly ---------------------------------------

#[test]
fn scopes_are_compared_exactly_without_prefixes_wildcards_or_case_folding() {
    let route = ScopePolicy::require_any([TRANSLATE]).unwrap();
    for near_miss in [
        "yc.ai",
        "yc.ai.translate",
        "yc.ai.translate.execute.extra",
        "YC.AI.TRANSLATE.EXECUTE",
        "yc.ai.translate.Execute",
    ] {
        assert_eq!(
            route.check(&keys_scopes(&[near_miss])),
            Err(ScopeDenied::MissingScope),
            "{near_miss}"
        );
    }
    // A broad parent on the route does not admit its children either.
    let parent = ScopePolicy::require_any(["yc.ai"]).unwrap();
    assert_eq!(
        parent.check(&keys_scopes(&[TRANSLATE])),
        Err(ScopeDenied::MissingScope)
    );
    // Wildcards are not scope names at all.
    assert_eq!(Scope::new("yc.ai.*").unwrap_err(), ScopeError::Invalid);
    assert_eq!(
        ScopePolicy::require_any(["*"]).unwrap_err(),
        ScopeError::Invalid
    );
}

#[test]
fn a_route_requiring_no_scopes_cannot_be_built_with_require_any() {
    assert_eq!(
        ScopePolicy::require_any(Vec::<String>::new()),
        Err(ScopeError::NoneRequired)
    );
}
