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
INSERT INTO talkmeter.conversations (
    conversation_id, pbx, direction, client_number, client_number_raw, line, consultants,
    started_at, answered_at, ended_at, wait_ms, talk_ms, hold_ms, estimated, match_status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'unknown')
ON CONFLICT (conversation_id) DO NOTHING
RETURNING conversation_id;

-- name: insert_segments
INSERT INTO talkmeter.conversation_segments (conversation_id, position, consultant, start_at, end_at, hold)
SELECT $1, s.position, s.consultant, s.start_at, s.end_at, s.hold
  FROM unnest($2::integer[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::boolean[])
       AS s(position, consultant, start_at, end_at, hold);

-- name: resolve_conversation
SELECT client_id, status FROM talkmeter.conversation_resolution WHERE conversation_id = $1;

-- name: set_attribution
UPDATE talkmeter.conversations SET client_id = $2, match_status = $3 WHERE conversation_id = $1;

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
-- The client's conversations that started in [$2, $3) with their resolution status; NULL
-- bounds are open.
SELECT c.conversation_id, c.started_at, c.line, r.status
  FROM talkmeter.conversations c
  JOIN talkmeter.conversation_resolution r USING (conversation_id)
 WHERE c.client_id = $1
   AND c.started_at >= COALESCE($2::timestamptz, '-infinity')
   AND c.started_at < COALESCE($3::timestamptz, 'infinity');

-- name: client_segments
SELECT s.conversation_id, s.start_at, s.end_at, s.hold, s.consultant
  FROM talkmeter.conversation_segments s
  JOIN talkmeter.conversations c USING (conversation_id)
 WHERE c.client_id = $1
   AND c.started_at >= COALESCE($2::timestamptz, '-infinity')
   AND c.started_at < COALESCE($3::timestamptz, 'infinity')
 ORDER BY s.conversation_id, s.position;

-- name: earliest_start_still_talking
-- The earliest start among the client's conversations that ended at or after $2.
SELECT min(started_at) FROM talkmeter.conversations WHERE client_id = $1 AND ended_at >= $2;

-- name: settled_free_by_day
-- Free milliseconds per local day (from $4 on) of the contract's conversations started before
-- the frontier $3: the usage a re-rating from the frontier starts from.
SELECT d.day, sum(d.free_ms) AS free_ms
  FROM talkmeter.charges ch
  JOIN talkmeter.conversations c USING (conversation_id)
  JOIN talkmeter.charge_days d USING (charge_id)
 WHERE ch.client_id = $1 AND ch.contract_id = $2 AND c.started_at < $3 AND d.day >= $4
 GROUP BY d.day;

-- name: settled_prepaid
SELECT COALESCE(sum(ch.prepaid_ms), 0)
  FROM talkmeter.charges ch
  JOIN talkmeter.conversations c USING (conversation_id)
 WHERE ch.client_id = $1 AND ch.contract_id = $2 AND c.started_at < $3;

-- name: set_match_statuses
UPDATE talkmeter.conversations c
   SET match_status = u.status
  FROM unnest($1::text[], $2::text[]) AS u(conversation_id, status)
 WHERE c.conversation_id = u.conversation_id
   AND c.match_status IS DISTINCT FROM u.status;

-- name: posted_charges
-- What the ledger says now for the client's keys, restricted to contracts $2 (NULL = all) and
-- to conversations started at or after $3 (NULL = all): the
-- sums of each key's rows, and the non-additive columns of its latest row. (Filtering the base
-- table keeps this an index scan; a contract never changes client, so a key's rows share it.)
SELECT conversation_id, contract_id,
       (array_agg(day ORDER BY charge_id DESC))[1] AS day,
       sum(talk_ms) AS talk_ms, sum(hold_ms) AS hold_ms, sum(excluded_ms) AS excluded_ms,
       sum(free_ms) AS free_ms, sum(prepaid_ms) AS prepaid_ms, sum(paid_ms) AS paid_ms,
       sum(billable_seconds) AS billable_seconds, sum(amount) AS amount,
       (array_agg(currency ORDER BY charge_id DESC))[1] AS currency,
       (array_agg(over_quota ORDER BY charge_id DESC))[1] AS over_quota,
       (array_agg(short_call ORDER BY charge_id DESC))[1] AS short_call,
       (array_agg(tier_changes ORDER BY charge_id DESC))[1] AS tier_changes
  FROM talkmeter.charges
 WHERE client_id = $1
   AND ($2::text[] IS NULL OR contract_id = ANY($2::text[]))
   AND ($3::timestamptz IS NULL OR conversation_id IN (
        SELECT conversation_id FROM talkmeter.conversations WHERE client_id = $1 AND started_at >= $3))
 GROUP BY conversation_id, contract_id;

-- name: posted_days
SELECT ch.conversation_id, ch.contract_id, d.day,
       sum(d.talk_ms) AS talk_ms, sum(d.free_ms) AS free_ms,
       sum(d.prepaid_ms) AS prepaid_ms, sum(d.paid_ms) AS paid_ms
  FROM talkmeter.charge_days d
  JOIN talkmeter.charges ch USING (charge_id)
 WHERE ch.client_id = $1
   AND ($2::text[] IS NULL OR ch.contract_id = ANY($2::text[]))
   AND ($3::timestamptz IS NULL OR ch.conversation_id IN (
        SELECT conversation_id FROM talkmeter.conversations WHERE client_id = $1 AND started_at >= $3))
 GROUP BY ch.conversation_id, ch.contract_id, d.day;

-- name: insert_charge
INSERT INTO talkmeter.charges (
    conversation_id, contract_id, client_id, kind, reason, day, talk_ms, hold_ms, excluded_ms,
    free_ms, prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call,
    tier_changes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18::jsonb)
RETURNING charge_id;

-- name: insert_charge_days
INSERT INTO talkmeter.charge_days (charge_id, client_id, day, talk_ms, free_ms, prepaid_ms, paid_ms)
SELECT $1, $2, d.day, d.talk_ms, d.free_ms, d.prepaid_ms, d.paid_ms
  FROM unnest($3::date[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
       AS d(day, talk_ms, free_ms, prepaid_ms, paid_ms);

-- ===== re-rating =====

-- name: attributions_to_release
-- Conversations attributed to a client that their current resolution no longer gives them.
SELECT c.conversation_id, c.client_id
  FROM talkmeter.conversations c
  JOIN talkmeter.conversation_resolution r USING (conversation_id)
 WHERE c.client_id IS NOT NULL
   AND r.client_id IS DISTINCT FROM c.client_id
 ORDER BY c.client_id, c.conversation_id;

-- name: release_client_conversations
-- Within the client's lock: detach what no longer resolves to it (it waits unattributed until
-- its new client, if any, is settled).
UPDATE talkmeter.conversations c
   SET client_id = NULL, match_status = r.status
  FROM talkmeter.conversation_resolution r
 WHERE r.conversation_id = c.conversation_id
   AND c.client_id = $1
   AND r.client_id IS DISTINCT FROM $1;

-- name: attach_client_conversations
UPDATE talkmeter.conversations c
   SET client_id = r.client_id, match_status = r.status
  FROM talkmeter.conversation_resolution r
 WHERE r.conversation_id = c.conversation_id
   AND c.client_id IS NULL
   AND r.client_id = $1;

-- name: refresh_unattributed_statuses
UPDATE talkmeter.conversations c
   SET match_status = r.status
  FROM talkmeter.conversation_resolution r
 WHERE r.conversation_id = c.conversation_id
   AND c.client_id IS NULL
   AND c.match_status IS DISTINCT FROM r.status;

-- name: clients_waiting_attachment
SELECT DISTINCT r.client_id
  FROM talkmeter.conversations c
  JOIN talkmeter.conversation_resolution r USING (conversation_id)
 WHERE c.client_id IS NULL AND r.client_id IS NOT NULL;

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
SELECT ms.client_id, cl.name AS client_name, ms.month, ms.conversations, ms.talk_seconds,
       ms.free_seconds, ms.prepaid_seconds, ms.billable_seconds, ms.amount, ms.currency,
       ms.prepaid_remaining_seconds
  FROM talkmeter.monthly_statement ms
  JOIN talkmeter.clients cl USING (client_id)
 WHERE ms.month = $1
   AND ($2::text IS NULL OR ms.client_id = $2)
 ORDER BY ms.client_id;
