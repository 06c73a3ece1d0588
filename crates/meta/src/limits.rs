//! Every limit of the coordination store, with what it costs. Limits that the state machine
//! checks are constants, so every replica decides alike.

/// Largest key. Cost: keys live in memory in the index, once per retained version.
pub const KEY_BYTES_MAX: usize = 4 * 1024;
/// Largest value. Cost: every version of a value is kept in memory until compaction.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Largest request (a put or a whole transaction) accepted by the server. Cost: one request
/// in memory on every member and in the Raft log.
pub const REQUEST_BYTES_MAX: usize = 3 * 1024 * 1024 / 2;
/// Compares plus operations in one transaction (etcd's default).
pub const TXN_OPS_MAX: usize = 128;
/// Bytes of keys and values in one range response; past it the response says `more` and
/// the client continues from the last key. Cost: one response in memory per reader.
pub const RANGE_RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Keys counted past the page's end to fill `count`; beyond it `count` is a lower bound.
pub const RANGE_COUNT_SCAN_MAX: i64 = 100_000;
/// Smallest and largest lease TTL. Below 2 s a lease could expire during one election.
pub const LEASE_TTL_SECONDS_MIN: i64 = 2;
pub const LEASE_TTL_SECONDS_MAX: i64 = 365 * 24 * 3600;
/// Leases alive at once. Cost: the leader tracks a deadline for each and checkpoints them.
pub const LEASES_MAX: usize = 100_000;
/// Keys listed by `lease timetolive --keys`.
pub const LEASE_KEYS_LISTED_MAX: usize = 1000;
/// Client sessions remembered for exactly-once writes. Cost: the unacknowledged replies of
/// each (usually one small reply).
pub const SESSIONS_MAX: usize = 10_000;
/// Unacknowledged replies remembered per session (writes in flight at once per client).
pub const SESSION_REPLIES_MAX: usize = 1024;
/// Requests of one `Pipeline` stream a server works on at once; it reads no more of that
/// stream's requests until one is answered. Cost: this many requests and answers (a range
/// answer is at most [`RANGE_RESPONSE_BYTES_MAX`]) per pipeline.
pub const PIPELINE_IN_FLIGHT_MAX: usize = 128;
/// Bytes of one answer a server sends: a range page at [`RANGE_RESPONSE_BYTES_MAX`] with its
/// envelope. A larger answer (a transaction of many reads) fails with TOO_LARGE.
pub const RESPONSE_MESSAGE_BYTES_MAX: usize = RANGE_RESPONSE_BYTES_MAX + 1024 * 1024;
/// Bytes of one request message a server decodes: a request at [`REQUEST_BYTES_MAX`] with
/// its envelope. A larger message fails the call, or breaks the pipeline, that carries it.
pub const REQUEST_MESSAGE_BYTES_MAX: usize = REQUEST_BYTES_MAX + 64 * 1024;
/// Watch streams open at once from one client connection; past it: TOO_MANY_REQUESTS.
pub const WATCHES_PER_CONNECTION_MAX: usize = 1024;
/// Watch streams open at once on one server.
pub const WATCHES_MAX: usize = 65_536;
/// Bytes of events in one watch response (whole revisions: one revision may exceed it).
pub const WATCH_RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Responses buffered per watch stream. A watcher that leaves the buffer full for
/// [`WATCH_SEND_STALL_MAX`] is cut off with an error naming the revision to resume from.
/// Cost: at most this many responses in memory per watcher.
pub const WATCH_BUFFER_RESPONSES_MAX: usize = 16;
pub const WATCH_SEND_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// Default size quota of the store's data (every retained version). Past it, writes that add
/// data fail with NO_SPACE until compaction or deletes free space; deletes always work.
pub const QUOTA_BYTES_DEFAULT: i64 = 2 * 1024 * 1024 * 1024;
/// Leases the leader expires per second at most, so a storm of expiries after an outage
/// does not flood the log (etcd: 1000/s).
pub const LEASE_EXPIRIES_PER_SECOND_MAX: usize = 1000;
/// Leases in one checkpoint command.
pub const LEASE_CHECKPOINTS_PER_COMMAND_MAX: usize = 1000;
