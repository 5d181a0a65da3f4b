//! The LISTEN connection: PostgreSQL's [`Subscription`], which the SQL
//! core's [`Listener`](tower_api_key_sql::Listener) keeps open (reconnection
//! with backoff, probes, health checks) and turns into invalidations.
//!
//! Each store has one such connection of its own, outside the pool, so it
//! works only where a session lasts: the database or a session-mode pooler.

use std::future::poll_fn;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Notification, Socket};
use tower_api_key_sql::{BoxError, Session, Subscription};

/// Where and how the LISTEN connection connects, and the pool it probes.
pub(crate) struct PgSubscription<T> {
    pub(crate) pg: Config,
    pub(crate) channel: String,
    pub(crate) tls: T,
    pub(crate) pool: Pool,
}

/// Aborts the task on drop, so a connection driver never outlives its session.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One LISTEN connection.
pub(crate) struct PgSession {
    client: Client,
    notifications: mpsc::UnboundedReceiver<Notification>,
    driver: AbortOnDrop<Option<tokio_postgres::Error>>,
    backend_pid: i32,
}

#[async_trait]
impl<T> Subscription for PgSubscription<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    type Session = PgSession;

    async fn listen(&self) -> Result<PgSession, BoxError> {
        let (client, mut connection) = self.pg.connect(self.tls.clone()).await?;
        let (tx, notifications) = mpsc::unbounded_channel();
        // `poll_message` both drives the connection and yields notifications.
        let driver = AbortOnDrop(tokio::spawn(async move {
            loop {
                match poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n).is_err() {
                            return None;
                        }
                    }
                    Some(Ok(_notice)) => {}
                    Some(Err(e)) => return Some(e),
                    None => return None,
                }
            }
        }));
        // The channel name is validated to [a-z_][a-z0-9_]*, so it needs no quoting.
        client
            .batch_execute(&format!("LISTEN {}", self.channel))
            .await?;
        let backend_pid: i32 = client
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        Ok(PgSession {
            client,
            notifications,
            driver,
            backend_pid,
        })
    }

    async fn probe(&self) -> bool {
        match self.pool.get().await {
            Ok(client) => client.simple_query("").await.is_ok(),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl Session for PgSession {
    fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    async fn next(&mut self) -> Result<String, BoxError> {
        match self.notifications.recv().await {
            Some(n) => Ok(n.payload().to_owned()),
            // The driver ended: the connection is gone.
            None => match (&mut self.driver.0).await {
                Ok(Some(e)) => Err(e.into()),
                _ => Err("the server closed the connection".into()),
            },
        }
    }

    async fn check(&mut self) -> Result<(), BoxError> {
        self.client.simple_query("").await?;
        Ok(())
    }
}
