//! The `Pipeline` RPC: many reads and writes over one stream, answered as they finish.
//!
//! A unary call costs an HTTP/2 stream of its own (headers, trailers, a task on the server)
//! per request; on a busy member that is most of a request's CPU outside the store. Over a
//! pipeline a request is one message, and answers that are ready together leave in one
//! frame (tonic gathers the messages a stream yields in one poll).
//!
//! The whole pipeline runs inside the task that sends its answers: [`ResponseStream`] reads
//! requests while fewer than [`PIPELINE_IN_FLIGHT_MAX`] are unanswered, works on them
//! concurrently, and yields each answer when it is done. Nothing is spawned per request, and
//! a client that stops reading answers stops the server reading its requests (HTTP/2 flow
//! control then holds the client back): a pipeline's memory is bounded by its in-flight
//! limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, Stream};
use prost::Message;
use tonic::{Status, Streaming};

use super::MetaServer;
use crate::limits::{PIPELINE_IN_FLIGHT_MAX, RESPONSE_MESSAGE_BYTES_MAX};
use crate::proto::{self, pipeline_request, pipeline_response, ErrorCode, PipelineRequest, PipelineResponse};
use crate::store;

type Answer = Pin<Box<dyn Future<Output = PipelineResponse> + Send>>;

/// The answers of one pipeline (see the module docs): `S` is the stream of requests,
/// `answer` starts the work on one.
pub struct ResponseStream<S = Streaming<PipelineRequest>> {
    answer: Box<dyn Fn(PipelineRequest) -> Answer + Send>,
    /// `None` once the client closed its side (or it broke), or the server is stopping.
    requests: Option<S>,
    in_flight: FuturesUnordered<Answer>,
    /// Resolves when the server stops: no more requests are read, the stream ends once those
    /// in flight are answered (the client reconnects elsewhere).
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl ResponseStream {
    pub(super) fn new(server: MetaServer, requests: Streaming<PipelineRequest>) -> ResponseStream {
        let node = server.inner.node.clone();
        ResponseStream::with_answer(
            requests,
            move |request| Box::pin(answer(server.clone(), request)),
            async move { node.cancelled().await },
        )
    }
}

impl<S> ResponseStream<S> {
    fn with_answer(
        requests: S,
        answer: impl Fn(PipelineRequest) -> Answer + Send + 'static,
        stopping: impl Future<Output = ()> + Send + 'static,
    ) -> ResponseStream<S> {
        ResponseStream {
            answer: Box::new(answer),
            requests: Some(requests),
            in_flight: FuturesUnordered::new(),
            stopping: Box::pin(stopping),
        }
    }
}

impl<S: Stream<Item = Result<PipelineRequest, Status>> + Unpin> Stream for ResponseStream<S> {
    type Item = Result<PipelineResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.requests.is_some() && this.stopping.as_mut().poll(cx).is_ready() {
            this.requests = None;
        }
        while this.in_flight.len() < PIPELINE_IN_FLIGHT_MAX {
            let Some(requests) = this.requests.as_mut() else {
                break;
            };
            match Pin::new(requests).poll_next(cx) {
                Poll::Ready(Some(Ok(request))) => this.in_flight.push((this.answer)(request)),
                // The client closed its side: answer what is in flight, then end.
                Poll::Ready(None) => this.requests = None,
                // An undecodable or oversized message, or a broken connection: the stream
                // ends with that error; the requests in flight go unanswered (the client
                // learns that their outcome is unknown).
                Poll::Ready(Some(Err(status))) => {
                    this.requests = None;
                    this.in_flight.clear();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.in_flight).poll_next(cx) {
            Poll::Ready(Some(response)) => Poll::Ready(Some(Ok(response))),
            // Nothing in flight: done if the client is, else the request stream's waker is set.
            Poll::Ready(None) if this.requests.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Answers one request as the unary RPC of the same kind would.
async fn answer(server: MetaServer, request: PipelineRequest) -> PipelineResponse {
    let response = match request.request {
        Some(pipeline_request::Request::Range(range)) => server
            .range_request(range)
            .await
            .map(pipeline_response::Response::Range)
            .map_err(|status| error_of(&status)),
        Some(pipeline_request::Request::Write(command)) => server
            .write_request(command)
            .await
            .map(pipeline_response::Response::Write)
            .map_err(|status| error_of(&status)),
        None => Err(store::error(
            ErrorCode::InvalidArgument,
            "a pipeline request without a request",
        )),
    };
    let mut answer = PipelineResponse {
        id: request.id,
        response: Some(response.unwrap_or_else(pipeline_response::Response::Error)),
    };
    // An answer over the encoding limit would end the whole stream (and fail every request
    // on it); it fails alone instead. (A transaction of many range reads can get there.)
    if answer.encoded_len() > RESPONSE_MESSAGE_BYTES_MAX {
        let message = format!(
            "the answer is {} bytes, over the limit of {RESPONSE_MESSAGE_BYTES_MAX}; a write \
             has applied nonetheless: read fewer keys per request",
            answer.encoded_len()
        );
        answer.response = Some(pipeline_response::Response::Error(store::error(
            ErrorCode::TooLarge,
            message,
        )));
    }
    answer
}

/// The store error a status carries (the store's refusals all carry one). A status without
/// one gets the code that makes the client treat it as it treats that status from a unary
/// call: a bad request stays refused, anything else leaves the outcome unknown (it may come
/// after a write applied).
fn error_of(status: &Status) -> proto::Error {
    match proto::Error::decode(status.details()) {
        Ok(error) if error.code != ErrorCode::Unspecified as i32 => error,
        _ => {
            let code = match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                    ErrorCode::InvalidArgument
                }
                _ => ErrorCode::UnknownOutcome,
            };
            store::error(code, status.message())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::{FutureExt, StreamExt};
    use tokio::sync::oneshot;

    use super::*;

    fn request(id: u64) -> Result<PipelineRequest, Status> {
        Ok(PipelineRequest { id, request: None })
    }

    /// Polls a stream by hand with a waker that counts its wake-ups, so a test can check
    /// that an event the stream waits for wakes it (a Pending without a registered waker
    /// would hang a real server's task).
    #[derive(Default)]
    struct Poller(Arc<Wakes>);

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Poller {
        fn poll<S: Stream + Unpin>(&self, stream: &mut S) -> Poll<Option<S::Item>> {
            let waker = std::task::Waker::from(self.0.clone());
            let mut cx = Context::from_waker(&waker);
            Pin::new(stream).poll_next(&mut cx)
        }

        /// Whether the stream was woken since the last call.
        fn woken(&self) -> bool {
            self.0 .0.swap(0, Ordering::SeqCst) > 0
        }
    }

    #[test]
    fn at_most_the_in_flight_limit_is_read_and_each_request_is_answered_once() {
        // Goal: with every request still being worked on, the stream reads exactly
        // PIPELINE_IN_FLIGHT_MAX of them and no more; each finished one lets one more in; the
        // stream ends after the client's side ended and every answer went out.
        let n = PIPELINE_IN_FLIGHT_MAX as u64 + 10;
        let read = Arc::new(AtomicUsize::new(0));
        let counted = read.clone();
        let requests = futures_util::stream::iter((1..=n).map(request)).inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let (finish, finishes) = std::sync::mpsc::channel::<(u64, oneshot::Sender<()>)>();
        let answer = move |request: PipelineRequest| -> Answer {
            let (done, wait) = oneshot::channel();
            finish.send((request.id, done)).unwrap();
            Box::pin(wait.map(move |_| PipelineResponse {
                id: request.id,
                response: None,
            }))
        };
        let mut stream = ResponseStream::with_answer(requests, answer, std::future::pending());
        let poller = Poller::default();
        assert!(poller.poll(&mut stream).is_pending());
        assert_eq!(read.load(Ordering::SeqCst), PIPELINE_IN_FLIGHT_MAX);
        let mut started: Vec<_> = finishes.try_iter().collect();
        assert_eq!(started.len(), PIPELINE_IN_FLIGHT_MAX);
        // The 5th request finishes: its answer comes out, and one more request is read.
        let (id, done) = started.remove(4);
        poller.woken();
        done.send(()).unwrap();
        assert!(poller.woken(), "a finished request wakes the stream");
        match poller.poll(&mut stream) {
            Poll::Ready(Some(Ok(answer))) => assert_eq!(answer.id, id),
            other => panic!("expected the answer to {id}, got {other:?}"),
        }
        assert!(poller.poll(&mut stream).is_pending());
        assert_eq!(read.load(Ordering::SeqCst), PIPELINE_IN_FLIGHT_MAX + 1);
        started.extend(finishes.try_iter());
        // Everything finishes: every id is answered exactly once, then the stream ends.
        let mut answered = vec![id];
        // (After a Pending, only a wake-up may lead to progress; after a Ready the consumer
        // polls again anyway.)
        let mut pending = true;
        loop {
            let finishing = !started.is_empty();
            poller.woken();
            for (_, done) in started.drain(..) {
                done.send(()).unwrap();
            }
            if pending {
                assert!(finishing, "the stream waits, but no request is left to finish");
                assert!(poller.woken(), "finished requests wake a pending stream");
            }
            pending = false;
            match poller.poll(&mut stream) {
                Poll::Ready(Some(Ok(answer))) => answered.push(answer.id),
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(status))) => panic!("unexpected error {status}"),
                Poll::Pending => pending = true,
            }
            started.extend(finishes.try_iter());
        }
        answered.sort_unstable();
        assert_eq!(answered, (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn a_broken_request_stream_ends_the_answers_with_its_error() {
        let requests = futures_util::stream::iter(vec![request(1), Err(Status::data_loss("torn"))]);
        let answer = |request: PipelineRequest| -> Answer {
            Box::pin(std::future::pending::<()>().map(move |()| PipelineResponse {
                id: request.id,
                response: None,
            }))
        };
        let mut stream = ResponseStream::with_answer(requests, answer, std::future::pending());
        let poller = Poller::default();
        match poller.poll(&mut stream) {
            Poll::Ready(Some(Err(status))) => assert_eq!(status.code(), tonic::Code::DataLoss),
            other => panic!("expected the stream's error, got {other:?}"),
        }
        // Request 1 is dropped unanswered, and the stream has ended.
        assert!(matches!(poller.poll(&mut stream), Poll::Ready(None)));
    }

    #[test]
    fn a_stopping_server_reads_no_more_and_ends_after_the_answers_in_flight() {
        // Goal: once the server stops, the stream reads no further request and ends as soon
        // as the requests it holds are answered, although the client keeps its side open.
        let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (finish, finished) = oneshot::channel::<()>();
        let finished = std::sync::Mutex::new(Some(finished));
        let answer = move |request: PipelineRequest| -> Answer {
            let finished = finished.lock().unwrap().take().expect("only request 1 is read");
            Box::pin(finished.map(move |_| PipelineResponse {
                id: request.id,
                response: None,
            }))
        };
        let mut stream = ResponseStream::with_answer(
            tokio_stream::wrappers::UnboundedReceiverStream::new(requests_rx),
            answer,
            stopped.map(|_| ()),
        );
        let poller = Poller::default();
        requests_tx.send(request(1)).unwrap();
        assert!(poller.poll(&mut stream).is_pending());
        poller.woken();
        stop.send(()).unwrap();
        assert!(poller.woken(), "the server stopping wakes the stream");
        requests_tx.send(request(2)).unwrap();
        assert!(
            poller.poll(&mut stream).is_pending(),
            "request 1 is still in flight"
        );
        poller.woken();
        finish.send(()).unwrap();
        assert!(poller.woken(), "the answer wakes the stream");
        assert!(matches!(poller.poll(&mut stream), Poll::Ready(Some(Ok(answer))) if answer.id == 1));
        assert!(
            matches!(poller.poll(&mut stream), Poll::Ready(None)),
            "request 2 was never read"
        );
    }
}
