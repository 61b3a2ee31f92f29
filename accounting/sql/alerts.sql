-- The queries of live quota alerts (daemon/alerts/store.py), under `-- name: …` headers like
-- queries.sql. Usage is read from the ledger's running state (usage_days, usage_totals), never
-- summed from the ledger.

-- name: clients_with_number
SELECT client_id FROM talkmeter.client_numbers WHERE number = $1 ORDER BY client_id;

-- name: alert_view
-- In one round trip: what recorded conversations consumed per client-local day ($3..$4) and over
-- the term, for the contracts $2; the alerts already claimed for them (in the days from $3 on or
-- in the terms starting $5); which of the conversations $6 are already recorded.
SELECT
    (SELECT COALESCE(json_agg(json_build_array(contract_id, day, free_ms, prepaid_ms, paid_ms)), '[]')
       FROM talkmeter.usage_days
      WHERE client_id = $1 AND contract_id = ANY($2::text[]) AND day BETWEEN $3 AND $4) AS days,
    (SELECT COALESCE(json_agg(json_build_array(contract_id, prepaid_ms, paid_ms)), '[]')
       FROM talkmeter.usage_totals
      WHERE client_id = $1 AND contract_id = ANY($2::text[])) AS totals,
    (SELECT COALESCE(json_agg(json_build_array(contract_id, kind, percent, period_start)), '[]')
       FROM talkmeter.notifications
      WHERE type = 'quota.alert' AND client_id = $1 AND contract_id = ANY($2::text[])
        AND (period_start >= $3 OR period_start = ANY($5::date[]))) AS raised,
    ARRAY(SELECT conversation_id FROM talkmeter.conversations
           WHERE conversation_id = ANY($6::text[])) AS recorded;

-- name: claim_alert
-- The decision's row, then its delivery rows and NOTIFY (talkmeter.claimed), in one statement:
-- no row comes back when this alert of this period was already claimed.
WITH claimed AS (
    INSERT INTO talkmeter.notifications (
        type, client_id, contract_id, kind, percent, period_start, period_end, match, conversation_id,
        pbx, crossed_at, decided_at, payload, instance)
    VALUES ('quota.alert', $1, $2, $3, $4, $5, $6, 'matched', $7, $8, $9, $10, $11::jsonb, $13)
    ON CONFLICT (client_id, contract_id, kind, percent, period_start) WHERE type = 'quota.alert' DO NOTHING
    RETURNING notification_id, payload
)
SELECT talkmeter.claimed(notification_id, $12::text[], payload) FROM claimed;

-- name: claim_notice
-- The same for a call-start notice, once per conversation.
WITH claimed AS (
    INSERT INTO talkmeter.notifications (
        type, client_id, contract_id, match, conversation_id, pbx, decided_at, payload, instance)
    VALUES ('call.started', $1, $2, $3, $4, $5, $6, $7::jsonb, $9)
    ON CONFLICT (conversation_id) WHERE type = 'call.started' DO NOTHING
    RETURNING notification_id, payload
)
SELECT talkmeter.claimed(notification_id, $8::text[], payload) FROM claimed;

-- name: delivery_attempted
UPDATE talkmeter.notification_deliveries
   SET state = $3, attempts = $4, last_error = $5, last_attempt_at = clock_timestamp(),
       sent_at = CASE WHEN $3 = 'sent' THEN clock_timestamp() END
 WHERE notification_id = $1 AND sink = $2;

-- name: pending_deliveries
-- What this daemon ($1 its PBX, $2 its instance) claimed and has not delivered yet (after a
-- restart, it goes on); a standby instance of the same PBX leaves them to it.
SELECT n.notification_id, n.contract_id, n.kind, n.percent, n.period_start, n.payload,
       array_agg(d.sink ORDER BY d.sink) AS sinks, array_agg(d.attempts ORDER BY d.sink) AS attempts
  FROM talkmeter.notifications n
  JOIN talkmeter.notification_deliveries d USING (notification_id)
 WHERE n.pbx = $1 AND (n.instance IS NOT DISTINCT FROM $2 OR n.instance IS NULL) AND d.state = 'pending'
 GROUP BY n.notification_id
 ORDER BY n.notification_id;

-- ===== live conversations (quota_now) =====

-- name: put_live_conversations
INSERT INTO talkmeter.live_conversations AS l (
    conversation_id, pbx, client_id, contract_id, channel, client_number, consultants, started_at,
    as_of, talk_ms, counted_ms, talking, counting, on_hold, ended, heartbeat_at, instance)
SELECT r.conversation_id, $1, r.client_id, r.contract_id, r.channel, r.client_number,
       string_to_array(r.consultants, ','), r.started_at, r.as_of, r.talk_ms, r.counted_ms, r.talking,
       r.counting, r.on_hold, r.ended, now(), $16
  FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[],
              $9::timestamptz[], $10::bigint[], $11::bigint[], $12::boolean[], $13::boolean[],
              $14::boolean[], $15::boolean[])
       AS r(conversation_id, client_id, contract_id, channel, client_number, consultants, started_at,
            as_of, talk_ms, counted_ms, talking, counting, on_hold, ended)
ON CONFLICT (conversation_id) DO UPDATE
   SET client_id = EXCLUDED.client_id, contract_id = EXCLUDED.contract_id,
       client_number = EXCLUDED.client_number, consultants = EXCLUDED.consultants,
       as_of = EXCLUDED.as_of, talk_ms = EXCLUDED.talk_ms, counted_ms = EXCLUDED.counted_ms,
       talking = EXCLUDED.talking, counting = EXCLUDED.counting, on_hold = EXCLUDED.on_hold,
       ended = EXCLUDED.ended, heartbeat_at = now(), instance = EXCLUDED.instance;

-- name: drop_live_conversations
DELETE FROM talkmeter.live_conversations WHERE conversation_id = ANY($1::text[]);

-- name: keep_live_conversations
-- This daemon's rows ($1 its PBX, $3 its instance: a standby's rows are its own): refresh the
-- heartbeat of those still live, drop the others.
WITH gone AS (
    DELETE FROM talkmeter.live_conversations
     WHERE pbx = $1 AND (instance IS NOT DISTINCT FROM $3 OR instance IS NULL)
       AND NOT (conversation_id = ANY($2::text[]))
)
UPDATE talkmeter.live_conversations SET heartbeat_at = now()
 WHERE pbx = $1 AND conversation_id = ANY($2::text[]);
