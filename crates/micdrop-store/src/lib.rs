//! # micdrop-store
//!
//! Conversations that last: every call, each conversation item as it happens, per-turn
//! latencies, extracted data and (opt-in) stereo recordings, in SQLite (embedded, one file) or
//! PostgreSQL (shared by several instances), with the same schema and the same queries.
//!
//! - [`Store`]: the database (migrations run at open), queries for the admin API, erasure.
//! - [`CallStore`]: what the server uses: [`CallStore::begin_call`] resolves the params'
//!   `conversation_id` (resume) and returns a [`CallSession`] whose observer receives the
//!   call's events; writes go through a bounded queue to one writer task, so a call never waits
//!   for the database (a full queue or a failed write is logged and counted, the call goes on).
//! - [`StereoRecorder`]: user left, assistant right, 16 kHz, streamed to disk.
//! - [`Webhook`]: the end-of-call POST, signed with HMAC-SHA256, retried with backoff.
//! - [`testing::TempPostgres`]: a throwaway PostgreSQL cluster for tests.
//!
//! See docs/store.md for the schema, the admin API and the RGPD notes.

pub mod db;
pub mod model;
pub mod recording;
pub mod session;
pub mod testing;
pub mod time;
pub mod webhook;

pub use db::{Backend, Store, StoreError, redact_url};
pub use model::{
    CallDetail, CallSummary, Erased, ExtractedData, ListQuery, NewCall, StoredItem, TurnRecord,
};
pub use recording::StereoRecorder;
pub use session::{CallBegin, CallSession, CallStore, StartError, StoreConfig, redact_params};
pub use webhook::{SIGNATURE_HEADER, Webhook, WebhookError, sign};
