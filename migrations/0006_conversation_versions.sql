-- Several talkmeter instances may follow one PBX (the standby set-up): each records its own
-- measurement (a *version*) of every conversation under the same conversation_id, and the ledger
-- keeps the best one (accounting/versions.py has the rules). The conversation row holds the kept
-- version's facts and the instance that measured it; a version that is not kept (or no longer)
-- is stored beside it, once, for audit. A superseded version's rating is undone by adjustment
-- rows, never by editing the ledger.

-- Which instance measured the version kept (NULL: recorded before instances were named).
ALTER TABLE talkmeter.conversations ADD COLUMN instance text;

CREATE TABLE talkmeter.conversation_versions (
    conversation_id text NOT NULL REFERENCES talkmeter.conversations,
    -- accounting.versions.fingerprint: the same version sent twice (a spool re-submitted after a
    -- crash) is stored once.
    fingerprint text NOT NULL,
    instance text,
    -- superseded: it was kept until an exact version replaced it; disagreed: an exact version
    -- that differs from the exact one kept; not_better: an estimated version that arrived when
    -- another was kept.
    outcome text NOT NULL CHECK (outcome IN ('superseded', 'disagreed', 'not_better')),
    -- The version it was compared with: the kept one's instance, and what differed beyond 1 ms
    -- ({"talk_ms": [this version's, the kept one's], ...}).
    compared_with text,
    differences jsonb NOT NULL,
    estimated boolean NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz NOT NULL,
    talk_ms bigint NOT NULL,
    hold_ms bigint NOT NULL,
    -- The version whole, as the call tracker's record (the README's conversation record + instance).
    record jsonb NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (conversation_id, fingerprint)
);
CREATE INDEX conversation_versions_disagreed ON talkmeter.conversation_versions (set_aside_at)
    WHERE outcome = 'disagreed';

-- For people: conversations where two instances both measured the whole conversation and got
-- different results (beyond 1 ms). The kept (first) version is the one rated.
CREATE VIEW talkmeter.instance_disagreements AS
SELECT v.conversation_id,
       c.pbx,
       c.client_id,
       c.client_number,
       c.started_at,
       c.instance AS kept_instance,
       (c.talk_ms / 1000.0)::numeric(14, 3) AS kept_talk_seconds,
       (c.hold_ms / 1000.0)::numeric(14, 3) AS kept_hold_seconds,
       v.instance AS other_instance,
       (v.talk_ms / 1000.0)::numeric(14, 3) AS other_talk_seconds,
       (v.hold_ms / 1000.0)::numeric(14, 3) AS other_hold_seconds,
       ((v.talk_ms - c.talk_ms) / 1000.0)::numeric(14, 3) AS talk_difference_seconds,
       v.differences,
       v.set_aside_at AS noticed_at
  FROM talkmeter.conversation_versions v
  JOIN talkmeter.conversations c USING (conversation_id)
 WHERE v.outcome = 'disagreed';

-- The daemon replaces a kept estimated version by an exact one: the conversation's facts and its
-- segments (the old ones are in conversation_versions first), and stores versions not kept.
GRANT SELECT, INSERT ON talkmeter.conversation_versions TO talkmeter_writer;
GRANT UPDATE (direction, client_number, client_number_raw, line, consultants, started_at, answered_at,
              ended_at, wait_ms, talk_ms, hold_ms, estimated, instance)
    ON talkmeter.conversations TO talkmeter_writer;
GRANT DELETE ON talkmeter.conversation_segments TO talkmeter_writer;
GRANT SELECT ON talkmeter.instance_disagreements TO talkmeter_writer, talkmeter_accountant;
