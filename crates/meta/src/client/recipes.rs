//! Recipes on the store's primitives (as etcd's `concurrency` package and ZooKeeper's
//! recipes): a distributed lock with fencing tokens, and a leader election.
//!
//! Both rest on one pattern. Each contender creates a key `NAME/<lease id>` attached to its
//! own lease; the contender whose key has the lowest create revision holds the lock (or
//! leads). The others each watch only the key created just before theirs (no herd effect)
//! and check again when it is deleted. A contender that dies stops renewing its lease, so
//! its key vanishes when the lease expires and the next one takes over.
//!
//! **What a lease-based lock can and cannot promise.** While you hold the lock, no other
//! holder's *grant* overlaps yours as the store sees it. But your process can pause (GC,
//! swap, SIGSTOP) or be cut off past the lease's TTL without noticing; the store then gives
//! the lock to someone else while you still believe you hold it. No lock service can prevent
//! that. What protects the resource is the **fencing token**: the create revision of your
//! key, which grows with every new holder. Send it with every write to the protected
//! resource and have the resource refuse any token lower than the highest it has seen.

use std::time::Duration;

use super::{compare_create_revision, get_op, put_op, Error, KeepAlive, MetaClient, Result};
use crate::proto::{self, compare, response_op, ErrorCode, KeyValue};
use crate::store::prefix_end;

/// A held lock. Release it with [`LockGuard::release`]; if the process dies, the lock is
/// freed when its lease expires.
pub struct LockGuard {
    client: MetaClient,
    key: Vec<u8>,
    lease: i64,
    fencing_token: i64,
    _keep_alive: KeepAlive,
}

impl LockGuard {
    /// Grows with every new holder: pass it to the protected resource (see the module docs).
    pub fn fencing_token(&self) -> i64 {
        self.fencing_token
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Releases the lock (revokes its lease, deleting its key).
    pub async fn release(self) -> Result<()> {
        match self.client.lease_revoke(self.lease).await {
            Ok(_)
            | Err(Error::Server {
                code: ErrorCode::LeaseNotFound,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Creates this contender's key under `prefix` on a new lease and waits until it is the
/// oldest; returns the key, lease, keep-alive and the key's create revision.
async fn queue_and_wait(
    client: &MetaClient,
    prefix: &[u8],
    value: &[u8],
    ttl_seconds: i64,
    wait_max: Option<Duration>,
) -> Result<(Vec<u8>, i64, KeepAlive, i64)> {
    let lease = client.lease_grant(ttl_seconds).await?.id;
    let keep_alive = client.spawn_keep_alive(lease, ttl_seconds);
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:016x}").as_bytes());
    let response = client
        .txn(proto::TxnRequest {
            compare: vec![compare_create_revision(&key, compare::Result::Equal, 0)],
            success: vec![put_op(&key, value, lease)],
            failure: vec![get_op(&key)],
        })
        .await?;
    let my_revision = if response.succeeded {
        response.header.map_or(0, |h| h.revision)
    } else {
        match response.responses.first().and_then(|r| r.response.clone()) {
            Some(response_op::Response::Range(r)) => r.kvs.first().map_or(0, |kv| kv.create_revision),
            _ => 0,
        }
    };
    let wait = async {
        loop {
            let (revision, kvs) = client.get_prefix(prefix).await?;
            let predecessor = kvs
                .iter()
                .filter(|kv| kv.create_revision < my_revision)
                .max_by_key(|kv| kv.create_revision)
                .cloned();
            let Some(predecessor) = predecessor else {
                if !kvs.iter().any(|kv| kv.key == key) {
                    return Err(Error::Server {
                        code: ErrorCode::LeaseNotFound,
                        message: "our lock key vanished (the lease expired while waiting)".to_string(),
                    });
                }
                return Ok(());
            };
            let mut watcher = client
                .watch(proto::WatchRequest {
                    key: predecessor.key.clone(),
                    start_revision: revision + 1,
                    no_put: true,
                    ..Default::default()
                })
                .await?;
            // Wait until the predecessor's key is deleted, then look again.
            watcher.next().await?;
        }
    };
    let waited = match wait_max {
        Some(max) => tokio::time::timeout(max, wait).await.unwrap_or_else(|_| {
            Err(Error::Unavailable {
                message: format!("the lock was not free within {max:?}"),
            })
        }),
        None => wait.await,
    };
    if let Err(e) = waited {
        let _ = client.lease_revoke(lease).await;
        return Err(e);
    }
    Ok((key, lease, keep_alive, my_revision))
}

/// Takes the lock `name`, waiting for it (at most `wait_max`, if given). The lock's lease has
/// `ttl_seconds` and is renewed in the background while the guard lives.
pub async fn lock(
    client: &MetaClient,
    name: &str,
    ttl_seconds: i64,
    wait_max: Option<Duration>,
) -> Result<LockGuard> {
    let prefix = format!("{}/", name.trim_end_matches('/')).into_bytes();
    let (key, lease, keep_alive, fencing_token) =
        queue_and_wait(client, &prefix, b"", ttl_seconds, wait_max).await?;
    Ok(LockGuard {
        client: client.clone(),
        key,
        lease,
        fencing_token,
        _keep_alive: keep_alive,
    })
}

/// A leader election under one name: `campaign` waits until this candidate leads;
/// [`Election::leader`] tells anyone who leads now.
pub struct Election {
    client: MetaClient,
    prefix: Vec<u8>,
}

/// Leadership won by [`Election::campaign`]; dropped or resigned, it passes on.
pub struct Leadership {
    guard: LockGuard,
}

impl Leadership {
    /// The create revision of the leader's key: a fencing token for the term of this leader.
    pub fn fencing_token(&self) -> i64 {
        self.guard.fencing_token
    }

    pub async fn resign(self) -> Result<()> {
        self.guard.release().await
    }
}

impl Election {
    pub fn new(client: &MetaClient, name: &str) -> Election {
        Election {
            client: client.clone(),
            prefix: format!("{}/", name.trim_end_matches('/')).into_bytes(),
        }
    }

    /// Waits until this candidate (announcing `value`) leads.
    pub async fn campaign(&self, value: &[u8], ttl_seconds: i64) -> Result<Leadership> {
        let (key, lease, keep_alive, fencing_token) =
            queue_and_wait(&self.client, &self.prefix, value, ttl_seconds, None).await?;
        Ok(Leadership {
            guard: LockGuard {
                client: self.client.clone(),
                key,
                lease,
                fencing_token,
                _keep_alive: keep_alive,
            },
        })
    }

    /// The current leader's key and value (its announcement), if any.
    pub async fn leader(&self) -> Result<Option<KeyValue>> {
        let response = self
            .client
            .range(proto::RangeRequest {
                key: self.prefix.clone(),
                range_end: prefix_end(&self.prefix),
                ..Default::default()
            })
            .await?;
        Ok(response.kvs.into_iter().min_by_key(|kv| kv.create_revision))
    }
}
