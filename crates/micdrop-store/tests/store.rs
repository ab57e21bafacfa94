//! The store's suite, run on both backends: SQLite (a file in a temp dir) and PostgreSQL (a
//! real throwaway cluster, started by `micdrop_store::testing`).

use std::sync::Arc;
use std::time::Duration;

use micdrop_core::call::{CallEnd, CallEvent, EndReason};
use micdrop_core::conversation::ConversationItem;
use micdrop_store::testing::TempPostgres;
use micdrop_store::{CallStore, ListQuery, NewCall, Store, StoreConfig, TurnRecord};
use serde_json::json;

/// A database of the backend: (url, the temp dir that holds a SQLite file).
async fn database(backend: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        "sqlite" => format!("sqlite://{}/sub/dir/calls.db", dir.path().display()),
        _ => TempPostgres::shared()
            .expect("PostgreSQL for the tests")
            .fresh_database()
            .await
            .unwrap(),
    };
    (url, dir)
}

/// Runs each scenario on both backends.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("sqlite").await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name("postgres").await;
            })*
        }
    };
}

both_backends!(
    items_turns_and_a_resumed_conversation,
    list_newest_first_with_cursor_and_user_ref,
    erasure_of_a_whole_conversation,
    erasure_of_a_data_subject_and_export,
    retention_erases_old_conversations_only,
    sessions_resume_refuse_unknown_and_create_on_unknown,
    migrations_are_idempotent,
);

fn call(id: &str, conversation: &str, at: i64, user_ref: Option<&str>) -> NewCall {
    NewCall {
        id: id.into(),
        conversation_id: conversation.into(),
        started_at: at,
        user_ref: user_ref.map(str::to_owned),
        resumed: id != conversation,
        provider_hosts: vec!["api.mistral.ai".into()],
        params: json!({"lang": "fr"}),
    }
}

async fn items_turns_and_a_resumed_conversation(backend: &str) {
    let (url, _dir) = database(backend).await;
    let store = Store::open(&url).await.unwrap();
    store
        .start_call(&call("c1", "c1", 1_000, Some("u1")))
        .await
        .unwrap();
    store
        .add_item(
            "c1",
            "c1",
            0,
            1_001,
            &ConversationItem::assistant("Bonjour"),
        )
        .await
        .unwrap();
    store
        .add_item("c1", "c1", 1, 1_002, &ConversationItem::user("Je voudrais"))
        .await
        .unwrap();
    store
        .add_item(
            "c1",
            "c1",
            2,
            1_003,
            &ConversationItem::user("un rendez-vous"),
        )
        .await
        .unwrap();
    // CancelLastUserMessage removes the last user item only.
    store.cancel_last_user("c1").await.unwrap();
    let mut meta = serde_json::Map::new();
    meta.insert("extracted".into(), json!({"date": "2026-12-03"}));
    store
        .add_item(
            "c1",
            "c1",
            3,
            1_004,
            &ConversationItem::Assistant {
                content: "C'est noté.".into(),
                metadata: Some(meta),
            },
        )
        .await
        .unwrap();
    store
        .add_turn(
            "c1",
            &TurnRecord {
                seq: 0,
                at_ms: 1_004,
                stt_ms: Some(120.5),
                llm_first_token_ms: Some(300.0),
                tts_first_audio_ms: None,
                voice_to_voice_ms: Some(700.25),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .end_call("c1", 5_000, 4_000, Some(1000), Some("Idle timeout"), "idle")
        .await
        .unwrap();
    // A second call resumes the conversation.
    store
        .start_call(&call("c2", "c1", 9_000, Some("u1")))
        .await
        .unwrap();
    store
        .add_item("c2", "c1", 0, 9_001, &ConversationItem::user("Merci"))
        .await
        .unwrap();
    let tool = ConversationItem::ToolCall {
        tool_call_id: "t1".into(),
        tool_name: "book".into(),
        parameters: "{\"a\":1}".into(),
    };
    store.add_item("c2", "c1", 1, 9_002, &tool).await.unwrap();

    let items: Vec<ConversationItem> = store
        .conversation_items("c1")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.item)
        .collect();
    assert_eq!(items.len(), 5, "{items:?}");
    assert_eq!(items[0], ConversationItem::assistant("Bonjour"));
    assert_eq!(items[1], ConversationItem::user("Je voudrais"));
    assert_eq!(items[2].content(), Some("C'est noté."));
    assert_eq!(items[3], ConversationItem::user("Merci"));
    assert_eq!(items[4], tool);

    // Either call shows the whole conversation.
    for id in ["c1", "c2"] {
        let d = store.get_call(id).await.unwrap().unwrap();
        assert_eq!(d.call.id, id);
        assert_eq!(d.conversation_id, "c1");
        assert_eq!(d.calls.len(), 2);
        assert_eq!(d.items.len(), 5);
        assert_eq!(d.turns.len(), 1);
        assert_eq!(d.turns[0].voice_to_voice_ms, Some(700.25));
        assert_eq!(d.turns[0].tts_first_audio_ms, None);
        assert_eq!(d.extracted.len(), 1);
        assert_eq!(d.extracted[0].data, json!({"date": "2026-12-03"}));
    }
    let d = store.get_call("c1").await.unwrap().unwrap();
    assert_eq!(d.call.close_code, Some(1000));
    assert_eq!(d.call.duration_ms, Some(4_000));
    assert_eq!(d.call.started_at, "1970-01-01T00:00:01.000Z");
    assert_eq!(d.call.params, json!({"lang": "fr"}));
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["id"], "c1");
    assert_eq!(v["calls"][1]["id"], "c2");
    assert_eq!(v["calls"][1]["resumed"], true);
    assert_eq!(v["items"][0]["item"]["role"], "assistant");
    assert!(store.get_call("nope").await.unwrap().is_none());
    store.close().await;
}

async fn list_newest_first_with_cursor_and_user_ref(backend: &str) {
    let (url, _dir) = database(backend).await;
    let store = Store::open(&url).await.unwrap();
    for i in 0..7i64 {
        let user = if i % 2 == 0 { "even" } else { "odd" };
        let id = format!("call{i}");
        store
            .start_call(&call(&id, &id, 1_000 + i * 10, Some(user)))
            .await
            .unwrap();
    }
    // Same start time: the id breaks the tie, consistently.
    store
        .start_call(&call("callX", "callX", 1_060, None))
        .await
        .unwrap();
    let ids = |v: Vec<micdrop_store::CallSummary>| -> Vec<String> {
        v.into_iter().map(|c| c.id).collect()
    };
    let page1 = ids(store
        .list_calls(&ListQuery {
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap());
    assert_eq!(page1, ["callX", "call6", "call5"]);
    let page2 = ids(store
        .list_calls(&ListQuery {
            limit: 3,
            before: Some("call5".into()),
            ..Default::default()
        })
        .await
        .unwrap());
    assert_eq!(page2, ["call4", "call3", "call2"]);
    let page3 = ids(store
        .list_calls(&ListQuery {
            limit: 3,
            before: Some("call2".into()),
            ..Default::default()
        })
        .await
        .unwrap());
    assert_eq!(page3, ["call1", "call0"]);
    let odd = ids(store
        .list_calls(&ListQuery {
            limit: 10,
            user_ref: Some("odd".into()),
            ..Default::default()
        })
        .await
        .unwrap());
    assert_eq!(odd, ["call5", "call3", "call1"]);
    let unknown_cursor = store
        .list_calls(&ListQuery {
            limit: 10,
            before: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(unknown_cursor.is_empty());
    store.close().await;
}

/// Whether `needle` occurs in any file under `dir`.
fn bytes_found(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

async fn erasure_of_a_whole_conversation(backend: &str) {
    let (url, dir) = database(backend).await;
    // PostgreSQL: with VACUUM FULL (plain VACUUM may leave the bytes in free space).
    let store = Store::open(&url).await.unwrap().with_vacuum_full(true);
    let secret = format!("confidential-{}", uuid::Uuid::new_v4().simple());
    let kept = format!("keep-me-{}", uuid::Uuid::new_v4().simple());
    let recording = dir.path().join("c1.wav");
    std::fs::write(&recording, b"RIFF").unwrap();
    store
        .start_call(&call("c1", "c1", 1_000, None))
        .await
        .unwrap();
    store
        .set_recording("c1", &recording.display().to_string())
        .await
        .unwrap();
    for i in 0..50 {
        store
            .add_item(
                "c1",
                "c1",
                i,
                1_001,
                &ConversationItem::user(format!("{secret} {i}")),
            )
            .await
            .unwrap();
    }
    store
        .start_call(&call("c2", "c1", 2_000, None))
        .await
        .unwrap();
    store
        .add_item("c2", "c1", 0, 2_001, &ConversationItem::user(&secret))
        .await
        .unwrap();
    store
        .add_turn(
            "c2",
            &TurnRecord {
                seq: 0,
                at_ms: 2_002,
                stt_ms: Some(1.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .start_call(&call("other", "other", 3_000, None))
        .await
        .unwrap();
    store
        .add_item("other", "other", 0, 3_001, &ConversationItem::user(&kept))
        .await
        .unwrap();
    if backend == "sqlite" {
        // Sanity: the text is in the files before erasure.
        assert!(!bytes_found(dir.path(), secret.as_bytes()).is_empty());
    } else {
        // Sanity: once checkpointed, the text is in the tables' files.
        checkpoint(&url).await;
        let base = TempPostgres::shared()
            .unwrap()
            .dir()
            .join("data")
            .join("base");
        assert!(!bytes_found(&base, secret.as_bytes()).is_empty());
    }

    // Erasing through the second call erases the whole conversation.
    let erased = store.erase_conversation_of("c2").await.unwrap().unwrap();
    assert_eq!(erased.conversations, 1);
    let mut calls = erased.calls.clone();
    calls.sort();
    assert_eq!(calls, ["c1", "c2"]);
    assert_eq!(erased.recordings, 1);
    assert!(!recording.exists());
    assert!(store.get_call("c1").await.unwrap().is_none());
    assert!(store.get_call("c2").await.unwrap().is_none());
    assert!(store.conversation_items("c1").await.unwrap().is_empty());
    assert!(store.erase_conversation_of("c1").await.unwrap().is_none());
    // The other conversation is untouched.
    assert_eq!(store.conversation_items("other").await.unwrap().len(), 1);

    if backend == "sqlite" {
        // Nothing readable is left in the database, its WAL or anything next to it.
        let found = bytes_found(dir.path(), secret.as_bytes());
        assert!(found.is_empty(), "erased text still in {found:?}");
        assert!(!bytes_found(dir.path(), kept.as_bytes()).is_empty());
    } else {
        // PostgreSQL: VACUUM FULL rewrote the tables without the erased rows (checked after a
        // checkpoint). The write-ahead log (pg_wal) still holds them until it is recycled: see
        // docs/store.md.
        checkpoint(&url).await;
        let cluster = TempPostgres::shared().unwrap();
        let base = cluster.dir().join("data").join("base");
        let found = bytes_found(&base, secret.as_bytes());
        if !found.is_empty() {
            // Name the relations, for the failure message.
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut names = Vec::new();
            for f in &found {
                let node: i64 = f.rsplit('/').next().unwrap().parse().unwrap_or(0);
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT relname::text FROM pg_class WHERE pg_relation_filenode(oid) = $1",
                )
                .bind(node)
                .fetch_optional(&mut conn)
                .await
                .unwrap();
                names.push(row.map_or("(no relation)".to_owned(), |r| r.0));
            }
            panic!("erased text still in {found:?}: {names:?}");
        }
    }
    store.close().await;
}

/// Writes PostgreSQL's dirty pages to the data files.
async fn checkpoint(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn erasure_of_a_data_subject_and_export(backend: &str) {
    let (url, _dir) = database(backend).await;
    let store = Store::open(&url).await.unwrap();
    store
        .start_call(&call("a1", "a1", 1_000, Some("alice")))
        .await
        .unwrap();
    store
        .start_call(&call("a2", "a1", 2_000, Some("alice")))
        .await
        .unwrap();
    store
        .start_call(&call("a3", "a3", 3_000, Some("alice")))
        .await
        .unwrap();
    store
        .start_call(&call("b1", "b1", 4_000, Some("bob")))
        .await
        .unwrap();
    store
        .add_item("a2", "a1", 0, 2_001, &ConversationItem::user("hello"))
        .await
        .unwrap();
    let export = store.export_user("alice").await.unwrap();
    assert_eq!(export.len(), 2);
    assert_eq!(export.iter().map(|d| d.calls.len()).sum::<usize>(), 3);
    assert!(export.iter().any(|d| d.items.len() == 1));
    let erased = store.erase_user("alice").await.unwrap();
    assert_eq!(erased.conversations, 2);
    assert_eq!(erased.calls.len(), 3);
    assert!(store.export_user("alice").await.unwrap().is_empty());
    assert!(store.get_call("b1").await.unwrap().is_some());
    let erased = store.erase_user("nobody").await.unwrap();
    assert_eq!(erased.conversations, 0);
    store.close().await;
}

async fn retention_erases_old_conversations_only(backend: &str) {
    let (url, _dir) = database(backend).await;
    let now = micdrop_store::time::now_ms();
    let day = 86_400_000;
    let store = Store::open(&url).await.unwrap();
    store
        .start_call(&call("old", "old", now - 40 * day, None))
        .await
        .unwrap();
    // A conversation started long ago but resumed recently is kept whole.
    store
        .start_call(&call("long", "long", now - 40 * day, None))
        .await
        .unwrap();
    store
        .start_call(&call("long2", "long", now - day, None))
        .await
        .unwrap();
    store
        .start_call(&call("new", "new", now - day, None))
        .await
        .unwrap();
    store.close().await;

    let config = StoreConfig {
        url: url.clone(),
        retention_days: 30,
        retention_interval_secs: 1,
        ..Default::default()
    };
    // The periodic job runs at start, then every second.
    let cs = CallStore::start(config).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if cs.store().get_call("old").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the retention job did not erase the old conversation");
    for id in ["long", "long2", "new"] {
        assert!(cs.store().get_call(id).await.unwrap().is_some(), "{id}");
    }
    assert_eq!(cs.run_retention().await.unwrap(), 0);
    cs.shutdown(Duration::from_secs(2)).await;
}

fn end() -> CallEnd {
    CallEnd {
        call_id: "test".into(),
        close: None,
        conversation: Vec::new(),
        duration_secs: 1,
        reason: EndReason::ClientClosed,
    }
}

/// Waits until `f` holds (the writes are asynchronous).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

async fn sessions_resume_refuse_unknown_and_create_on_unknown(backend: &str) {
    let (url, _dir) = database(backend).await;
    let cs = CallStore::start(StoreConfig {
        url: url.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A new conversation: its id is the call's.
    let params =
        json!({"authorization": "Bearer s3cret", "user_ref": "u9", "api_key": "k", "lang": "fr"});
    let mut begin = cs
        .begin_call("call-1", Some(&params), vec!["127.0.0.1:1".into()])
        .await
        .unwrap();
    assert_eq!(begin.conversation_id, "call-1");
    assert!(!begin.resumed);
    assert!(begin.history.is_empty());
    let obs = begin.session.observer();
    obs.send(CallEvent::Message(ConversationItem::assistant("Bonjour")))
        .await
        .unwrap();
    obs.send(CallEvent::Message(ConversationItem::user("Oui")))
        .await
        .unwrap();
    obs.send(CallEvent::Message(ConversationItem::user("Non")))
        .await
        .unwrap();
    obs.send(CallEvent::CancelLastUserMessage).await.unwrap();
    obs.send(CallEvent::Message(ConversationItem::assistant("Bien.")))
        .await
        .unwrap();
    // Written as the call goes, before its end.
    let store = cs.store().clone();
    eventually("items written during the call", || {
        let store = store.clone();
        async move { store.conversation_items("call-1").await.unwrap().len() == 3 }
    })
    .await;
    drop(obs);
    begin.session.finish(&end()).await;
    eventually("the end written", || {
        let store = store.clone();
        async move {
            store
                .get_call("call-1")
                .await
                .unwrap()
                .is_some_and(|d| d.call.end_reason.as_deref() == Some("client_closed"))
        }
    })
    .await;
    let d = store.get_call("call-1").await.unwrap().unwrap();
    assert_eq!(d.call.user_ref.as_deref(), Some("u9"));
    // Secrets never stored.
    assert_eq!(d.call.params, json!({"user_ref": "u9", "lang": "fr"}));
    assert_eq!(d.call.provider_hosts, ["127.0.0.1:1"]);

    // Resume: the history, and the new call in the same conversation.
    let mut begin = cs
        .begin_call(
            "call-2",
            Some(&json!({"conversation_id": "call-1"})),
            vec![],
        )
        .await
        .unwrap();
    assert!(begin.resumed);
    assert_eq!(begin.conversation_id, "call-1");
    assert_eq!(
        begin.history,
        [
            ConversationItem::assistant("Bonjour"),
            ConversationItem::user("Oui"),
            ConversationItem::assistant("Bien.")
        ]
    );
    let obs = begin.session.observer();
    obs.send(CallEvent::Message(ConversationItem::user("Encore")))
        .await
        .unwrap();
    drop(obs);
    begin.session.finish(&end()).await;
    eventually("the resumed call's item", || {
        let store = store.clone();
        async move { store.conversation_items("call-1").await.unwrap().len() == 4 }
    })
    .await;

    // Unknown: 4404; a non-string id: 4400.
    let e = cs
        .begin_call("call-3", Some(&json!({"conversation_id": "nope"})), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code, 4404);
    let e = cs
        .begin_call("call-3", Some(&json!({"conversation_id": 12})), vec![])
        .await
        .unwrap_err();
    assert_eq!(e.code, 4400);
    cs.shutdown(Duration::from_secs(2)).await;

    // create_on_unknown: the given id starts a conversation.
    let cs = CallStore::start(StoreConfig {
        url,
        create_on_unknown: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let begin = cs
        .begin_call(
            "call-4",
            Some(&json!({"conversation_id": "app-chosen-7"})),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(begin.conversation_id, "app-chosen-7");
    assert!(!begin.resumed);
    begin.session.finish(&end()).await;
    let store = cs.store().clone();
    eventually("created on unknown", || {
        let store = store.clone();
        async move { store.conversation_exists("app-chosen-7").await.unwrap() }
    })
    .await;
    cs.shutdown(Duration::from_secs(2)).await;
}

async fn migrations_are_idempotent(backend: &str) {
    let (url, _dir) = database(backend).await;
    // Two instances opening the same database at once migrate once.
    let (a, b) = tokio::join!(Store::open(&url), Store::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.start_call(&call("x", "x", 1, None)).await.unwrap();
    assert!(b.get_call("x").await.unwrap().is_some());
    a.close().await;
    b.close().await;
    let c = Store::open(&url).await.unwrap();
    assert!(c.get_call("x").await.unwrap().is_some());
    c.close().await;
}

#[tokio::test]
async fn bad_urls_are_clear_and_never_show_a_password() {
    let e = Store::open("mysql://u:hunter2@h/db").await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("sqlite://") && !msg.contains("hunter2"),
        "{msg}"
    );
    let e = CallStore::start(StoreConfig {
        url: "postgres://u:hunter2@127.0.0.1:1/db".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    let msg = e.to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("u:***@127.0.0.1:1"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_down_never_blocks_a_call() {
    let cluster = TempPostgres::shared().unwrap();
    let url = cluster.fresh_database().await.unwrap();
    let cs = CallStore::start(StoreConfig {
        url: url.clone(),
        queue_capacity: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    // The database disappears.
    let db = url.rsplit('/').next().unwrap().to_owned();
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&cluster.admin_url())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // New calls still start (nothing to look up), their events never wait: far more events
    // than the queue holds go through at once.
    let mut begin = cs.begin_call("down-1", None, vec![]).await.unwrap();
    let obs = begin.session.observer();
    for i in 0..200 {
        obs.try_send(CallEvent::Message(ConversationItem::user(format!("m{i}"))))
            .or_else(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => Ok(()),
                e => Err(e),
            })
            .unwrap();
        tokio::task::yield_now().await;
    }
    drop(obs);
    begin.session.finish(&end()).await;
    // A resume cannot be served without the store: a clear error, not a fresh conversation.
    let e = cs
        .begin_call(
            "down-2",
            Some(&json!({"conversation_id": "down-1"})),
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, 1011);
    cs.shutdown(Duration::from_millis(100)).await;
}

/// The webhook: signed body, retried after a 503 with backoff, given up after a 400.
#[tokio::test]
async fn webhook_is_signed_and_retried() {
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::Mutex;
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let seen: Seen = Arc::default();
    let statuses = Arc::new(Mutex::new(vec![
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::OK,
        StatusCode::BAD_REQUEST,
    ]));
    let s = seen.clone();
    let st = statuses.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            let st = st.clone();
            async move {
                let sig = headers
                    .get(micdrop_store::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                s.lock().unwrap().push((sig, body.to_vec()));
                st.lock().unwrap().remove(0)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hook = micdrop_store::Webhook::new(&format!("http://{addr}/hook"), b"s3cr3t".to_vec(), 3)
        .unwrap()
        .first_backoff(Duration::from_millis(50));
    let body = json!({"event": "call.ended", "call": {"id": "c1"}});
    // 503 then 200: delivered on the second attempt, same signed body both times.
    assert!(hook.send(body.clone()).await.unwrap());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0], seen[1]);
        let (sig, bytes) = &seen[0];
        assert_eq!(sig, &micdrop_store::sign(b"s3cr3t", bytes));
        assert_ne!(sig, &micdrop_store::sign(b"other", bytes));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(bytes).unwrap(),
            body
        );
    }
    // A 400 is not retried.
    assert!(!hook.deliver(body).await);
    assert_eq!(seen.lock().unwrap().len(), 3);
    // Nothing listening: retried, then given up, never a panic.
    let dead = micdrop_store::Webhook::new("http://127.0.0.1:9/hook", b"k".to_vec(), 2)
        .unwrap()
        .first_backoff(Duration::from_millis(10));
    assert!(!dead.deliver(json!({})).await);
    // No secret, no webhook.
    let e =
        micdrop_store::Webhook::from_env("http://127.0.0.1:9/", "MICDROP_TEST_UNSET_SECRET_VAR", 1)
            .unwrap_err();
    assert!(e.to_string().contains("MICDROP_TEST_UNSET_SECRET_VAR"));
}

/// Counts the `metrics` counters incremented while it is the local recorder.
#[derive(Default)]
struct Counters(
    std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicU64>>>,
);

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let c = self
            .0
            .lock()
            .unwrap()
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        metrics::Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// Lost writes are counted: a full queue (dropped) and a failing database (errors); the call's
/// events never wait for either.
#[test]
fn lost_writes_are_counted() {
    let counters = Counters::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&counters, || {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/c.db", dir.path().display());
            let cs = CallStore::start(StoreConfig {
                url: url.clone(),
                queue_capacity: 2,
                ..Default::default()
            })
            .await
            .unwrap();
            let mut begin = cs.begin_call("lossy", None, vec![]).await.unwrap();
            let obs = begin.session.observer();
            // 100 items at once: the queue holds 2.
            for i in 0..100 {
                obs.try_send(CallEvent::Message(ConversationItem::user(format!("m{i}"))))
                    .unwrap();
            }
            tokio::task::yield_now().await;
            assert!(cs.flush(Duration::from_secs(10)).await);
            // The database now refuses items.
            sqlx::raw_sql("DROP TABLE items; DROP TABLE turns;")
                .execute(&sqlite_pool(&url).await)
                .await
                .unwrap();
            obs.try_send(CallEvent::Message(ConversationItem::user("late")))
                .unwrap();
            drop(obs);
            begin.session.finish(&end()).await;
            assert!(cs.flush(Duration::from_secs(10)).await);
            cs.shutdown(Duration::from_secs(1)).await;
        })
    });
    assert!(
        counters.get("micdrop_store_writes_dropped_total") >= 90,
        "dropped"
    );
    assert!(
        counters.get("micdrop_store_write_errors_total") >= 1,
        "errors"
    );
}

async fn sqlite_pool(url: &str) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(url).await.unwrap()
}

/// Servers that open the same new SQLite database at the same moment (a restart's overlap, a
/// scaled deployment on one volume) all get it: the openers that lose the race (on the switch
/// to WAL, or on the tables another one created) are retried, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_openers_racing_on_a_new_database_all_open_it() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/race.db", dir.path().display());
        let openers: Vec<_> = (0..6)
            .map(|_| {
                tokio::spawn({
                    let url = url.clone();
                    async move { Store::open(&url).await }
                })
            })
            .collect();
        for opener in openers {
            let store = opener.await.unwrap();
            assert!(store.is_ok(), "round {round}: {:?}", store.err());
        }
    }
}
