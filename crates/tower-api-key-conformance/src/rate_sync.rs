//! What every [`RateLimitSync`] must do: uses of one bucket from any
//! replica count exactly once, a batch answers in the order of its uses,
//! an idle bucket starts from now, and idle rows are swept. A store crate
//! calls these from its tests with syncs over one database.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tower_api_key::limits::{BucketUse, RateLimit, RateLimitSync};

/// A use of `cost` against `subject`'s bucket for `limit`.
fn bucket(subject: &str, limit: &str, cost: u64) -> BucketUse {
    BucketUse::new(subject, limit.parse::<RateLimit>().expect("a limit"), cost)
}

/// A whole second, for exact nanosecond arithmetic.
fn sync_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

const MS: Duration = Duration::from_millis(1);

/// Syncs `a` and `b` (two replicas on one database) of one bucket at once:
/// every use counts exactly once, whichever ran first, and batches that
/// name two buckets in opposite orders never deadlock. Run it on a
/// multi-threaded runtime.
pub async fn syncs_of_two_replicas_add_up_exactly<S: RateLimitSync + Clone>(a: S, b: S) {
    let t = sync_time();
    // 10/1s: 100 ms per request.
    let (three, four) = ([bucket("key:k", "10/1s", 3)], [bucket("key:k", "10/1s", 4)]);
    let (x, y) = tokio::join!(a.sync(&three, t), b.sync(&four, t));
    let mut tats = [x.expect("synced")[0], y.expect("synced")[0]];
    tats.sort();
    assert!(
        tats[0] == t + 300 * MS || tats[0] == t + 400 * MS,
        "{tats:?}"
    );
    assert_eq!(tats[1], t + 700 * MS, "3 + 4 requests, each counted once");

    // 40 syncs at once over both replicas, each naming two buckets in one
    // order or the other.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let sync = if i % 2 == 0 { a.clone() } else { b.clone() };
            let uses = if i % 4 < 2 {
                vec![bucket("key:k", "10/1s", 1), bucket("account:sa", "1/1s", 1)]
            } else {
                vec![bucket("account:sa", "1/1s", 1), bucket("key:k", "10/1s", 1)]
            };
            tokio::spawn(async move { sync.sync(&uses, t).await })
        })
        .collect();
    let mut latest = SystemTime::UNIX_EPOCH;
    for task in tasks {
        let tats = task
            .await
            .expect("the task ran")
            .expect("no sync fails (no deadlock)");
        latest = latest.max(tats.into_iter().max().expect("two buckets"));
    }
    // A use of cost 0 reads a bucket.
    let now = a
        .sync(
            &[bucket("key:k", "10/1s", 0), bucket("account:sa", "1/1s", 0)],
            t,
        )
        .await
        .expect("synced");
    assert_eq!(now, [t + 4700 * MS, t + Duration::from_secs(40)]);
    assert_eq!(latest, t + Duration::from_secs(40));
}

/// A batch of `sync` answers in the order of its uses, uses of one bucket
/// add up, and an idle bucket starts from now; `fresh` (a new sync on the
/// same database, made after these) sweeps idle rows at its first call but
/// keeps the bucket it uses. `rows` lists the stored buckets as
/// `<subject> <limit>`, sorted.
pub async fn a_batch_answers_in_order_and_idle_buckets_are_swept<S, F, R, Fut>(
    sync: S,
    fresh: F,
    rows: R,
) where
    S: RateLimitSync,
    F: FnOnce() -> S,
    R: Fn() -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let t = sync_time();
    assert!(sync.sync(&[], t).await.expect("synced").is_empty());
    let tats = sync
        .sync(
            &[
                bucket("key:a", "5/1s", 1),
                bucket("key:b", "5/1s", 2),
                bucket("key:a", "5/1s", 3),
                bucket("key:a", "100/1m,burst=20", 1),
            ],
            t,
        )
        .await
        .expect("synced");
    assert_eq!(
        tats,
        [t + 800 * MS, t + 400 * MS, t + 800 * MS, t + 600 * MS],
        "200 ms per use of 5/1s, 600 ms of 100/1m"
    );
    // Ten seconds later key:a's bucket is empty again: it starts from now.
    let later = t + Duration::from_secs(10);
    let tats = sync
        .sync(&[bucket("key:a", "5/1s", 1)], later)
        .await
        .expect("synced");
    assert_eq!(tats, [later + 200 * MS]);
    assert_eq!(
        rows().await,
        ["key:a 100/1m,burst=20", "key:a 5/1s", "key:b 5/1s"]
    );
    // Two minutes on every bucket is idle, but the one used stays.
    let much_later = t + Duration::from_secs(120);
    fresh()
        .sync(&[bucket("key:b", "5/1s", 1)], much_later)
        .await
        .expect("synced");
    assert_eq!(rows().await, ["key:b 5/1s"]);
}

/// Costs too large for any TAT (a cost of `u64::MAX`, again and again)
/// leave the bucket at the latest TAT there is, never an error or an
/// overflow.
pub async fn a_huge_cost_saturates_the_bucket<S: RateLimitSync>(sync: S) {
    let t = sync_time();
    let huge = [bucket("key:h", "1/1d", u64::MAX)];
    let mut last = t;
    for _ in 0..12 {
        let tats = sync.sync(&huge, t).await.expect("a huge cost is no error");
        assert!(tats[0] >= last, "a TAT never moves back");
        last = tats[0];
    }
    let latest = SystemTime::UNIX_EPOCH + Duration::from_nanos(i64::MAX as u64);
    assert_eq!(last, latest);
    let tats = sync
        .sync(&[bucket("key:h", "1/1d", 0)], t)
        .await
        .expect("synced");
    assert_eq!(tats, [latest]);
}
