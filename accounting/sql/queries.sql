-- Every query accounting runs, each under a `-- name: …` header (see accounting/queries.py).
-- Parameters are positional ($1, …) as asyncpg wants them.

-- ===== migrations =====

-- name: bootstrap_migrations
-- The schema is created only when missing: CREATE SCHEMA IF NOT EXISTS would still need CREATE on
-- the database, which the owner of a schema an administrator made for it does not need.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'talkmeter') THEN
        CREATE SCHEMA talkmeter;
    END IF;
END
$$;
CREATE TABLE IF NOT EXISTS talkmeter.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass('talkmeter.schema_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version, name, checksum FROM talkmeter.schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO talkmeter.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: existing_roles
SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[]);

-- name: may_create_roles
SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user;

-- name: lock_migrations
SELECT pg_advisory_lock($1);

-- name: unlock_migrations
SELECT pg_advisory_unlock($1);

-- ===== recording conversations =====

-- name: insert_conversation
-- The conversation and its segments in one statement; no row when it was stored already.
WITH conversation AS (
    INSERT INTO talkmeter.conversations (
        conversation_id, pbx, direction, client_number, client_number_raw, line, consultants,
        started_at, answered_at, ended_at, wait_ms, talk_ms, hold_ms, estimated, instance, match_status)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'unknown')
    ON CONFLICT (conversation_id) DO NOTHING
    RETURNING conversation_id
), segments AS (
    INSERT INTO talkmeter.conversation_segments (conversation_id, position, consultant, start_at, end_at, hold)
    SELECT c.conversation_id, s.position, s.consultant, s.start_at, s.end_at, s.hold
      FROM conversation c,
           unnest($16::integer[], $17::text[], $18::timestamptz[], $19::timestamptz[], $20::boolean[])
           AS s(position, consultant, start_at, end_at, hold)
)
SELECT conversation_id FROM conversation;

-- name: lock_conversation
-- Serialises every version of one conversation (several instances may record it at once): the
-- first to take it decides, the others then see its decision. Taken before anything else in the
-- transaction, and before the client's lock, so the order is always conversation, then client.
SELECT pg_advisory_xact_lock(1952541795, hashtext($1));

-- name: kept_version
-- The version of the conversation the ledger keeps, with its segments.
SELECT c.conversation_id, c.pbx, c.direction, c.client_number, c.client_number_raw, c.line,
       c.consultants, c.started_at, c.answered_at, c.ended_at, c.wait_ms, c.estimated, c.instance,
       c.client_id, s.consultants AS segment_consultants, s.starts, s.ends, s.holds
  FROM talkmeter.conversations c
  LEFT JOIN LATERAL (
        SELECT array_agg(consultant ORDER BY position) AS consultants,
               array_agg(start_at ORDER BY position) AS starts,
               array_agg(end_at ORDER BY position) AS ends,
               array_agg(hold ORDER BY position) AS holds
          FROM talkmeter.conversation_segments
         WHERE conversation_id = c.conversation_id) s ON true
 WHERE c.conversation_id = $1;

-- name: replace_conversation
-- The kept version becomes another one (an exact measurement superseding an estimated one): its
-- facts, with its ledger keys moved to its start; its segments are removed here and inserted by
-- `insert_segments` (one statement could not order the two). The attribution is decided again by
-- the caller.
-- Every key of the conversation moves, whichever client holds it: a client that had it before
-- (its key reversed to zero) must find the key at the conversation's start if it gains it back,
-- or it would post the key's 'charge' row again. The keys are found by their 'charge' rows (one
-- per key, through charges_one_charge_per_key), then by primary key.
WITH conversation AS (
    UPDATE talkmeter.conversations
       SET direction = $2, client_number = $3, client_number_raw = $4, line = $5, consultants = $6,
           started_at = $7, answered_at = $8, ended_at = $9, wait_ms = $10, talk_ms = $11, hold_ms = $12,
           estimated = $13, instance = $14
     WHERE conversation_id = $1
    RETURNING conversation_id
), keys AS (
    UPDATE talkmeter.current_charges k
       SET started_at = $7
      FROM talkmeter.charges ch
     WHERE ch.conversation_id = $1 AND ch.kind = 'charge'
       AND k.client_id = ch.client_id AND k.conversation_id = ch.conversation_id
       AND k.contract_id = ch.contract_id
       AND k.started_at IS DISTINCT FROM $7
)
DELETE FROM talkmeter.conversation_segments WHERE conversation_id = $1;

-- name: insert_segments
INSERT INTO talkmeter.conversation_segments (conversation_id, position, consultant, start_at, end_at, hold)
SELECT $1, s.position, s.consultant, s.start_at, s.end_at, s.hold
  FROM unnest($2::integer[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::boolean[])
       AS s(position, consultant, start_at, end_at, hold);

-- name: insert_version
INSERT INTO talkmeter.conversation_versions (
    conversation_id, fingerprint, instance, outcome, compared_with, differences, estimated,
    started_at, ended_at, talk_ms, hold_ms, record)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12::jsonb)
ON CONFLICT (conversation_id, fingerprint) DO NOTHING;

-- name: attribute_conversation
-- Gives the conversation the client it resolves to now (or none, with the reason).
UPDATE talkmeter.conversations c
   SET client_id = r.client_id, match_status = r.status
  FROM talkmeter.resolve($1, (SELECT client_number FROM talkmeter.conversations WHERE conversation_id = $1)) r
 WHERE c.conversation_id = $1
RETURNING r.client_id, r.status;

-- name: lock_client
-- Serialises everyone who rates this client's conversations (two daemons, rerate): the
-- transaction-level advisory lock needs no UPDATE privilege, unlike SELECT … FOR UPDATE.
SELECT pg_advisory_xact_lock(1952541801, hashtext($1));

-- name: client
SELECT client_id, name, timezone FROM talkmeter.clients WHERE client_id = $1;

-- name: client_contracts
SELECT contract_id, client_id, valid_from, valid_to, free_daily_minutes, free_days_per_week,
       prepaid_minutes, rate_per_minute, currency, billing_increment_seconds,
       minimum_billable_seconds, short_call_seconds, overage, hold_billable, lines, alert_thresholds
  FROM talkmeter.contracts
 WHERE client_id = $1
 ORDER BY contract_id;

-- name: client_conversations
-- The client's conversations that started in [$2, $3) ($3 NULL = open) with their segments
-- (arrays, in order) and the status each should have: resolved again when $4 (numbers or
-- assignments changed) or when it had no contract, else the stored one.
-- Times are epoch milliseconds, rounded half up from the microseconds as `conversations.to_ms`
-- rounds them (extract gives exact numerics): rating works in milliseconds, and a long history
-- is thousands of rows, each of which Python would otherwise convert.
SELECT c.conversation_id, round(extract(epoch FROM c.started_at) * 1000)::bigint AS started_ms,
       round(extract(epoch FROM c.ended_at) * 1000)::bigint AS ended_ms, c.line, c.talk_ms,
       c.match_status,
       CASE WHEN $4 OR c.match_status = 'no_contract'
            THEN (SELECT r.status FROM talkmeter.resolve(c.conversation_id, c.client_number) r)
            ELSE c.match_status END AS status,
       s.starts, s.ends, s.holds, s.consultants
  FROM talkmeter.conversations c
 CROSS JOIN LATERAL (
        SELECT array_agg(round(extract(epoch FROM g.start_at) * 1000)::bigint ORDER BY g.position) AS starts,
               array_agg(round(extract(epoch FROM g.end_at) * 1000)::bigint ORDER BY g.position) AS ends,
               array_agg(g.hold ORDER BY g.position) AS holds,
               array_agg(g.consultant ORDER BY g.position) AS consultants
          FROM talkmeter.conversation_segments g
         WHERE g.conversation_id = c.conversation_id) s
 WHERE c.client_id = $1
   AND c.started_at >= $2
   AND c.started_at < COALESCE($3::timestamptz, 'infinity');

-- name: frontier
-- See talkmeter.frontier (migrations/0004).
SELECT talkmeter.frontier($1, $2);

-- name: nth_start
-- The start of the client's conversation $3 places after the first one at or after $2 (none when
-- there are fewer): where a window of about $3 conversations ends.
SELECT started_at FROM talkmeter.conversations
 WHERE client_id = $1 AND started_at >= $2
 ORDER BY started_at
OFFSET $3 LIMIT 1;

-- name: next_start
-- The first start at or after $2 among the client's conversations and ledger keys (a key's
-- conversation may have gone to another client).
SELECT LEAST((SELECT min(started_at) FROM talkmeter.conversations WHERE client_id = $1 AND started_at >= $2),
             (SELECT min(started_at) FROM talkmeter.current_charges WHERE client_id = $1 AND started_at >= $2));

-- name: set_match_statuses
UPDATE talkmeter.conversations c
   SET match_status = u.status
  FROM unnest($1::text[], $2::text[]) AS u(conversation_id, status)
 WHERE c.conversation_id = u.conversation_id
   AND c.match_status IS DISTINCT FROM u.status;

-- name: current_charges
-- The current value of the client's ledger keys of contracts $2 (NULL = all) whose
-- conversations started in [$3, $4) ($4 NULL = open), as one JSON array of arrays (columns in
-- the order of `store._current`): a rerate reads thousands at once, and one document is decoded
-- much faster than a row, and two JSON columns, per key.
SELECT COALESCE(json_agg(json_build_array(
           conversation_id, contract_id, started_at, day, talk_ms, hold_ms, excluded_ms, free_ms,
           prepaid_ms, paid_ms, billable_seconds, amount::text, currency, over_quota, short_call,
           tier_changes, days)), '[]')::text
  FROM talkmeter.current_charges
 WHERE client_id = $1
   AND ($2::text[] IS NULL OR contract_id = ANY($2::text[]))
   AND started_at >= $3
   AND started_at < COALESCE($4::timestamptz, 'infinity');

-- name: usage
-- The running state of contracts $2: their days from $3 to $4 ($4 NULL: to the last), and their
-- totals less what the days after $4 used (day NULL), summed here rather than sent.
SELECT contract_id, day, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount
  FROM talkmeter.usage_days
 WHERE client_id = $1 AND contract_id = ANY($2::text[])
   AND day >= $3 AND day <= COALESCE($4::date, 'infinity')
UNION ALL
SELECT t.contract_id, NULL,
       t.talk_ms - COALESCE(a.talk_ms, 0), t.free_ms - COALESCE(a.free_ms, 0),
       t.prepaid_ms - COALESCE(a.prepaid_ms, 0), t.paid_ms - COALESCE(a.paid_ms, 0),
       t.conversations - COALESCE(a.conversations, 0), t.billable_seconds - COALESCE(a.billable_seconds, 0),
       t.amount - COALESCE(a.amount, 0)
  FROM talkmeter.usage_totals t
  LEFT JOIN LATERAL (
        SELECT sum(d.talk_ms)::bigint AS talk_ms, sum(d.free_ms)::bigint AS free_ms,
               sum(d.prepaid_ms)::bigint AS prepaid_ms, sum(d.paid_ms)::bigint AS paid_ms,
               sum(d.conversations)::bigint AS conversations,
               sum(d.billable_seconds)::bigint AS billable_seconds, sum(d.amount) AS amount
          FROM talkmeter.usage_days d
         WHERE d.client_id = t.client_id AND d.contract_id = t.contract_id
           AND d.day > COALESCE($4::date, 'infinity')) a ON true
 WHERE t.client_id = $1 AND t.contract_id = ANY($2::text[]);

-- name: post
-- Appends one client's ledger rows, their per-day rows and saves the keys' values after them, in
-- one statement. $3 is a JSON array with one object per row, in order (a key gets at most one row
-- per call): the row's columns, its per-day counts in "days" ({"2026-11-24": [talk, free,
-- prepaid, paid], ...}) and the key's value after it in "current" (the same columns). One JSON
-- document rather than an array per column: a whole-history rerate posts thousands of rows, and
-- the driver checked every element of forty arrays one by one.
WITH posting AS (
    SELECT *
      FROM jsonb_to_recordset($3::jsonb) AS r(
           position integer, conversation_id text, contract_id text, kind text, day date, talk_ms bigint,
           hold_ms bigint, excluded_ms bigint, free_ms bigint, prepaid_ms bigint, paid_ms bigint,
           billable_seconds integer, amount numeric, currency text, over_quota boolean, short_call boolean,
           tier_changes jsonb, days jsonb, current jsonb)
), posted AS (
    INSERT INTO talkmeter.charges (
        conversation_id, contract_id, client_id, kind, reason, day, talk_ms, hold_ms, excluded_ms,
        free_ms, prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call,
        tier_changes)
    SELECT r.conversation_id, r.contract_id, $1, r.kind, $2, r.day, r.talk_ms, r.hold_ms, r.excluded_ms,
           r.free_ms, r.prepaid_ms, r.paid_ms, r.billable_seconds, r.amount, r.currency, r.over_quota,
           r.short_call, r.tier_changes
      FROM posting r
     ORDER BY r.position
    RETURNING charge_id, conversation_id, contract_id
), days AS (
    INSERT INTO talkmeter.charge_days (charge_id, client_id, day, talk_ms, free_ms, prepaid_ms, paid_ms)
    SELECT p.charge_id, $1, d.key::date, (d.value->>0)::bigint, (d.value->>1)::bigint,
           (d.value->>2)::bigint, (d.value->>3)::bigint
      FROM posting r
      JOIN posted p USING (conversation_id, contract_id)
     CROSS JOIN LATERAL jsonb_each(r.days) AS d
)
INSERT INTO talkmeter.current_charges AS cur (
    client_id, conversation_id, contract_id, started_at, day, talk_ms, hold_ms, excluded_ms, free_ms,
    prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call, tier_changes,
    days, postings, last_charge_id)
SELECT $1, r.conversation_id, r.contract_id,
       -- A key's start: kept as it is when the key exists (the row conflicts), else its
       -- conversation's (COALESCE reads the conversation for new keys only).
       COALESCE(k.started_at, (SELECT cv.started_at FROM talkmeter.conversations cv
                                WHERE cv.conversation_id = r.conversation_id)),
       c.day, c.talk_ms, c.hold_ms, c.excluded_ms,
       c.free_ms, c.prepaid_ms, c.paid_ms, c.billable_seconds, c.amount, c.currency, c.over_quota,
       c.short_call, c.tier_changes, c.days, 1, p.charge_id
  FROM posting r
 CROSS JOIN LATERAL jsonb_to_record(r.current) AS c(
       day date, talk_ms bigint, hold_ms bigint, excluded_ms bigint, free_ms bigint, prepaid_ms bigint,
       paid_ms bigint, billable_seconds bigint, amount numeric, currency text, over_quota boolean,
       short_call boolean, tier_changes jsonb, days jsonb)
  JOIN posted p USING (conversation_id, contract_id)
  LEFT JOIN talkmeter.current_charges k
    ON k.client_id = $1 AND k.conversation_id = r.conversation_id AND k.contract_id = r.contract_id
ON CONFLICT (client_id, conversation_id, contract_id) DO UPDATE
   SET day = EXCLUDED.day, talk_ms = EXCLUDED.talk_ms, hold_ms = EXCLUDED.hold_ms,
       excluded_ms = EXCLUDED.excluded_ms, free_ms = EXCLUDED.free_ms,
       prepaid_ms = EXCLUDED.prepaid_ms, paid_ms = EXCLUDED.paid_ms,
       billable_seconds = EXCLUDED.billable_seconds, amount = EXCLUDED.amount,
       currency = EXCLUDED.currency, over_quota = EXCLUDED.over_quota,
       short_call = EXCLUDED.short_call, tier_changes = EXCLUDED.tier_changes, days = EXCLUDED.days,
       postings = cur.postings + 1, last_charge_id = EXCLUDED.last_charge_id;

-- name: add_usage
-- Adds running-state changes: days ($2-$10), weeks ($11-$14), contract totals ($15-$22),
-- months ($23-$31).
WITH days AS (
    INSERT INTO talkmeter.usage_days AS u (
        client_id, contract_id, day, talk_ms, free_ms, prepaid_ms, paid_ms, conversations,
        billable_seconds, amount)
    SELECT $1, r.contract_id, r.day, r.talk_ms, r.free_ms, r.prepaid_ms, r.paid_ms, r.conversations,
           r.billable_seconds, r.amount
      FROM unnest($2::text[], $3::date[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                  $8::bigint[], $9::bigint[], $10::numeric[])
           AS r(contract_id, day, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount)
    ON CONFLICT (client_id, contract_id, day) DO UPDATE
       SET talk_ms = u.talk_ms + EXCLUDED.talk_ms, free_ms = u.free_ms + EXCLUDED.free_ms,
           prepaid_ms = u.prepaid_ms + EXCLUDED.prepaid_ms, paid_ms = u.paid_ms + EXCLUDED.paid_ms,
           conversations = u.conversations + EXCLUDED.conversations,
           billable_seconds = u.billable_seconds + EXCLUDED.billable_seconds,
           amount = u.amount + EXCLUDED.amount
), weeks AS (
    INSERT INTO talkmeter.usage_weeks AS w (client_id, contract_id, week, free_days, free_ms)
    SELECT $1, r.contract_id, r.week, r.free_days, r.free_ms
      FROM unnest($11::text[], $12::date[], $13::integer[], $14::bigint[]) AS r(contract_id, week, free_days, free_ms)
    ON CONFLICT (client_id, contract_id, week) DO UPDATE
       SET free_days = w.free_days + EXCLUDED.free_days, free_ms = w.free_ms + EXCLUDED.free_ms
), totals AS (
    INSERT INTO talkmeter.usage_totals AS t (
        client_id, contract_id, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount)
    SELECT $1, r.contract_id, r.talk_ms, r.free_ms, r.prepaid_ms, r.paid_ms, r.conversations,
           r.billable_seconds, r.amount
      FROM unnest($15::text[], $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[],
                  $21::bigint[], $22::numeric[])
           AS r(contract_id, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount)
    ON CONFLICT (client_id, contract_id) DO UPDATE
       SET talk_ms = t.talk_ms + EXCLUDED.talk_ms, free_ms = t.free_ms + EXCLUDED.free_ms,
           prepaid_ms = t.prepaid_ms + EXCLUDED.prepaid_ms, paid_ms = t.paid_ms + EXCLUDED.paid_ms,
           conversations = t.conversations + EXCLUDED.conversations,
           billable_seconds = t.billable_seconds + EXCLUDED.billable_seconds,
           amount = t.amount + EXCLUDED.amount
)
INSERT INTO talkmeter.usage_months AS m (
    client_id, contract_id, month, talk_ms, free_ms, prepaid_ms, paid_ms, conversations,
    billable_seconds, amount)
SELECT $1, r.contract_id, r.month, r.talk_ms, r.free_ms, r.prepaid_ms, r.paid_ms, r.conversations,
       r.billable_seconds, r.amount
  FROM unnest($23::text[], $24::date[], $25::bigint[], $26::bigint[], $27::bigint[], $28::bigint[],
              $29::bigint[], $30::bigint[], $31::numeric[])
       AS r(contract_id, month, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount)
ON CONFLICT (client_id, contract_id, month) DO UPDATE
   SET talk_ms = m.talk_ms + EXCLUDED.talk_ms, free_ms = m.free_ms + EXCLUDED.free_ms,
       prepaid_ms = m.prepaid_ms + EXCLUDED.prepaid_ms, paid_ms = m.paid_ms + EXCLUDED.paid_ms,
       conversations = m.conversations + EXCLUDED.conversations,
       billable_seconds = m.billable_seconds + EXCLUDED.billable_seconds,
       amount = m.amount + EXCLUDED.amount;

-- ===== re-rating =====

-- name: pending_rerates
SELECT client_id FROM talkmeter.pending_rerates ORDER BY client_id;

-- name: pending_rerate
-- '-infinity' (a new time zone: everything) comes back as 1900, before any conversation (asyncpg
-- turns the infinities into naive datetimes).
SELECT GREATEST(since, '1900-01-01 00:00:00+00') AS since, reattribute, revision
  FROM talkmeter.pending_rerates WHERE client_id = $1;

-- name: queue_rerate
SELECT talkmeter.queue_rerate($1, $2, $3);

-- name: finish_rerate
-- Clears the client's mark unless a change arrived since it was read.
DELETE FROM talkmeter.pending_rerates WHERE client_id = $1 AND revision = $2;

-- name: release_client_conversations
-- Within the client's lock: detach the client's conversations started at or after $2 that no
-- longer resolve to it (they wait unattributed until their new client, if any, re-rates).
UPDATE talkmeter.conversations c
   SET client_id = NULL, match_status = r.status
  FROM (SELECT cv.conversation_id, cv.started_at, res.client_id, res.status
          FROM talkmeter.conversations cv
         CROSS JOIN LATERAL talkmeter.resolve(cv.conversation_id, cv.client_number) res
         WHERE cv.client_id = $1 AND cv.started_at >= $2) r
 WHERE c.conversation_id = r.conversation_id
   AND r.client_id IS DISTINCT FROM $1
RETURNING c.conversation_id, r.started_at, r.client_id AS new_client_id;

-- name: attach_client_conversations
-- Within the client's lock: attach the unattributed conversations started at or after $2 that
-- resolve to it (by one of its numbers, or assigned to it).
UPDATE talkmeter.conversations c
   SET client_id = r.client_id, match_status = r.status
  FROM (SELECT cv.conversation_id, res.client_id, res.status
          FROM talkmeter.conversations cv
         CROSS JOIN LATERAL talkmeter.resolve(cv.conversation_id, cv.client_number) res
         WHERE cv.client_id IS NULL AND cv.started_at >= $2
           AND (cv.client_number IN (SELECT n.number FROM talkmeter.client_numbers n WHERE n.client_id = $1)
                OR cv.conversation_id IN (SELECT a.conversation_id FROM talkmeter.conversation_assignments a
                                           WHERE a.client_id = $1))) r
 WHERE c.conversation_id = r.conversation_id
   AND r.client_id = $1;

-- name: queue_every_client
-- `rerate --full`: every client ($1 NULL) or one from its first conversation.
SELECT talkmeter.queue_rerate(client_id, '-infinity', true)
  FROM talkmeter.clients
 WHERE $1::text IS NULL OR client_id = $1;

-- name: refresh_unattributed_statuses
UPDATE talkmeter.conversations c
   SET match_status = r.status
  FROM talkmeter.conversations u
 CROSS JOIN LATERAL talkmeter.resolve(u.conversation_id, u.client_number) r
 WHERE c.conversation_id = u.conversation_id
   AND u.client_id IS NULL
   AND c.match_status IS DISTINCT FROM r.status;

-- name: end_contract
SELECT talkmeter.end_contract($1, $2);

-- name: withdraw_contract
SELECT talkmeter.withdraw_contract($1);

-- name: all_clients
SELECT client_id FROM talkmeter.clients ORDER BY client_id;

-- name: assign_conversation
INSERT INTO talkmeter.conversation_assignments (conversation_id, client_id, note)
VALUES ($1, $2, $3)
ON CONFLICT (conversation_id) DO UPDATE
   SET client_id = EXCLUDED.client_id, note = EXCLUDED.note, assigned_at = now();

-- name: conversation_exists
SELECT EXISTS (SELECT 1 FROM talkmeter.conversations WHERE conversation_id = $1);

-- ===== import =====

-- name: existing_client_ids
SELECT client_id FROM talkmeter.clients WHERE client_id = ANY($1::text[]);

-- name: contract_owners
SELECT contract_id, client_id FROM talkmeter.contracts WHERE contract_id = ANY($1::text[]);

-- name: contracts_by_id
SELECT contract_id, client_id, valid_from, valid_to, free_daily_minutes, free_days_per_week,
       prepaid_minutes, rate_per_minute, currency, billing_increment_seconds,
       minimum_billable_seconds, short_call_seconds, overage, hold_billable, lines, alert_thresholds
  FROM talkmeter.contracts
 WHERE contract_id = ANY($1::text[]);

-- name: clients_by_id
SELECT c.client_id, c.name, c.timezone,
       coalesce(array_agg(n.number ORDER BY n.number) FILTER (WHERE n.number IS NOT NULL), '{}') AS numbers
  FROM talkmeter.clients c
  LEFT JOIN talkmeter.client_numbers n USING (client_id)
 WHERE c.client_id = ANY($1::text[])
 GROUP BY c.client_id;

-- name: upsert_client
INSERT INTO talkmeter.clients (client_id, name, timezone) VALUES ($1, $2, $3)
ON CONFLICT (client_id) DO UPDATE
   SET name = EXCLUDED.name, timezone = EXCLUDED.timezone, updated_at = now();

-- name: replace_client_numbers
-- The file's numbers become the client's numbers.
WITH gone AS (
    DELETE FROM talkmeter.client_numbers WHERE client_id = $1 AND NOT (number = ANY($2::text[]))
)
INSERT INTO talkmeter.client_numbers (client_id, number)
SELECT $1, n FROM unnest($2::text[]) AS n
ON CONFLICT DO NOTHING;

-- name: upsert_contract
INSERT INTO talkmeter.contracts (
    contract_id, client_id, valid_from, valid_to, free_daily_minutes, free_days_per_week,
    prepaid_minutes, rate_per_minute, currency, billing_increment_seconds,
    minimum_billable_seconds, short_call_seconds, overage, hold_billable, lines, alert_thresholds)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
ON CONFLICT (contract_id) DO UPDATE
   SET valid_from = EXCLUDED.valid_from, valid_to = EXCLUDED.valid_to,
       free_daily_minutes = EXCLUDED.free_daily_minutes,
       free_days_per_week = EXCLUDED.free_days_per_week,
       prepaid_minutes = EXCLUDED.prepaid_minutes, rate_per_minute = EXCLUDED.rate_per_minute,
       currency = EXCLUDED.currency, billing_increment_seconds = EXCLUDED.billing_increment_seconds,
       minimum_billable_seconds = EXCLUDED.minimum_billable_seconds,
       short_call_seconds = EXCLUDED.short_call_seconds, overage = EXCLUDED.overage,
       hold_billable = EXCLUDED.hold_billable, lines = EXCLUDED.lines,
       alert_thresholds = EXCLUDED.alert_thresholds, updated_at = now();

-- ===== reports =====

-- name: monthly_statement
-- From the view alone (it names the client and the contracts).
SELECT client_id, client_name, contracts, month, conversations, talk_seconds, free_seconds,
       prepaid_seconds, billable_seconds, amount, currency, prepaid_remaining_seconds
  FROM talkmeter.monthly_statement
 WHERE month = $1
   AND ($2::text IS NULL OR client_id = $2)
 ORDER BY client_id;

-- ===== checking the running state against the ledger =====

-- name: ledger_keys
-- The ledger's value of each of the client's keys: the sums of its rows and the other columns of
-- its latest row, straight from the ledger.
SELECT conversation_id, contract_id,
       (array_agg(day ORDER BY charge_id DESC))[1] AS day,
       sum(talk_ms) AS talk_ms, sum(hold_ms) AS hold_ms, sum(excluded_ms) AS excluded_ms,
       sum(free_ms) AS free_ms, sum(prepaid_ms) AS prepaid_ms, sum(paid_ms) AS paid_ms,
       sum(billable_seconds) AS billable_seconds, sum(amount) AS amount,
       (array_agg(currency ORDER BY charge_id DESC))[1] AS currency,
       (array_agg(over_quota ORDER BY charge_id DESC))[1] AS over_quota,
       (array_agg(short_call ORDER BY charge_id DESC))[1] AS short_call,
       (array_agg(tier_changes ORDER BY charge_id DESC))[1]::text AS tier_changes,
       count(*) AS postings, max(charge_id) AS last_charge_id
  FROM talkmeter.charges
 WHERE client_id = $1
 GROUP BY conversation_id, contract_id;

-- name: ledger_key_days
SELECT ch.conversation_id, ch.contract_id, d.day,
       sum(d.talk_ms) AS talk_ms, sum(d.free_ms) AS free_ms,
       sum(d.prepaid_ms) AS prepaid_ms, sum(d.paid_ms) AS paid_ms
  FROM talkmeter.charge_days d
  JOIN talkmeter.charges ch USING (charge_id)
 WHERE d.client_id = $1
 GROUP BY ch.conversation_id, ch.contract_id, d.day;

-- name: stored_current_charges
SELECT conversation_id, contract_id, started_at, day, talk_ms, hold_ms, excluded_ms, free_ms,
       prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call,
       tier_changes::text AS tier_changes, days::text AS days, postings, last_charge_id
  FROM talkmeter.current_charges
 WHERE client_id = $1;

-- name: misdated_keys
-- The client's keys whose start is not their conversation's (rating reads keys by start).
SELECT k.conversation_id, k.contract_id, k.started_at, c.started_at AS conversation_started_at
  FROM talkmeter.current_charges k
  JOIN talkmeter.conversations c USING (conversation_id)
 WHERE k.client_id = $1 AND k.started_at <> c.started_at;

-- name: stored_usage_days
SELECT contract_id, day, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount
  FROM talkmeter.usage_days
 WHERE client_id = $1;

-- name: stored_usage_weeks
SELECT contract_id, week, free_days, free_ms FROM talkmeter.usage_weeks WHERE client_id = $1;

-- name: stored_usage_months
SELECT contract_id, month, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount
  FROM talkmeter.usage_months
 WHERE client_id = $1;

-- name: stored_usage_totals
SELECT contract_id, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount
  FROM talkmeter.usage_totals
 WHERE client_id = $1;
