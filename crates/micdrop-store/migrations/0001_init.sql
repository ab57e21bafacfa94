-- The conversation store, version 1. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Times are Unix milliseconds (BIGINT); JSON is stored as TEXT.

-- One row per call. A conversation is the set of calls sharing a conversation_id (the id of the
-- call that started it; calls that resume it carry the same conversation_id).
CREATE TABLE calls (
    id TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    duration_ms BIGINT,
    close_code BIGINT,
    close_reason TEXT,
    end_reason TEXT,
    user_ref TEXT,
    resumed BIGINT NOT NULL DEFAULT 0,
    provider_hosts TEXT NOT NULL DEFAULT '[]',
    params TEXT NOT NULL DEFAULT '{}',
    recording_path TEXT
);
CREATE INDEX calls_conversation ON calls (conversation_id);
CREATE INDEX calls_started ON calls (started_at, id);
CREATE INDEX calls_user_ref ON calls (user_ref, started_at);

-- Each conversation item, written when it is added to the conversation. `item` is the item's
-- JSON exactly as Micdrop sends it in `Message` frames.
CREATE TABLE items (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    conversation_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    role TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
);
CREATE INDEX items_conversation ON items (conversation_id);

-- Each answered turn's latencies by stage, in milliseconds (NULL: not measured for this turn).
CREATE TABLE turns (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    stt_ms DOUBLE PRECISION,
    llm_first_token_ms DOUBLE PRECISION,
    tts_first_audio_ms DOUBLE PRECISION,
    voice_to_voice_ms DOUBLE PRECISION,
    PRIMARY KEY (call_id, seq)
);
