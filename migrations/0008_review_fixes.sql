-- Corrections found in review: ledger keys and line days that followed a conversation's start
-- only partly when an exact version superseded it, number changes that forgot the old number,
-- contracts that an accountant could reopen or could not withdraw cleanly, and weekly free days
-- shown as none left on contracts without a weekly limit. The views keep their names and columns.

-- ===== Ledger keys start when their conversation does ========================================
-- current_charges.started_at is the conversation's start, which an exact version superseding an
-- estimated one may change (0006): every key of the conversation moves with it (queries.sql
-- `replace_conversation`). Before this migration only the keys of the conversation's client then
-- moved; a key another client kept (reversed to zero) stayed at the old start, and that client
-- gaining the conversation back could never be re-rated. Only superseded conversations ever
-- changed their start, so only their keys are looked at.
UPDATE talkmeter.current_charges k
   SET started_at = c.started_at
  FROM talkmeter.conversations c
 WHERE c.conversation_id = k.conversation_id
   AND k.started_at <> c.started_at
   AND k.conversation_id IN (SELECT v.conversation_id FROM talkmeter.conversation_versions v
                              WHERE v.outcome = 'superseded');

-- ===== A contract an alert names is not withdrawn ==========================================
-- An alert or call-start notice (notifications.contract_id) names its contract, and is the record
-- of what a client was told: withdrawing the contract would have to delete it (the foreign key
-- refused, and the accountant saw a database error). The contract stays and can be ended instead,
-- as one with charged conversations. The function keeps its owner and grants (0004).
CREATE OR REPLACE FUNCTION talkmeter.withdraw_contract(contract text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing talkmeter.contracts;
BEGIN
    SELECT * INTO existing FROM talkmeter.contracts WHERE contract_id = contract FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no contract %', quote_literal(contract) USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM talkmeter.charges WHERE client_id = existing.client_id AND contract_id = contract) THEN
        RAISE EXCEPTION 'contract % has charged conversations, so it stays in the ledger: end it instead (talkmeter contract end)',
            quote_literal(contract) USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM talkmeter.notifications WHERE contract_id = contract) THEN
        RAISE EXCEPTION 'contract % has alerts or notices sent under it (talkmeter.alerts), so it stays: end it instead (talkmeter contract end)',
            quote_literal(contract) USING ERRCODE = 'check_violation';
    END IF;
    DELETE FROM talkmeter.contracts WHERE contract_id = contract;
    RETURN existing.client_id;
END
$$;

-- ===== Accountants end contracts, never extend or reopen them ================================
-- `contract end` sets a contract's last day on or before the one it has (an open-ended contract
-- takes any day from its start): a later day would extend an ended contract or reopen one whose
-- term is over, and changing terms is the importer's job (the schema owner's), as the README's
-- roles say. The function keeps its owner and grants (0004).
CREATE OR REPLACE FUNCTION talkmeter.end_contract(contract text, last_day date) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing talkmeter.contracts;
BEGIN
    SELECT * INTO existing FROM talkmeter.contracts WHERE contract_id = contract FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no contract %', quote_literal(contract) USING ERRCODE = 'no_data_found';
    END IF;
    IF last_day < existing.valid_from THEN
        RAISE EXCEPTION 'contract % starts on %: it cannot end before it starts (a contract never used can be withdrawn)',
            quote_literal(contract), existing.valid_from USING ERRCODE = 'check_violation';
    END IF;
    IF last_day > existing.valid_to THEN
        RAISE EXCEPTION 'contract % already ends on %: it can end earlier, not later (a new term is a contract import)',
            quote_literal(contract), existing.valid_to USING ERRCODE = 'check_violation';
    END IF;
    UPDATE talkmeter.contracts SET valid_to = last_day, updated_at = now() WHERE contract_id = contract;
    RETURN existing.client_id;
END
$$;

-- ===== A number changed in place moves the old number's conversations too ====================
-- 0004's trigger looked at NEW.number only, so `UPDATE client_numbers SET number = …` (the
-- importer deletes and inserts, but SQL by hand may not) queued the clients of the new number and
-- left the old number's conversations with a client that no longer holds it. The work for one
-- number is now a function of its own, run for the old and the new number of an UPDATE.
CREATE FUNCTION talkmeter.number_moved(changed text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM talkmeter.queue_rerate(affected.client_id, affected.since, true)
       FROM (SELECT c.client_id, min(c.started_at) AS since
               FROM talkmeter.conversations c
              WHERE c.client_number = changed AND c.client_id IS NOT NULL
              GROUP BY c.client_id
             UNION ALL
             SELECT h.client_id, (SELECT min(c.started_at) FROM talkmeter.conversations c
                                   WHERE c.client_number = changed)
               FROM talkmeter.client_numbers h
              WHERE h.number = changed) affected
      WHERE affected.since IS NOT NULL;
    UPDATE talkmeter.conversations c
       SET match_status = r.status
      FROM talkmeter.conversations u
     CROSS JOIN LATERAL talkmeter.resolve(u.conversation_id, u.client_number) r
     WHERE u.client_number = changed AND u.client_id IS NULL
       AND c.conversation_id = u.conversation_id
       AND r.client_id IS NULL AND c.match_status IS DISTINCT FROM r.status;
END
$$;

CREATE OR REPLACE FUNCTION talkmeter.number_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM talkmeter.number_moved(OLD.number);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.number IS DISTINCT FROM OLD.number) THEN
        PERFORM talkmeter.number_moved(NEW.number);
    END IF;
    RETURN NULL;
END
$$;

-- ===== No weekly limit: no count of free days left ===========================================
-- GREATEST ignores NULL, so a contract without free_days_per_week (no weekly limit) showed
-- free_days_left 0 in weekly_usage (0004) and quota_now (0005), which reads as "none left". It is
-- NULL now, as free_days_per_week is and as the alerts' payload has it. The views are 0004's and
-- 0005's otherwise: same names, same columns, same grants.

-- Per contract and ISO week (Monday): the week's days with free time (the slots of
-- free_days_per_week taken) and the week's usage.
CREATE OR REPLACE VIEW talkmeter.weekly_usage AS
SELECT w.client_id,
       w.contract_id,
       w.week,
       w.free_days AS free_days_used,
       k.free_days_per_week,
       CASE WHEN k.free_days_per_week IS NOT NULL
            THEN GREATEST(k.free_days_per_week - w.free_days, 0) END AS free_days_left,
       (w.free_ms / 1000.0)::numeric(14, 3) AS free_seconds,
       (d.talk_ms / 1000.0)::numeric(14, 3) AS talk_seconds,
       (d.prepaid_ms / 1000.0)::numeric(14, 3) AS prepaid_seconds,
       (d.paid_ms / 1000.0)::numeric(14, 3) AS paid_seconds,
       d.conversations,
       d.amount
  FROM talkmeter.usage_weeks w
  JOIN talkmeter.contracts k USING (contract_id)
 CROSS JOIN LATERAL (
        SELECT sum(u.talk_ms) AS talk_ms, sum(u.prepaid_ms) AS prepaid_ms, sum(u.paid_ms) AS paid_ms,
               sum(u.conversations)::bigint AS conversations, sum(u.amount)::numeric(14, 2) AS amount
          FROM talkmeter.usage_days u
         WHERE u.client_id = w.client_id AND u.contract_id = w.contract_id
           AND u.day >= w.week AND u.day < w.week + 7) d
 WHERE d.talk_ms <> 0 OR d.conversations <> 0;

-- What each client has used and has left now, per contract valid today (client-local): see 0005.
CREATE OR REPLACE VIEW talkmeter.quota_now AS
WITH today AS (
    SELECT k.*, cl.name AS client_name, cl.timezone,
           (now() AT TIME ZONE cl.timezone)::date AS day
      FROM talkmeter.contracts k
      JOIN talkmeter.clients cl USING (client_id)
), valid AS (
    SELECT * FROM today t
     WHERE t.valid_from <= t.day AND (t.valid_to IS NULL OR t.valid_to >= t.day)
), live AS (
    SELECT lc.client_id, lc.contract_id,
           count(*) AS conversations,
           sum(lc.talk_now) AS talk_ms,
           sum(CASE WHEN lc.counted_now < COALESCE(k.short_call_seconds, 0) * 1000 THEN 0
                    ELSE lc.counted_now END) AS counted_ms,
           jsonb_agg(jsonb_build_object(
               'conversation_id', lc.conversation_id, 'pbx', lc.pbx, 'client_number', lc.client_number,
               'channel', lc.channel, 'consultants', lc.consultants, 'started_at', lc.started_at,
               'talk_seconds', round(lc.talk_now / 1000.0, 3),
               'counted_seconds', round(lc.counted_now / 1000.0, 3),
               'on_hold', lc.on_hold, 'ended', lc.ended) ORDER BY lc.started_at) AS in_progress
      FROM (SELECT l.*,
                   l.talk_ms + CASE WHEN l.talking AND NOT l.ended
                       THEN GREATEST(0, (extract(epoch FROM now() - l.as_of) * 1000)::bigint) ELSE 0 END
                       AS talk_now,
                   l.counted_ms + CASE WHEN l.counting AND NOT l.ended
                       THEN GREATEST(0, (extract(epoch FROM now() - l.as_of) * 1000)::bigint) ELSE 0 END
                       AS counted_now
              FROM talkmeter.live_conversations l
             WHERE l.heartbeat_at > now() - interval '2 minutes') lc
      JOIN talkmeter.contracts k USING (contract_id)
     GROUP BY lc.client_id, lc.contract_id
), figures AS (
    SELECT v.*,
           COALESCE(ud.free_ms, 0) AS day_free,
           COALESCE(ud.free_ms + ud.prepaid_ms + ud.paid_ms, 0) AS day_counted,
           COALESCE(uw.free_days, 0) AS week_free_days,
           COALESCE(ut.prepaid_ms, 0) + COALESCE(ut.paid_ms, 0) AS beyond_free,
           COALESCE(ut.paid_ms, 0) AS paid_total,
           (SELECT COALESCE(sum(m.paid_ms), 0) FROM talkmeter.usage_days m
             WHERE m.client_id = v.client_id AND m.contract_id = v.contract_id
               AND m.day >= date_trunc('month', v.day)::date AND m.day <= v.day) AS paid_month,
           COALESCE(l.conversations, 0) AS live_conversations,
           COALESCE(l.talk_ms, 0) AS live_talk,
           COALESCE(l.counted_ms, 0) AS live_counted,
           COALESCE(l.in_progress, '[]') AS in_progress
      FROM valid v
      LEFT JOIN talkmeter.usage_days ud
             ON ud.client_id = v.client_id AND ud.contract_id = v.contract_id AND ud.day = v.day
      LEFT JOIN talkmeter.usage_weeks uw
             ON uw.client_id = v.client_id AND uw.contract_id = v.contract_id
            AND uw.week = v.day - (extract(isodow FROM v.day)::int - 1)
      LEFT JOIN talkmeter.usage_totals ut ON ut.client_id = v.client_id AND ut.contract_id = v.contract_id
      LEFT JOIN live l ON l.client_id = v.client_id AND l.contract_id = v.contract_id
), capped AS (
    SELECT f.*,
           -- Today's allowance: held if today already drew free time; refused if today talked
           -- without any (no free day left then); otherwise open while the week has a free day.
           CASE WHEN COALESCE(f.free_daily_minutes, 0) = 0 THEN 0
                WHEN f.day_free > 0 THEN f.free_daily_minutes::bigint * 60000
                WHEN f.day_counted > 0 THEN 0
                WHEN f.free_days_per_week IS NULL OR f.week_free_days < f.free_days_per_week
                    THEN f.free_daily_minutes::bigint * 60000
                ELSE 0 END AS day_cap,
           COALESCE(f.prepaid_minutes, 0)::bigint * 60000 AS package
      FROM figures f
), drawn AS (
    SELECT c.*,
           LEAST(c.day_cap, c.day_counted + c.live_counted) AS free_used,
           c.beyond_free + GREATEST(0, c.day_counted + c.live_counted - c.day_cap)
               - GREATEST(0, c.day_counted - c.day_cap) AS beyond_now
      FROM capped c
)
SELECT d.client_id,
       d.client_name,
       d.contract_id,
       d.timezone,
       d.day,
       (d.free_daily_minutes::bigint * 60)::numeric(14, 3) AS free_daily_seconds,
       (d.free_used / 1000.0)::numeric(14, 3) AS free_used_seconds,
       CASE WHEN d.free_daily_minutes IS NOT NULL
            THEN ((d.day_cap - d.free_used) / 1000.0)::numeric(14, 3) END AS free_left_seconds,
       d.free_days_per_week,
       d.week_free_days + CASE WHEN d.day_free = 0 AND d.day_cap > 0 AND d.live_counted > 0 THEN 1 ELSE 0 END
           AS free_days_used,
       CASE WHEN d.free_days_per_week IS NOT NULL
            THEN GREATEST(0, d.free_days_per_week - d.week_free_days
                             - CASE WHEN d.day_free = 0 AND d.day_cap > 0 AND d.live_counted > 0 THEN 1 ELSE 0 END)
            END AS free_days_left,
       (d.prepaid_minutes::bigint * 60)::numeric(14, 3) AS prepaid_seconds,
       (LEAST(d.package, d.beyond_now) / 1000.0)::numeric(14, 3) AS prepaid_used_seconds,
       CASE WHEN d.prepaid_minutes IS NOT NULL
            THEN ((d.package - LEAST(d.package, d.beyond_now)) / 1000.0)::numeric(14, 3) END
           AS prepaid_left_seconds,
       ((d.paid_month + GREATEST(0, d.beyond_now - d.package) - d.paid_total) / 1000.0)::numeric(14, 3)
           AS paid_seconds_this_month,
       d.overage,
       d.live_conversations AS conversations_in_progress,
       (d.live_talk / 1000.0)::numeric(14, 3) AS live_talk_seconds,
       (d.live_counted / 1000.0)::numeric(14, 3) AS live_counted_seconds,
       d.in_progress,
       now() AS as_of
  FROM drawn d;

-- ===== A conversation's line day follows its start ===========================================
-- 0004 set line_day on insert only, but a superseding exact version changes started_at (0006):
-- line_quality then counted the conversation on the estimated version's day. The trigger now
-- runs on an update of started_at too (a new line_timezone still recomputes every row through
-- settings_line_zone, whose UPDATE sets line_day only). The conversations already superseded
-- are the only ones whose start ever changed: their line day is recomputed once.
DROP TRIGGER conversations_line_day ON talkmeter.conversations;
CREATE TRIGGER conversations_line_day BEFORE INSERT OR UPDATE OF started_at ON talkmeter.conversations
    FOR EACH ROW EXECUTE FUNCTION talkmeter.set_line_day();
UPDATE talkmeter.conversations c
   SET line_day = (c.started_at AT TIME ZONE (SELECT value FROM talkmeter.settings WHERE key = 'line_timezone'))::date
 WHERE c.conversation_id IN (SELECT v.conversation_id FROM talkmeter.conversation_versions v
                              WHERE v.outcome = 'superseded')
   AND c.line_day IS DISTINCT FROM
       (c.started_at AT TIME ZONE (SELECT value FROM talkmeter.settings WHERE key = 'line_timezone'))::date;
