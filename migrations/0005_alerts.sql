-- Live quota alerts and call-start notices (daemon/alerts), and what each client has left now.
--
-- notifications: one row per alert or notice a daemon decided to send. The database decides who
-- sends: a daemon claims the row (INSERT ... ON CONFLICT DO NOTHING) in the transaction in which it
-- decided, under the client's rating lock; the unique indexes below make an alert once per
-- threshold, period and contract, and a call-start notice once per conversation, whatever the
-- number of daemons and restarts. The daemon that claimed it (`pbx`) delivers it.
CREATE TABLE talkmeter.notifications (
    notification_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type text NOT NULL CHECK (type IN ('quota.alert', 'call.started')),
    client_id text REFERENCES talkmeter.clients,
    contract_id text REFERENCES talkmeter.contracts,
    -- Alerts: what was crossed ('daily' or 'prepaid' percent, or 'overrun' with percent 0) and the
    -- period: a client-local day, or the contract's term (period_end NULL: open-ended).
    kind text CHECK (kind IN ('daily', 'prepaid', 'overrun')),
    percent integer CHECK (percent >= 0),
    period_start date,
    period_end date,
    match text NOT NULL CHECK (match IN ('matched', 'unknown', 'withheld', 'ambiguous', 'no_contract')),
    -- The conversation it is about: in progress, just recorded, or (a notice) just started.
    conversation_id text,
    pbx text NOT NULL,
    crossed_at timestamptz,
    decided_at timestamptz NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The JSON every sink carries (README, "Alerts"), its `text` in the configured language; its
    -- `id` is this row's notification_id (the view `alerts` shows it filled in).
    payload jsonb NOT NULL,
    CHECK ((type = 'quota.alert') = (kind IS NOT NULL)),
    CHECK (type <> 'quota.alert'
           OR (contract_id IS NOT NULL AND percent IS NOT NULL AND period_start IS NOT NULL)),
    CHECK (type <> 'call.started' OR conversation_id IS NOT NULL)
);
CREATE UNIQUE INDEX notifications_alert_once
    ON talkmeter.notifications (client_id, contract_id, kind, percent, period_start)
    WHERE type = 'quota.alert';
CREATE UNIQUE INDEX notifications_notice_once ON talkmeter.notifications (conversation_id)
    WHERE type = 'call.started';
CREATE INDEX notifications_claimed ON talkmeter.notifications (claimed_at);
CREATE INDEX notifications_client ON talkmeter.notifications (client_id, claimed_at);

-- One row per notification and sink (webhook, telegram:<chat>, email, ami, pg_notify): pending
-- until delivered, sent, or failed (given up) with the last reason; attempts counts every try.
CREATE TABLE talkmeter.notification_deliveries (
    notification_id bigint NOT NULL REFERENCES talkmeter.notifications ON DELETE CASCADE,
    sink text NOT NULL CHECK (sink ~ '^(webhook|email|ami|pg_notify|telegram:.+)$'),
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error text,
    last_attempt_at timestamptz,
    sent_at timestamptz,
    PRIMARY KEY (notification_id, sink)
);
CREATE INDEX notification_deliveries_pending ON talkmeter.notification_deliveries (notification_id)
    WHERE state = 'pending';

-- What follows a claim, in the claiming statement: one pending delivery row per sink, and when
-- 'pg_notify' is among them, NOTIFY talkmeter_alerts with the payload (its `id` filled in), which
-- PostgreSQL delivers at commit; so its row is written as sent. Returns the id.
CREATE FUNCTION talkmeter.claimed(notification bigint, sinks text[], body jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO talkmeter.notification_deliveries (notification_id, sink, state, attempts, last_attempt_at, sent_at)
    SELECT notification, sink,
           CASE WHEN sink = 'pg_notify' THEN 'sent' ELSE 'pending' END,
           CASE WHEN sink = 'pg_notify' THEN 1 ELSE 0 END,
           CASE WHEN sink = 'pg_notify' THEN clock_timestamp() END,
           CASE WHEN sink = 'pg_notify' THEN clock_timestamp() END
      FROM unnest(sinks) AS sink;
    IF 'pg_notify' = ANY(sinks) THEN
        PERFORM pg_notify('talkmeter_alerts', (body || jsonb_build_object('id', notification))::text);
    END IF;
    RETURN notification;
END
$$;

-- The conversations in progress, as their daemon last wrote them: how live talk reaches
-- quota_now. A daemon writes a row when it matches a conversation to a contract and again at
-- every talk or hold change (as_of: the PBX's time of that change), and removes it once the
-- conversation is recorded; between changes the talk grows with the clock, so the view adds
-- now() - as_of while `talking` (`counting`). A daemon refreshes heartbeat_at of its rows every
-- 30 s; rows of a daemon silent for two minutes are not shown.
CREATE TABLE talkmeter.live_conversations (
    conversation_id text PRIMARY KEY,
    pbx text NOT NULL,
    client_id text NOT NULL REFERENCES talkmeter.clients ON DELETE CASCADE,
    contract_id text NOT NULL REFERENCES talkmeter.contracts ON DELETE CASCADE,
    channel text NOT NULL,
    client_number text,
    consultants text[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL,
    as_of timestamptz NOT NULL,
    talk_ms bigint NOT NULL CHECK (talk_ms >= 0),
    -- Talk that counts against the allowances (hold only where billable), before the short-call
    -- rule, which the view applies.
    counted_ms bigint NOT NULL CHECK (counted_ms >= 0),
    talking boolean NOT NULL,
    counting boolean NOT NULL,
    on_hold boolean NOT NULL,
    ended boolean NOT NULL DEFAULT false,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX live_conversations_client ON talkmeter.live_conversations (client_id, contract_id);
CREATE INDEX live_conversations_pbx ON talkmeter.live_conversations (pbx);

-- ===== For the support manager ================================================================

CREATE VIEW talkmeter.alerts AS
SELECT n.notification_id AS alert_id,
       n.type,
       n.kind,
       CASE WHEN n.kind IN ('daily', 'prepaid') THEN n.percent END AS percent,
       n.period_start,
       n.period_end,
       n.client_id,
       cl.name AS client_name,
       n.contract_id,
       n.match,
       n.conversation_id,
       n.pbx,
       n.crossed_at,
       n.decided_at,
       n.claimed_at,
       n.payload ->> 'text' AS text,
       COALESCE(d.sent, '{}') AS sent_to,
       COALESCE(d.pending, '{}') AS pending_to,
       COALESCE(d.failed, '{}') AS failed_to,
       COALESCE(d.deliveries, '{}') AS deliveries,
       n.payload || jsonb_build_object('id', n.notification_id) AS payload
  FROM talkmeter.notifications n
  LEFT JOIN talkmeter.clients cl USING (client_id)
  LEFT JOIN LATERAL (
        SELECT array_agg(sink ORDER BY sink) FILTER (WHERE state = 'sent') AS sent,
               array_agg(sink ORDER BY sink) FILTER (WHERE state = 'pending') AS pending,
               array_agg(sink ORDER BY sink) FILTER (WHERE state = 'failed') AS failed,
               jsonb_object_agg(sink, jsonb_build_object(
                   'state', state, 'attempts', attempts, 'error', last_error,
                   'last_attempt_at', last_attempt_at, 'sent_at', sent_at)) AS deliveries
          FROM talkmeter.notification_deliveries nd
         WHERE nd.notification_id = n.notification_id) d ON true;

-- What each client has used and has left now, per contract valid today (client-local): the
-- running usage state of the ledger (usage_days, usage_weeks, usage_totals: recorded
-- conversations, read through their keys) plus the talk of the conversations in progress
-- (live_conversations). The live talk is drawn as rating draws it: today's free allowance first
-- (if today holds one of the week's free days, or can still take one), then the package, then
-- paid time; a conversation shorter than short_call_seconds so far counts nothing yet. A
-- conversation in progress across midnight counts wholly on the new day here (its recording
-- splits it exactly).
CREATE VIEW talkmeter.quota_now AS
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
       GREATEST(0, d.free_days_per_week - d.week_free_days
                   - CASE WHEN d.day_free = 0 AND d.day_cap > 0 AND d.live_counted > 0 THEN 1 ELSE 0 END)
           AS free_days_left,
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

-- ===== Grants ==============================================================================
GRANT SELECT, INSERT ON talkmeter.notifications TO talkmeter_writer;
GRANT SELECT, INSERT, UPDATE ON talkmeter.notification_deliveries TO talkmeter_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON talkmeter.live_conversations TO talkmeter_writer;
GRANT SELECT ON talkmeter.alerts, talkmeter.quota_now TO talkmeter_writer, talkmeter_accountant;
