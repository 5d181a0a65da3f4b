//! A revoked key stays revoked when writes that revoke it or bring it back
//! race on two stores over one database: a revoke, an import of the key,
//! and an import of its revocation, round after round. A store crate calls
//! these from its tests with two stores on one database (run them on a
//! multi-threaded runtime).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Barrier;
use tower_api_key::store::NewKey;
use tower_api_key::{KeyStore, MemoryStore};

use super::{exported, StoreFactory, StoreSettings};

/// Runs `first` and `second` on two tasks released at once; their answers.
async fn race<A, B>(first: A, second: B) -> (A::Output, B::Output)
where
    A: Future + Send + 'static,
    A::Output: Send,
    B: Future + Send + 'static,
    B::Output: Send,
{
    let barrier = Arc::new(Barrier::new(2));
    let (b1, b2) = (barrier.clone(), barrier);
    let first = tokio::spawn(async move {
        b1.wait().await;
        first.await
    });
    let second = tokio::spawn(async move {
        b2.wait().await;
        second.await
    });
    (
        first.await.expect("the task ran"),
        second.await.expect("the task ran"),
    )
}

/// A revoke on `a` and an import of the same revocation on `b`: both
/// answer (never a deadlock), and the key ends gone.
pub async fn a_revoke_racing_the_import_of_its_revocation_both_answer<S>(
    a: &S,
    b: &S,
    rounds: usize,
) where
    S: KeyStore + Clone + 'static,
{
    for round in 0..rounds {
        let id = a
            .create(NewKey::new("sa-race"))
            .await
            .unwrap()
            .record
            .key_id;
        let (sa, sb) = (a.clone(), b.clone());
        let (revoked, imported) = race(async move { sa.revoke(id, None).await }, async move {
            sb.import_revoked(id).await
        })
        .await;
        assert!(revoked.is_ok(), "round {round}: revoke: {revoked:?}");
        assert!(imported.is_ok(), "round {round}: import: {imported:?}");
        assert!(a.get(id).await.unwrap().is_none(), "round {round}: gone");
    }
}

/// An import of a key on `b` racing its revoke on `a`: the key ends
/// revoked, never brought back by the import.
pub async fn an_import_racing_the_keys_revoke_never_brings_it_back<S>(a: &S, b: &S, rounds: usize)
where
    S: KeyStore + Clone + 'static,
{
    for round in 0..rounds {
        let id = a
            .create(NewKey::new("sa-race"))
            .await
            .unwrap()
            .record
            .key_id;
        let stored = exported(a, id).await;
        let (sa, sb) = (a.clone(), b.clone());
        let (revoked, imported) = race(async move { sa.revoke(id, None).await }, async move {
            sb.import(stored).await
        })
        .await;
        assert!(revoked.unwrap(), "round {round}: revoked");
        assert!(
            a.get(id).await.unwrap().is_none(),
            "round {round}: brought back by the import ({imported:?})"
        );
    }
}

/// An import on `b` of a key the database never held (made in a memory
/// store) racing the import of its revocation on `a`: the key ends
/// revoked, never held.
pub async fn an_import_racing_its_revocations_import_never_holds_the_key<S>(
    a: &S,
    b: &S,
    rounds: usize,
) where
    S: KeyStore + Clone + 'static,
{
    let source = MemoryStore::new();
    for round in 0..rounds {
        let id = source
            .create(NewKey::new("sa-race"))
            .await
            .unwrap()
            .record
            .key_id;
        let stored = exported(&source, id).await;
        let (sa, sb) = (a.clone(), b.clone());
        let (revoked, imported) = race(async move { sa.import_revoked(id).await }, async move {
            sb.import(stored).await
        })
        .await;
        revoked.unwrap();
        assert!(
            a.get(id).await.unwrap().is_none(),
            "round {round}: held despite its revocation ({imported:?})"
        );
    }
}

/// The three races above on one store of `f`, from two tasks (50 rounds
/// each): in the suite, so every store runs them; a store over a shared
/// database also runs them with two stores.
pub async fn revokes_and_imports_racing_on_one_store_never_bring_a_key_back<F: StoreFactory>(
    f: &F,
) {
    let store = f.store(StoreSettings::new()).await;
    let other = store.clone();
    a_revoke_racing_the_import_of_its_revocation_both_answer(&store, &other, 50).await;
    an_import_racing_the_keys_revoke_never_brings_it_back(&store, &other, 50).await;
    an_import_racing_its_revocations_import_never_holds_the_key(&store, &other, 50).await;
}
