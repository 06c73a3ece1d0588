//! Exactly-once client sessions (MIT 6.824 lab 3; Raft thesis §6.3).
//!
//! A client numbers its writes 1, 2, 3, ... and sends with each the lowest sequence number
//! whose reply it has not received yet (`ack_below`). The store keeps the reply of every
//! unacknowledged write, so a retry of a write that already applied gets the recorded reply
//! instead of applying twice. Memory is bounded: at most [`SESSIONS_MAX`] sessions (the least
//! recently used is evicted, deterministically by log index) and [`SESSION_REPLIES_MAX`]
//! unacknowledged replies each. A retry whose session or reply is gone gets
//! `SESSION_EXPIRED`: its outcome is unknown, never applied twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use crate::limits::{SESSIONS_MAX, SESSION_REPLIES_MAX};
use crate::proto::{CommandReply, Session};

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SessionState {
    pub replies: BTreeMap<u64, CommandReply>,
    /// Every sequence number below this one was acknowledged (its reply dropped).
    pub ack_below: u64,
    pub last_used_index: u64,
}

pub(crate) enum SessionCheck {
    New,
    Duplicate(CommandReply),
    Expired(String),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sessions {
    sessions: HashMap<u64, SessionState>,
    by_last_used: BTreeSet<(u64, u64)>,
    /// Recently evicted client ids (at most [`SESSIONS_MAX`], oldest first): a write from one
    /// of them may be a retry of an applied write, so it is refused rather than applied.
    evicted: VecDeque<u64>,
    evicted_set: HashSet<u64>,
}

impl Sessions {
    pub fn check(&mut self, session: &Session, index: u64) -> SessionCheck {
        let Some(state) = self.sessions.get_mut(&session.client_id) else {
            if self.evicted_set.contains(&session.client_id) {
                return SessionCheck::Expired(format!(
                    "client session {:x} expired (the store keeps {SESSIONS_MAX} sessions); \
                     the outcome of write {} is unknown",
                    session.client_id, session.seq
                ));
            }
            return SessionCheck::New;
        };
        self.by_last_used
            .remove(&(state.last_used_index, session.client_id));
        state.last_used_index = index;
        self.by_last_used.insert((index, session.client_id));
        if session.ack_below > state.ack_below {
            state.ack_below = session.ack_below;
            state.replies = state.replies.split_off(&session.ack_below);
        }
        if let Some(reply) = state.replies.get(&session.seq) {
            return SessionCheck::Duplicate(reply.clone());
        }
        if session.seq < state.ack_below {
            return SessionCheck::Expired(format!(
                "write {} of client {:x} was already acknowledged; a late retry is not applied again",
                session.seq, session.client_id
            ));
        }
        SessionCheck::New
    }

    pub fn record(&mut self, session: &Session, index: u64, reply: CommandReply) {
        if !self.sessions.contains_key(&session.client_id) {
            if self.sessions.len() >= SESSIONS_MAX {
                if let Some((_, oldest)) = self.by_last_used.pop_first() {
                    self.sessions.remove(&oldest);
                    self.remember_evicted(oldest);
                }
            }
            self.sessions.insert(
                session.client_id,
                SessionState {
                    ack_below: session.ack_below,
                    ..SessionState::default()
                },
            );
        }
        let state = self.sessions.get_mut(&session.client_id).expect("inserted above");
        self.by_last_used
            .remove(&(state.last_used_index, session.client_id));
        state.last_used_index = index;
        self.by_last_used.insert((index, session.client_id));
        if state.replies.len() >= SESSION_REPLIES_MAX {
            // The client keeps too many writes unacknowledged: forget the oldest reply (a
            // retry of it then gets SESSION_EXPIRED, never a second apply).
            if let Some((&oldest, _)) = state.replies.first_key_value() {
                state.replies.remove(&oldest);
                state.ack_below = state.ack_below.max(oldest + 1);
            }
        }
        state.replies.insert(session.seq, reply);
    }

    fn remember_evicted(&mut self, client_id: u64) {
        if self.evicted.len() >= SESSIONS_MAX {
            if let Some(forgotten) = self.evicted.pop_front() {
                self.evicted_set.remove(&forgotten);
            }
        }
        self.evicted.push_back(client_id);
        self.evicted_set.insert(client_id);
    }

    pub fn evicted(&self) -> impl Iterator<Item = &u64> {
        self.evicted.iter()
    }

    pub fn restore_evicted(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.remember_evicted(id);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &SessionState)> {
        self.sessions.iter()
    }

    pub fn insert(&mut self, client_id: u64, state: SessionState) {
        self.by_last_used.insert((state.last_used_index, client_id));
        self.sessions.insert(client_id, state);
    }
}
