//! The [`CreditLedger`] trait, re-exported at the crate root.

use std::time::SystemTime;

use async_trait::async_trait;

use crate::key::KeyId;
use crate::limits::CreditLease;
use crate::verifier::VerifierError;

/// Where keys' credits are counted: leases batches of a key's credits to
/// one replica and takes the unspent rest back.
///
/// The request path needs it only for keys whose [`KeyRecord`] carries
/// [`Credits`](crate::limits::Credits); every [`KeyStore`](crate::KeyStore)
/// is one. An [`Authenticator`](crate::Authenticator) gets its ledger with
/// the store ([`Authenticator::builder`](crate::Authenticator::builder)) or
/// from [`AuthenticatorBuilder::credits`](crate::AuthenticatorBuilder::credits);
/// one over a [`Verifier`](crate::Verifier) alone has none and refuses a key
/// whose record carries credits with
/// [`Reason::NoCreditLedger`](crate::Reason::NoCreditLedger) (500), never
/// admitting it without a count.
///
/// [`KeyRecord`]: crate::KeyRecord
#[async_trait]
pub trait CreditLedger: Send + Sync + 'static {
    /// Leases up to `want` of key `id`'s credits at `now`, atomically: the
    /// ledger first applies a refill that fell due, then grants
    /// [`lease_grant`](crate::limits::lease_grant) of what remains and takes
    /// it off. `None` when the key does not exist or has no credits.
    async fn lease_credits(
        &self,
        id: KeyId,
        want: u64,
        now: SystemTime,
    ) -> Result<Option<CreditLease>, VerifierError>;

    /// Gives back `amount` unspent credits of a lease of `generation`; the
    /// ledger adds them back only if the key's credits are still of that
    /// generation (no refill and no new setting since).
    async fn return_credits(
        &self,
        id: KeyId,
        generation: u64,
        amount: u64,
    ) -> Result<(), VerifierError>;
}
