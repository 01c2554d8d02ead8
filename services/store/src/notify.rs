//! The change feed: every committed policy write, as announced by `NOTIFY`.
//!
//! A notification sent while a listener is disconnected is lost, so after
//! any reconnect the listener yields [`Event::Resync`]: the consumer must
//! reload from the tables rather than trust that it saw every change.

use serde::Deserialize;
use sqlx::postgres::PgListener;

use crate::{Error, Store, CHANNEL};

/// One committed write.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `put` or `delete`.
    pub op: String,
    pub name: String,
    pub resource_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Changed(Change),
    /// Changes may have been missed: reload everything.
    Resync,
}

pub struct Listener {
    inner: PgListener,
}

impl Store {
    /// Starts listening. Subscribe before the initial load, so that nothing
    /// committed between the load and the subscription is missed.
    pub async fn listen(&self) -> Result<Listener, Error> {
        let mut inner = PgListener::connect_with(&self.pool).await?;
        inner.listen(CHANNEL).await?;
        Ok(Listener { inner })
    }
}

impl Listener {
    /// The next event. Waits; reconnects by itself after a lost connection.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            match self.inner.try_recv().await? {
                // `None`: the connection dropped and will be re-established on the next call.
                None => return Ok(Event::Resync),
                Some(n) => match serde_json::from_str::<Change>(n.payload()) {
                    Ok(change) => return Ok(Event::Changed(change)),
                    Err(e) => {
                        tracing::warn!(payload = n.payload(), error = %e, "ignoring malformed notification")
                    }
                },
            }
        }
    }
}
