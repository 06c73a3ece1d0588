//! The client's side of the `Pipeline` RPC: one stream per member carries the reads and
//! writes of every task that shares the client, each matched to its answer by id.
//!
//! A request's task puts it in the stream and waits for its own answer; one reader task per
//! stream hands each answer to the task waiting for it. When the stream ends or breaks, every
//! request still waiting fails as unreachable (a write's outcome is then unknown, and the
//! client retries it with its session, so it applies at most once). The stream closes when
//! the last handle to it is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use super::lock;
use crate::limits::REQUEST_MESSAGE_BYTES_MAX;
use crate::proto::{self, pipeline_request, pipeline_response, PipelineRequest};
use crate::store;

type Answer = Result<pipeline_response::Response, Status>;

#[derive(Default)]
struct Waiting {
    answers: HashMap<u64, oneshot::Sender<Answer>>,
    /// The id of the latest request.
    last_id: u64,
    /// Why the stream ended, once it has.
    ended: Option<String>,
}

/// A handle to one member's pipeline. Cheap to clone.
#[derive(Clone)]
pub(super) struct Pipeline {
    requests: mpsc::UnboundedSender<PipelineRequest>,
    waiting: Arc<Mutex<Waiting>>,
}

/// Removes a request's entry when its caller stops waiting (a timeout), so no answer is kept.
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.waiting).answers.remove(&self.id);
    }
}

impl Pipeline {
    /// Opens a pipeline on `channel`.
    pub(super) async fn open(channel: Channel) -> Result<Pipeline, Status> {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let opened = proto::kv_client::KvClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
            .pipeline(UnboundedReceiverStream::new(outgoing))
            .await;
        let mut answers = opened?.into_inner();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader_waiting = waiting.clone();
        tokio::spawn(async move {
            let reason = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let sender = lock(&reader_waiting).answers.remove(&answer.id);
                        if let Some(sender) = sender {
                            let _ =
                                sender.send(answer.response.ok_or_else(|| {
                                    Status::internal("the member sent an empty pipeline answer")
                                }));
                        }
                    }
                    Ok(None) => break "the member closed the pipeline".to_string(),
                    Err(status) => break format!("the pipeline broke: {}", status.message()),
                }
            };
            let mut waiting = lock(&reader_waiting);
            for (_, sender) in waiting.answers.drain() {
                let _ = sender.send(Err(Status::unavailable(reason.clone())));
            }
            waiting.ended = Some(reason);
        });
        Ok(Pipeline { requests, waiting })
    }

    /// Whether the stream has ended (a new one is needed).
    pub(super) fn has_ended(&self) -> bool {
        lock(&self.waiting).ended.is_some()
    }

    /// Sends `request` and waits for its answer. A store error comes back as a status whose
    /// details hold it, as from a unary call.
    pub(super) async fn call(&self, request: pipeline_request::Request) -> Answer {
        let mut request = PipelineRequest {
            id: u64::MAX, // (counted at its largest)
            request: Some(request),
        };
        // The member would refuse it by breaking the stream (and every request on it).
        store::check_request_bytes(request.encoded_len(), REQUEST_MESSAGE_BYTES_MAX).map_err(error_status)?;
        let (sender, answer) = oneshot::channel();
        let id = {
            let mut waiting = lock(&self.waiting);
            if let Some(reason) = &waiting.ended {
                return Err(Status::unavailable(reason.clone()));
            }
            waiting.last_id += 1;
            let id = waiting.last_id;
            waiting.answers.insert(id, sender);
            id
        };
        request.id = id;
        let _forget = Forget {
            waiting: &self.waiting,
            id,
        };
        if self.requests.send(request).is_err() {
            return Err(Status::unavailable("the pipeline is closed"));
        }
        match answer.await {
            Ok(Ok(pipeline_response::Response::Error(error))) => Err(error_status(error)),
            Ok(answer) => answer,
            Err(_) => Err(Status::unavailable("the pipeline ended")),
        }
    }
}

/// A store error as the status a unary call would have failed with (its details hold it).
fn error_status(error: proto::Error) -> Status {
    Status::with_details(
        tonic::Code::Unknown,
        error.message.clone(),
        error.encode_to_vec().into(),
    )
}
