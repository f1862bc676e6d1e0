//! The daemon's database session: connect, migrate, `LISTEN`, and a task
//! driving the connection that forwards our schema's NOTIFYs (and the end of
//! the connection) as [`Event`]s.

use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client};

use crate::db::{self, DbConfig, DbError};
use crate::text::error_text;

/// What the connection task reports.
#[derive(Debug)]
pub(super) enum Event {
    /// The settings of our schema changed.
    Notify,
    /// The connection ended; why.
    Closed(String),
}

/// Connects, drives the connection in a task that forwards notifications for
/// our schema, migrates and subscribes.
pub(super) async fn connect(
    config: &DbConfig,
) -> Result<(Client, mpsc::UnboundedReceiver<Event>), DbError> {
    let (mut client, mut connection) = config.connect().await?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let schema = config.schema.clone();
    tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if note.channel() == db::CHANNEL && note.payload() == schema {
                        let _ = events_tx.send(Event::Notify);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    let _ = events_tx.send(Event::Closed(error_text(&error)));
                    break;
                }
                None => {
                    let _ = events_tx.send(Event::Closed("connection ended".to_owned()));
                    break;
                }
            }
        }
    });
    db::migrate(&mut client, &config.schema).await?;
    client
        .batch_execute(&format!("LISTEN {}", db::CHANNEL))
        .await?;
    Ok((client, events))
}
