//! Watch streams: each pulls whole revisions from the store's change feed on this member,
//! so a watcher costs a bounded buffer however slow it reads.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{lock, raft_status, status, Inner, MetaServer};
use crate::limits::*;
use crate::proto::{self, ErrorCode};
use crate::store::{self, Change, KeyRange};

/// Releases a watch's place in the per-connection and per-server counts.
struct WatchSlot {
    inner: Arc<Inner>,
    connection: Option<SocketAddr>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        *lock(&self.inner.n_watches) -= 1;
        if let Some(connection) = self.connection {
            let mut by_connection = lock(&self.inner.watches_by_connection);
            if let Some(n) = by_connection.get_mut(&connection) {
                *n -= 1;
                if *n == 0 {
                    by_connection.remove(&connection);
                }
            }
        }
    }
}

fn take_slot(inner: &Arc<Inner>, connection: Option<SocketAddr>) -> Result<WatchSlot, Status> {
    {
        let mut n_watches = lock(&inner.n_watches);
        if *n_watches >= WATCHES_MAX {
            return Err(status(store::error(
                ErrorCode::TooManyRequests,
                format!("this server has {WATCHES_MAX} watches open, its limit; watch on another member"),
            )));
        }
        if let Some(connection) = connection {
            let mut by_connection = lock(&inner.watches_by_connection);
            let n = by_connection.entry(connection).or_default();
            if *n >= WATCHES_PER_CONNECTION_MAX {
                return Err(status(store::error(
                    ErrorCode::TooManyRequests,
                    format!(
                        "this connection has {WATCHES_PER_CONNECTION_MAX} watches open, the limit; \
                         watch a prefix instead of many keys, or cancel unused watches"
                    ),
                )));
            }
            *n += 1;
        }
        *n_watches += 1;
    }
    Ok(WatchSlot {
        inner: inner.clone(),
        connection,
    })
}

fn to_event(change: Change, with_prev: bool) -> proto::Event {
    proto::Event {
        r#type: if change.deleted {
            proto::event::EventType::Delete as i32
        } else {
            proto::event::EventType::Put as i32
        },
        kv: Some(change.kv),
        prev_kv: if with_prev { change.prev } else { None },
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::watch_server::Watch for MetaServer {
    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        self.check_serving()?;
        let connection = request.remote_addr();
        let request = request.into_inner();
        if request.key.is_empty() && request.range_end.is_empty() {
            return Err(status(store::error(
                ErrorCode::InvalidArgument,
                "the key to watch is empty",
            )));
        }
        if request.start_revision < 0 {
            return Err(status(store::error(
                ErrorCode::InvalidArgument,
                "start_revision cannot be negative",
            )));
        }
        let slot = take_slot(&self.inner, connection)?;
        let current = self.inner.applied.borrow().revision;
        let next = if request.start_revision == 0 {
            current + 1
        } else {
            request.start_revision
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER_RESPONSES_MAX);
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let server = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(end) = server.feed_watch(request, next, &tx).await {
                let _ = end_tx.send(end);
            }
        });
        // Data first; then, if the feed ended with an error, that error.
        let data = tokio_stream::wrappers::ReceiverStream::new(rx);
        let end = tokio_stream::once(end_rx).then(|end_rx| async move { end_rx.await.ok() });
        let stream = data.chain(end.filter_map(|end| end.map(Err)));
        Ok(Response::new(Box::pin(stream)))
    }
}

impl MetaServer {
    /// Sends every change from revision `next` on until the client goes away; returns the
    /// status that ends the stream (compacted, too slow, shutting down).
    async fn feed_watch(
        &self,
        request: proto::WatchRequest,
        mut next: i64,
        tx: &mpsc::Sender<Result<proto::WatchResponse, Status>>,
    ) -> Result<(), Status> {
        let range = KeyRange::new(&request.key, &request.range_end);
        let mut applied = self.inner.applied.clone();
        let progress_interval = (request.progress_interval_ms > 0)
            .then(|| std::time::Duration::from_millis(request.progress_interval_ms));
        let mut last_sent = tokio::time::Instant::now();
        loop {
            // Wait for a revision we have not sent, a progress tick, or the client leaving.
            let progress_due = async {
                match progress_interval {
                    Some(interval) => tokio::time::sleep_until(last_sent + interval).await,
                    None => std::future::pending().await,
                }
            };
            let mut progress = false;
            tokio::select! {
                changed = applied.wait_for(|info| info.revision >= next) => {
                    if changed.is_err() {
                        return Err(Status::unavailable("the server is shutting down; resume the watch elsewhere"));
                    }
                }
                () = progress_due => progress = true,
                () = tx.closed() => return Ok(()),
                () = self.inner.node.cancelled() => {
                    return Err(Status::unavailable("the server is shutting down; resume the watch elsewhere"));
                }
            }
            if lock(&self.inner.corrupt).is_some() {
                return Err(status(store::error(
                    ErrorCode::Corrupt,
                    format!("this member diverged and stopped serving; resume from revision {next} on another member"),
                )));
            }
            let range_for_read = range.clone();
            let from = next;
            let result = self
                .inner
                .group
                .read_local(move |s| {
                    s.changes(&range_for_read, from, WATCH_RESPONSE_BYTES_MAX)
                        .map_err(|e| (e, s.compact_revision()))
                })
                .await
                .map_err(raft_status)?;
            let (changes, last) = match result {
                Ok(found) => found,
                Err((error, compact_revision)) => {
                    let _ = tx.try_send(Ok(proto::WatchResponse {
                        header: Some(self.header(None)),
                        events: Vec::new(),
                        error: Some(error.clone()),
                        compact_revision,
                    }));
                    return Err(status(error));
                }
            };
            let events: Vec<proto::Event> = changes
                .into_iter()
                .filter(|c| {
                    if c.deleted {
                        !request.no_delete
                    } else {
                        !request.no_put
                    }
                })
                .map(|c| to_event(c, request.prev_kv))
                .collect();
            let covered = last >= next;
            if covered {
                next = last + 1;
            }
            if events.is_empty() && !progress {
                continue;
            }
            let mut header = self.header(None);
            header.revision = if covered { last } else { next - 1 };
            let response = proto::WatchResponse {
                header: Some(header),
                events,
                error: None,
                compact_revision: 0,
            };
            match tokio::time::timeout(self.inner.options.watch_stall_max, tx.send(Ok(response))).await {
                Ok(Ok(())) => last_sent = tokio::time::Instant::now(),
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(status(store::error(
                        ErrorCode::TooManyRequests,
                        format!(
                        "the watcher read nothing for {:.1} s with {WATCH_BUFFER_RESPONSES_MAX} responses \
                             waiting, so the server cut it off; resume the watch from the revision after \
                             the last one received",
                        self.inner.options.watch_stall_max.as_secs_f64(),
                    ),
                    )))
                }
            }
        }
    }
}
