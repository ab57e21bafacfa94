//! The database: one [`Store`] over SQLite or PostgreSQL, same queries, same results.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use micdrop_core::conversation::{ConversationItem, Role};
use serde_json::Value;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tracing::{debug, info};

use crate::model::{
    CallDetail, CallSummary, Erased, ExtractedData, ListQuery, NewCall, StoredItem, TurnRecord,
};
use crate::time::rfc3339;

/// The schema's migrations (portable SQL, the same for both backends).
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("../migrations/0001_init.sql"))];

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite://…` nor `postgres://…`.
    #[error("invalid store url (expected sqlite://PATH or postgres://USER@HOST:PORT/DB): {0}")]
    Url(String),
    /// A file or directory could not be created or removed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A query failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value is not what the schema says (a corrupted row).
    #[error("corrupted row: {0}")]
    Corrupted(String),
}

impl StoreError {
    /// Whether the error may come from another opener of the same SQLite database at the same
    /// moment: a migration that failed, or a database busy or locked.
    fn is_sqlite_race(&self) -> bool {
        match self {
            StoreError::Migrate(_) => true,
            StoreError::Db(sqlx::Error::Database(e)) => {
                // SQLITE_BUSY, SQLITE_LOCKED (and their extended codes).
                e.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, 5 | 6))
            }
            _ => false,
        }
    }
}

/// The database backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, embedded: one file (WAL mode).
    Sqlite,
    /// PostgreSQL: shared by several instances.
    Postgres,
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on either pool (each arm is type-checked with its own backend).
macro_rules! on_pool {
    ($store:expr, |$p:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// The conversation store: calls, items, turns' latencies, recording paths.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    sqlite_path: Option<PathBuf>,
    vacuum_full: bool,
}

/// Redacts the password of a URL for messages (`postgres://user:***@host/db`).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Opens (creating it if needed) the database at `url` and runs the migrations.
    /// `sqlite://PATH`: the file and its directory are created if missing; WAL mode,
    /// `secure_delete` on. `postgres://…`: the database must exist.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(format!("{url}: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // Erased rows are overwritten with zeros, not just unlinked (RGPD erasure).
                .pragma("secure_delete", "ON");
            let path = options.get_filename().to_owned();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                    context: format!("cannot create the store's directory {}", dir.display()),
                    source,
                })?;
            }
            // SQLite has no lock for openers: when two open a new database at once, the loser
            // fails (switching the journal to WAL, or on the tables the other one created)
            // and, retried, finds the work done.
            let mut attempt = 0;
            loop {
                match Self::open_sqlite(options.clone(), &path).await {
                    Ok(store) => break store,
                    Err(e) if attempt < 5 && e.is_sqlite_race() => {
                        debug!(error = %e, "SQLite open raced: retrying");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::Url(format!("{}: {e}", redact_url(url))))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            let store = Store {
                pool: Pool::Postgres(pool),
                sqlite_path: None,
                vacuum_full: false,
            };
            store.migrate().await?;
            store
        } else {
            return Err(StoreError::Url(redact_url(url)));
        };
        info!(backend = ?store.backend(), "store open");
        Ok(store)
    }

    /// Connects to the SQLite database at `path` and migrates it.
    async fn open_sqlite(options: SqliteConnectOptions, path: &Path) -> Result<Store, StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Store {
            pool: Pool::Sqlite(pool),
            sqlite_path: Some(path.to_owned()),
            vacuum_full: false,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    *version,
                    (*name).into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect();
        // Locking (PostgreSQL advisory lock): instances starting together migrate once. SQLite
        // has none: `open` retries a raced opening.
        let migrator = Migrator::with_migrations(migrations);
        on_pool!(self, |p| migrator.run(p).await)?;
        Ok(())
    }

    /// PostgreSQL: erasures end with `VACUUM FULL` (the tables are rewritten into new files,
    /// so the erased rows' bytes leave the data files; the tables are locked meanwhile)
    /// instead of `VACUUM`.
    pub fn with_vacuum_full(mut self, yes: bool) -> Self {
        self.vacuum_full = yes;
        self
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The SQLite file (None for PostgreSQL).
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite_path.as_deref()
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await);
    }

    /// Records the start of a call.
    pub async fn start_call(&self, call: &NewCall) -> Result<(), StoreError> {
        let hosts = serde_json::to_string(&call.provider_hosts).unwrap_or_else(|_| "[]".into());
        let params = serde_json::to_string(&call.params).unwrap_or_else(|_| "{}".into());
        on_pool!(self, |p| {
            sqlx::query(
            "INSERT INTO calls (id, conversation_id, started_at, user_ref, resumed, provider_hosts, params) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(&call.id)
        .bind(&call.conversation_id)
        .bind(call.started_at)
        .bind(&call.user_ref)
        .bind(i64::from(call.resumed))
        .bind(&hosts)
        .bind(&params)
        .execute(p)
        .await
        .map(drop)?
        });
        Ok(())
    }

    /// Records a conversation item (`seq`: its rank in the call, from 0).
    pub async fn add_item(
        &self,
        call_id: &str,
        conversation_id: &str,
        seq: i64,
        at: i64,
        item: &ConversationItem,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(item).map_err(|e| StoreError::Corrupted(e.to_string()))?;
        let role = role_name(item.role());
        on_pool!(self, |p| {
            sqlx::query(
            "INSERT INTO items (call_id, seq, conversation_id, at, role, item) VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(call_id)
        .bind(seq)
        .bind(conversation_id)
        .bind(at)
        .bind(role)
        .bind(&json)
        .execute(p)
        .await
        .map(drop)?
        });
        Ok(())
    }

    /// Removes the call's last user item (`CancelLastUserMessage`).
    pub async fn cancel_last_user(&self, call_id: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(
            "DELETE FROM items WHERE call_id = $1 AND seq = \
             (SELECT MAX(seq) FROM items WHERE call_id = $1 AND role = 'user')"
        )
        .bind(call_id)
        .execute(p)
        .await
        .map(drop)?);
        Ok(())
    }

    /// Records a turn's latencies.
    pub async fn add_turn(&self, call_id: &str, turn: &TurnRecord) -> Result<(), StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
            "INSERT INTO turns (call_id, seq, at, stt_ms, llm_first_token_ms, tts_first_audio_ms, voice_to_voice_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        )
        .bind(call_id)
        .bind(turn.seq)
        .bind(turn.at_ms)
        .bind(turn.stt_ms)
        .bind(turn.llm_first_token_ms)
        .bind(turn.tts_first_audio_ms)
        .bind(turn.voice_to_voice_ms)
        .execute(p)
        .await
        .map(drop)?
        });
        Ok(())
    }

    /// Records the path of the call's recording.
    pub async fn set_recording(&self, call_id: &str, path: &str) -> Result<(), StoreError> {
        on_pool!(self, |p| sqlx::query(
            "UPDATE calls SET recording_path = $2 WHERE id = $1"
        )
        .bind(call_id)
        .bind(path)
        .execute(p)
        .await
        .map(drop)?);
        Ok(())
    }

    /// Records the end of a call.
    pub async fn end_call(
        &self,
        call_id: &str,
        ended_at: i64,
        duration_ms: i64,
        close_code: Option<u16>,
        close_reason: Option<&str>,
        end_reason: &str,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p| {
            sqlx::query(
            "UPDATE calls SET ended_at = $2, duration_ms = $3, close_code = $4, close_reason = $5, end_reason = $6 \
             WHERE id = $1"
        )
        .bind(call_id)
        .bind(ended_at)
        .bind(duration_ms)
        .bind(close_code.map(i64::from))
        .bind(close_reason)
        .bind(end_reason)
        .execute(p)
        .await
        .map(drop)?
        });
        Ok(())
    }

    /// Whether a conversation exists (has at least one call).
    pub async fn conversation_exists(&self, conversation_id: &str) -> Result<bool, StoreError> {
        let n: i64 = on_pool!(self, |p| sqlx::query(
            "SELECT COUNT(*) FROM calls WHERE conversation_id = $1"
        )
        .bind(conversation_id)
        .fetch_one(p)
        .await?
        .try_get(0)?);
        Ok(n > 0)
    }

    /// The items of a conversation, in order (calls by start, items by rank).
    pub async fn conversation_items(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<StoredItem>, StoreError> {
        let rows: Vec<(String, i64, i64, String)> = on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT i.call_id, i.seq, i.at, i.item FROM items i JOIN calls c ON c.id = i.call_id \
                 WHERE i.conversation_id = $1 ORDER BY c.started_at, c.id, i.seq",
            )
            .bind(conversation_id)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        rows.into_iter()
            .map(|(call_id, seq, at, json)| {
                let item: ConversationItem = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupted(format!("item {call_id}/{seq}: {e}")))?;
                Ok(StoredItem {
                    call_id,
                    seq,
                    at: rfc3339(at),
                    item,
                })
            })
            .collect()
    }

    /// Calls, newest first.
    pub async fn list_calls(&self, query: &ListQuery) -> Result<Vec<CallSummary>, StoreError> {
        let limit = i64::try_from(query.limit.clamp(1, 1000)).unwrap_or(100);
        // The cursor: calls strictly older than the `before` call (by start, then id).
        let cursor: Option<(i64, String)> = match &query.before {
            Some(id) => match self.call_row(id).await? {
                Some(c) => Some((c.started_at_ms, c.id)),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let (before_at, before_id) = cursor.unwrap_or((i64::MAX, String::new()));
        let has_cursor = i64::from(query.before.is_some());
        let rows = on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT id, conversation_id, started_at, ended_at, duration_ms, close_code, close_reason, \
                 end_reason, user_ref, resumed, provider_hosts, params, recording_path FROM calls \
                 WHERE ($1 = 0 OR started_at < $2 OR (started_at = $2 AND id < $3)) \
                 AND ($4 = 0 OR user_ref = $5) \
                 ORDER BY started_at DESC, id DESC LIMIT $6",
            )
            .bind(has_cursor)
            .bind(before_at)
            .bind(&before_id)
            .bind(i64::from(query.user_ref.is_some()))
            .bind(query.user_ref.as_deref().unwrap_or(""))
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(call_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    async fn call_row(&self, id: &str) -> Result<Option<CallSummary>, StoreError> {
        Ok(on_pool!(self, |p| {
            let row = sqlx::query(
                "SELECT id, conversation_id, started_at, ended_at, duration_ms, close_code, close_reason, \
                 end_reason, user_ref, resumed, provider_hosts, params, recording_path FROM calls WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(p)
            .await?;
            row.as_ref().map(call_from_row).transpose()?
        }))
    }

    async fn conversation_calls(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<CallSummary>, StoreError> {
        Ok(on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT id, conversation_id, started_at, ended_at, duration_ms, close_code, close_reason, \
                 end_reason, user_ref, resumed, provider_hosts, params, recording_path FROM calls \
                 WHERE conversation_id = $1 ORDER BY started_at, id",
            )
            .bind(conversation_id)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(call_from_row)
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    async fn conversation_turns(
        &self,
        conversation_id: &str,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        Ok(on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT t.call_id, t.seq, t.at, t.stt_ms, t.llm_first_token_ms, t.tts_first_audio_ms, \
                 t.voice_to_voice_ms FROM turns t JOIN calls c ON c.id = t.call_id \
                 WHERE c.conversation_id = $1 ORDER BY c.started_at, c.id, t.seq",
            )
            .bind(conversation_id)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(TurnRecord {
                        call_id: r.try_get(0)?,
                        seq: r.try_get(1)?,
                        at_ms: r.try_get(2)?,
                        at: rfc3339(r.try_get(2)?),
                        stt_ms: r.try_get(3)?,
                        llm_first_token_ms: r.try_get(4)?,
                        tts_first_audio_ms: r.try_get(5)?,
                        voice_to_voice_ms: r.try_get(6)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        }))
    }

    /// One call with its whole conversation (every call of it, items, latencies, extracted data).
    pub async fn get_call(&self, id: &str) -> Result<Option<CallDetail>, StoreError> {
        let Some(call) = self.call_row(id).await? else {
            return Ok(None);
        };
        let conversation_id = call.conversation_id.clone();
        let calls = self.conversation_calls(&conversation_id).await?;
        let items = self.conversation_items(&conversation_id).await?;
        let turns = self.conversation_turns(&conversation_id).await?;
        let extracted = items
            .iter()
            .filter_map(|i| match &i.item {
                ConversationItem::Assistant {
                    metadata: Some(m), ..
                } => m.get("extracted").map(|data| ExtractedData {
                    call_id: i.call_id.clone(),
                    at: i.at.clone(),
                    data: data.clone(),
                }),
                _ => None,
            })
            .collect();
        Ok(Some(CallDetail {
            call,
            conversation_id,
            calls,
            items,
            turns,
            extracted,
        }))
    }

    /// The recording path of a call, if it has one.
    pub async fn recording_path(&self, id: &str) -> Result<Option<PathBuf>, StoreError> {
        Ok(self
            .call_row(id)
            .await?
            .and_then(|c| c.recording_path)
            .map(PathBuf::from))
    }

    /// The ids of the conversations of a data subject.
    async fn conversations_of_user(&self, user_ref: &str) -> Result<Vec<String>, StoreError> {
        Ok(on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT DISTINCT conversation_id FROM calls WHERE user_ref = $1 ORDER BY conversation_id",
            )
            .bind(user_ref)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?
        }))
    }

    /// Every conversation of a data subject, in full (RGPD access and portability).
    pub async fn export_user(&self, user_ref: &str) -> Result<Vec<CallDetail>, StoreError> {
        let mut out = Vec::new();
        for conversation in self.conversations_of_user(user_ref).await? {
            let calls = self.conversation_calls(&conversation).await?;
            if let Some(first) = calls.first() {
                if let Some(detail) = self.get_call(&first.id).await? {
                    out.push(detail);
                }
            }
        }
        Ok(out)
    }

    /// Erases the whole conversation a call belongs to. `None`: no such call.
    pub async fn erase_conversation_of(&self, call_id: &str) -> Result<Option<Erased>, StoreError> {
        let Some(call) = self.call_row(call_id).await? else {
            return Ok(None);
        };
        Ok(Some(
            self.erase_conversations(&[call.conversation_id]).await?,
        ))
    }

    /// Erases every conversation a data subject took part in.
    pub async fn erase_user(&self, user_ref: &str) -> Result<Erased, StoreError> {
        let conversations = self.conversations_of_user(user_ref).await?;
        self.erase_conversations(&conversations).await
    }

    /// Erases the conversations whose newest call started before `cutoff_ms` (retention).
    pub async fn erase_older_than(&self, cutoff_ms: i64) -> Result<Erased, StoreError> {
        let conversations: Vec<String> = on_pool!(self, |p| {
            let rows = sqlx::query(
                "SELECT conversation_id FROM calls GROUP BY conversation_id HAVING MAX(started_at) < $1",
            )
            .bind(cutoff_ms)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| r.try_get(0))
                .collect::<Result<Vec<String>, _>>()?
        });
        self.erase_conversations(&conversations).await
    }

    /// Erases conversations: their calls, items, turns, and recording files; then makes the
    /// deleted bytes unreadable in the database files (see [`Store::scrub`]).
    pub async fn erase_conversations(
        &self,
        conversations: &[String],
    ) -> Result<Erased, StoreError> {
        let mut erased = Erased::default();
        if conversations.is_empty() {
            return Ok(erased);
        }
        for conversation in conversations {
            let (calls, recordings) = on_pool!(self, |p| {
                let mut tx = p.begin().await?;
                let rows =
                    sqlx::query("SELECT id, recording_path FROM calls WHERE conversation_id = $1")
                        .bind(conversation)
                        .fetch_all(&mut *tx)
                        .await?;
                let mut calls = Vec::new();
                let mut recordings = Vec::new();
                for r in &rows {
                    calls.push(r.try_get::<String, _>(0)?);
                    if let Some(path) = r.try_get::<Option<String>, _>(1)? {
                        recordings.push(path);
                    }
                }
                sqlx::query(
                    "DELETE FROM turns WHERE call_id IN (SELECT id FROM calls WHERE conversation_id = $1)",
                )
                .bind(conversation)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM items WHERE conversation_id = $1")
                    .bind(conversation)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM calls WHERE conversation_id = $1")
                    .bind(conversation)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                (calls, recordings)
            });
            for path in recordings {
                match std::fs::remove_file(&path) {
                    Ok(()) => erased.recordings += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(StoreError::Io {
                            context: format!("cannot remove recording {path}"),
                            source,
                        });
                    }
                }
            }
            erased.conversations += 1;
            erased.calls.extend(calls);
        }
        self.scrub().await?;
        debug!(
            conversations = erased.conversations,
            calls = erased.calls.len(),
            "erased"
        );
        Ok(erased)
    }

    /// Makes deleted rows unreadable in the database files. SQLite: `secure_delete` already
    /// zeroed them in the database pages; the write-ahead log still holds old page images, so it
    /// is checkpointed and truncated. PostgreSQL: `VACUUM` the tables, so that dead rows are
    /// pruned and their space reused; `VACUUM FULL` with [`Store::with_vacuum_full`] (see
    /// docs/store.md for what each does and does not guarantee).
    pub async fn scrub(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                // A reader in the middle of a query can hold the log for a moment: retry.
                for attempt in 1..=20u64 {
                    let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                        .fetch_one(p)
                        .await?;
                    let busy: i64 = row.try_get(0)?;
                    if busy == 0 {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                }
                tracing::warn!(
                    "erasure: the WAL checkpoint stayed busy; the erased pages leave the log at the next checkpoint"
                );
            }
            Pool::Postgres(p) if self.vacuum_full => {
                sqlx::query("VACUUM FULL turns, items, calls")
                    .execute(p)
                    .await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("VACUUM turns, items, calls").execute(p).await?;
            }
        }
        Ok(())
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::ToolCall => "tool_call",
        Role::ToolResult => "tool_result",
    }
}

fn call_from_row<R>(r: &R) -> Result<CallSummary, sqlx::Error>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let started_at_ms: i64 = r.try_get("started_at")?;
    let ended_at_ms: Option<i64> = r.try_get("ended_at")?;
    let hosts: String = r.try_get("provider_hosts")?;
    let params: String = r.try_get("params")?;
    let resumed: i64 = r.try_get("resumed")?;
    Ok(CallSummary {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        started_at: rfc3339(started_at_ms),
        started_at_ms,
        ended_at: ended_at_ms.map(rfc3339),
        duration_ms: r.try_get("duration_ms")?,
        close_code: r.try_get("close_code")?,
        close_reason: r.try_get("close_reason")?,
        end_reason: r.try_get("end_reason")?,
        user_ref: r.try_get("user_ref")?,
        resumed: resumed != 0,
        provider_hosts: serde_json::from_str(&hosts).unwrap_or_default(),
        params: serde_json::from_str(&params).unwrap_or(Value::Null),
        recording_path: r.try_get("recording_path")?,
        has_recording: false,
    }
    .with_recording_flag())
}
