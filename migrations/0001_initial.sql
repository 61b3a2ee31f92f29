-- talkmeter accounting schema: reference data, conversations, the append-only ledger.
-- Forward-only: never edit this file once applied anywhere; add 0002_….sql instead.
-- Applied by `talkmeter migrate` in one transaction, after the runner has created the schema
-- `talkmeter` and its `talkmeter.schema_migrations` table.

-- Site-wide settings. `line_timezone` is the zone in which `line_quality` counts days (lines are
-- the partner's own, so their day is the partner's, not a client's).
CREATE TABLE talkmeter.settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO talkmeter.settings (key, value) VALUES ('line_timezone', 'Europe/Moscow');

CREATE TABLE talkmeter.clients (
    client_id text PRIMARY KEY,
    name text NOT NULL,
    timezone text NOT NULL DEFAULT 'Europe/Moscow',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A client may have many numbers; a number may belong to several clients (then it is ambiguous
-- and its conversations wait in the unmatched queue).
CREATE TABLE talkmeter.client_numbers (
    client_id text NOT NULL REFERENCES talkmeter.clients ON DELETE CASCADE,
    number text NOT NULL CHECK (number ~ '^\+[1-9][0-9]{1,14}$'),
    PRIMARY KEY (client_id, number)
);
CREATE INDEX client_numbers_number ON talkmeter.client_numbers (number);

-- NULL switches a rule off (see accounting/contracts.py for the defaults of the others).
CREATE TABLE talkmeter.contracts (
    contract_id text PRIMARY KEY,
    client_id text NOT NULL REFERENCES talkmeter.clients,
    valid_from date NOT NULL,
    valid_to date CHECK (valid_to >= valid_from),
    free_daily_minutes integer CHECK (free_daily_minutes >= 0),
    free_days_per_week integer CHECK (free_days_per_week BETWEEN 1 AND 7),
    prepaid_minutes integer CHECK (prepaid_minutes >= 0),
    rate_per_minute numeric(12, 4) CHECK (rate_per_minute >= 0),
    currency char(3),
    billing_increment_seconds integer NOT NULL DEFAULT 1 CHECK (billing_increment_seconds >= 1),
    minimum_billable_seconds integer NOT NULL DEFAULT 0 CHECK (minimum_billable_seconds >= 0),
    short_call_seconds integer CHECK (short_call_seconds >= 0),
    overage text NOT NULL CHECK (overage IN ('bill', 'flag')),
    hold_billable boolean NOT NULL DEFAULT true,
    lines text[] NOT NULL DEFAULT '{}',
    alert_thresholds integer[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (overage = 'flag' OR rate_per_minute IS NOT NULL),
    CHECK (rate_per_minute IS NULL OR currency IS NOT NULL)
);
CREATE INDEX contracts_client ON talkmeter.contracts (client_id);

-- Every finished conversation, answered or not (line_quality needs the unanswered ones).
-- client_id/match_status are the current attribution, kept up to date by rating and rerate;
-- the facts (times, numbers, segments) are never changed.
CREATE TABLE talkmeter.conversations (
    conversation_id text PRIMARY KEY,
    pbx text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    client_number text,
    client_number_raw text NOT NULL,
    line text,
    consultants text[] NOT NULL,
    started_at timestamptz NOT NULL,
    answered_at timestamptz,
    ended_at timestamptz NOT NULL,
    wait_ms bigint,
    talk_ms bigint NOT NULL CHECK (talk_ms >= 0),
    hold_ms bigint NOT NULL CHECK (hold_ms >= 0),
    estimated boolean NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    client_id text REFERENCES talkmeter.clients,
    match_status text NOT NULL
        CHECK (match_status IN ('matched', 'assigned', 'withheld', 'unknown', 'ambiguous', 'no_contract'))
);
CREATE INDEX conversations_client ON talkmeter.conversations (client_id, started_at);
CREATE INDEX conversations_number ON talkmeter.conversations (client_number);
CREATE INDEX conversations_line ON talkmeter.conversations (line, started_at);

CREATE TABLE talkmeter.conversation_segments (
    conversation_id text NOT NULL REFERENCES talkmeter.conversations,
    position integer NOT NULL,
    consultant text,
    start_at timestamptz NOT NULL,
    end_at timestamptz NOT NULL CHECK (end_at >= start_at),
    hold boolean NOT NULL,
    PRIMARY KEY (conversation_id, position)
);

-- A person's decision for a conversation whose number cannot decide (withheld, ambiguous).
CREATE TABLE talkmeter.conversation_assignments (
    conversation_id text PRIMARY KEY REFERENCES talkmeter.conversations,
    client_id text NOT NULL REFERENCES talkmeter.clients,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    note text
);

-- Who a conversation belongs to now: an assignment wins, then a number held by exactly one client.
CREATE VIEW talkmeter.conversation_resolution AS
SELECT c.conversation_id,
       CASE WHEN a.client_id IS NOT NULL THEN a.client_id
            WHEN n.candidates = 1 THEN n.only_client END AS client_id,
       CASE WHEN a.client_id IS NOT NULL THEN 'assigned'
            WHEN c.client_number IS NULL THEN 'withheld'
            WHEN n.candidates = 0 THEN 'unknown'
            WHEN n.candidates > 1 THEN 'ambiguous'
            ELSE 'matched' END AS status
  FROM talkmeter.conversations c
  LEFT JOIN talkmeter.conversation_assignments a USING (conversation_id)
  CROSS JOIN LATERAL (SELECT count(*) AS candidates, min(cn.client_id) AS only_client
                        FROM talkmeter.client_numbers cn
                       WHERE cn.number = c.client_number) n;

-- The ledger. One 'charge' row per conversation and contract; every later correction is an
-- 'adjustment' row holding the differences (sums of a key's rows are its current value).
-- Non-additive columns (currency, over_quota, short_call, tier_changes, day) hold the value as
-- of that row; the latest row of a key wins.
CREATE TABLE talkmeter.charges (
    charge_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES talkmeter.conversations,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    client_id text NOT NULL REFERENCES talkmeter.clients,
    kind text NOT NULL CHECK (kind IN ('charge', 'adjustment')),
    reason text NOT NULL,
    posted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    day date NOT NULL,
    talk_ms bigint NOT NULL,
    hold_ms bigint NOT NULL,
    excluded_ms bigint NOT NULL,
    free_ms bigint NOT NULL,
    prepaid_ms bigint NOT NULL,
    paid_ms bigint NOT NULL,
    billable_seconds integer NOT NULL,
    amount numeric(14, 2) NOT NULL,
    currency char(3),
    over_quota boolean NOT NULL,
    short_call boolean NOT NULL,
    tier_changes jsonb NOT NULL
);
CREATE UNIQUE INDEX charges_one_charge_per_key ON talkmeter.charges (conversation_id, contract_id)
    WHERE kind = 'charge';
CREATE INDEX charges_client ON talkmeter.charges (client_id, contract_id);

-- The milliseconds of each ledger row per client-local day (a conversation across midnight has
-- two rows here), so that daily usage is exact.
CREATE TABLE talkmeter.charge_days (
    charge_id bigint NOT NULL REFERENCES talkmeter.charges,
    day date NOT NULL,
    talk_ms bigint NOT NULL,
    free_ms bigint NOT NULL,
    prepaid_ms bigint NOT NULL,
    paid_ms bigint NOT NULL,
    PRIMARY KEY (charge_id, day)
);

CREATE FUNCTION talkmeter.refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused; post an adjustment row instead', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER charges_append_only BEFORE UPDATE OR DELETE ON talkmeter.charges
    FOR EACH ROW EXECUTE FUNCTION talkmeter.refuse_ledger_change();
CREATE TRIGGER charges_no_truncate BEFORE TRUNCATE ON talkmeter.charges
    FOR EACH STATEMENT EXECUTE FUNCTION talkmeter.refuse_ledger_change();
CREATE TRIGGER charge_days_append_only BEFORE UPDATE OR DELETE ON talkmeter.charge_days
    FOR EACH ROW EXECUTE FUNCTION talkmeter.refuse_ledger_change();
CREATE TRIGGER charge_days_no_truncate BEFORE TRUNCATE ON talkmeter.charge_days
    FOR EACH STATEMENT EXECUTE FUNCTION talkmeter.refuse_ledger_change();

-- Net value of each (conversation, contract): the building block of the accountants' views.
CREATE VIEW talkmeter.charge_totals AS
SELECT conversation_id,
       contract_id,
       (array_agg(client_id ORDER BY charge_id DESC))[1] AS client_id,
       (array_agg(day ORDER BY charge_id DESC))[1] AS day,
       sum(talk_ms) AS talk_ms,
       sum(hold_ms) AS hold_ms,
       sum(excluded_ms) AS excluded_ms,
       sum(free_ms) AS free_ms,
       sum(prepaid_ms) AS prepaid_ms,
       sum(paid_ms) AS paid_ms,
       sum(billable_seconds) AS billable_seconds,
       sum(amount) AS amount,
       (array_agg(currency ORDER BY charge_id DESC))[1] AS currency,
       (array_agg(over_quota ORDER BY charge_id DESC))[1] AS over_quota,
       (array_agg(short_call ORDER BY charge_id DESC))[1] AS short_call,
       (array_agg(tier_changes ORDER BY charge_id DESC))[1] AS tier_changes,
       count(*) AS postings
  FROM talkmeter.charges
 GROUP BY conversation_id, contract_id;

CREATE VIEW talkmeter.charge_day_totals AS
SELECT ch.client_id, ch.contract_id, d.day,
       sum(d.talk_ms) AS talk_ms,
       sum(d.free_ms) AS free_ms,
       sum(d.prepaid_ms) AS prepaid_ms,
       sum(d.paid_ms) AS paid_ms
  FROM talkmeter.charge_days d
  JOIN talkmeter.charges ch USING (charge_id)
 GROUP BY ch.client_id, ch.contract_id, d.day;

-- ===== The accountants' interface ==========================================================
-- Seconds are numeric with three decimals (milliseconds), billable_seconds whole seconds.

CREATE VIEW talkmeter.conversation_charges AS
SELECT t.conversation_id,
       t.client_id,
       cl.name AS client_name,
       t.contract_id,
       cv.client_number,
       cv.line,
       cv.started_at,
       cv.ended_at,
       (t.talk_ms / 1000.0)::numeric(14, 3) AS talk_seconds,
       (t.hold_ms / 1000.0)::numeric(14, 3) AS hold_seconds,
       (t.free_ms / 1000.0)::numeric(14, 3) AS free_seconds,
       (t.prepaid_ms / 1000.0)::numeric(14, 3) AS prepaid_seconds,
       (t.paid_ms / 1000.0)::numeric(14, 3) AS paid_seconds,
       t.billable_seconds,
       t.amount,
       t.currency,
       t.over_quota,
       cv.consultants,
       t.day,
       (t.excluded_ms / 1000.0)::numeric(14, 3) AS excluded_seconds,
       t.short_call,
       t.tier_changes
  FROM talkmeter.charge_totals t
  JOIN talkmeter.conversations cv USING (conversation_id)
  JOIN talkmeter.clients cl ON cl.client_id = t.client_id
 WHERE t.talk_ms <> 0;

-- Talk and allowances per client-local day as talked (a conversation across midnight counts
-- on both days); conversations, billable seconds and money on the day the conversation started.
CREATE VIEW talkmeter.daily_usage AS
WITH usage AS (
    SELECT u.client_id, u.day,
           sum(u.talk_ms) AS talk_ms,
           sum(u.free_ms) AS free_ms,
           sum(u.prepaid_ms) AS prepaid_ms,
           sum(k.free_daily_minutes::bigint * 60) FILTER (WHERE u.talk_ms <> 0) AS free_cap_seconds
      FROM talkmeter.charge_day_totals u
      JOIN talkmeter.contracts k USING (contract_id)
     GROUP BY u.client_id, u.day
), money AS (
    SELECT client_id, day,
           count(*) AS conversations,
           sum(billable_seconds) AS billable_seconds,
           sum(amount) AS amount
      FROM talkmeter.charge_totals
     WHERE talk_ms <> 0
     GROUP BY client_id, day
)
SELECT COALESCE(u.client_id, m.client_id) AS client_id,
       COALESCE(u.day, m.day) AS day,
       COALESCE(m.conversations, 0) AS conversations,
       (COALESCE(u.talk_ms, 0) / 1000.0)::numeric(14, 3) AS talk_seconds,
       (COALESCE(u.free_ms, 0) / 1000.0)::numeric(14, 3) AS free_seconds,
       (COALESCE(u.prepaid_ms, 0) / 1000.0)::numeric(14, 3) AS prepaid_seconds,
       COALESCE(m.billable_seconds, 0) AS billable_seconds,
       COALESCE(m.amount, 0.00)::numeric(14, 2) AS amount,
       u.free_cap_seconds
  FROM usage u
  FULL JOIN money m ON m.client_id = u.client_id AND m.day = u.day
 WHERE COALESCE(u.talk_ms, 0) <> 0 OR COALESCE(m.conversations, 0) <> 0;

CREATE VIEW talkmeter.monthly_statement AS
WITH months AS (
    SELECT client_id,
           date_trunc('month', day)::date AS month,
           sum(conversations) AS conversations,
           sum(talk_seconds) AS talk_seconds,
           sum(free_seconds) AS free_seconds,
           sum(prepaid_seconds) AS prepaid_seconds,
           sum(billable_seconds) AS billable_seconds,
           sum(amount) AS amount
      FROM talkmeter.daily_usage
     GROUP BY client_id, date_trunc('month', day)
)
SELECT m.client_id,
       m.month,
       m.conversations::bigint AS conversations,
       m.talk_seconds,
       m.free_seconds,
       m.prepaid_seconds,
       m.billable_seconds::bigint AS billable_seconds,
       m.amount,
       (SELECT sum(k.prepaid_minutes::bigint * 60
                   - COALESCE((SELECT sum(u.prepaid_ms) FROM talkmeter.charge_day_totals u
                                WHERE u.contract_id = k.contract_id
                                  AND u.day < (m.month + interval '1 month')::date), 0) / 1000.0)
          FROM talkmeter.contracts k
         WHERE k.client_id = m.client_id
           AND k.prepaid_minutes IS NOT NULL
           AND k.valid_from < (m.month + interval '1 month')::date
           AND (k.valid_to IS NULL OR k.valid_to >= m.month))::numeric(14, 3) AS prepaid_remaining_seconds,
       (SELECT string_agg(DISTINCT t.currency, ',') FROM talkmeter.charge_totals t
         WHERE t.client_id = m.client_id AND t.talk_ms <> 0
           AND t.day >= m.month AND t.day < (m.month + interval '1 month')::date) AS currency
  FROM months m;

-- The queue a person works through: talk that could not be billed to anyone yet.
CREATE VIEW talkmeter.unmatched_conversations AS
SELECT cv.conversation_id,
       cv.match_status AS reason,
       cv.pbx,
       cv.direction,
       cv.client_number,
       cv.client_number_raw,
       cv.line,
       cv.started_at,
       cv.ended_at,
       (cv.talk_ms / 1000.0)::numeric(14, 3) AS talk_seconds,
       (cv.hold_ms / 1000.0)::numeric(14, 3) AS hold_seconds,
       cv.consultants,
       cv.client_id,
       ARRAY(SELECT cn.client_id FROM talkmeter.client_numbers cn
              WHERE cn.number = cv.client_number ORDER BY cn.client_id) AS candidate_clients
  FROM talkmeter.conversations cv
 WHERE cv.match_status IN ('withheld', 'unknown', 'ambiguous', 'no_contract')
   AND cv.talk_ms > 0;

-- How fast clients got through, per line and local day (in settings.line_timezone): inbound
-- conversations only; wait = from the call's arrival to the first consultant's answer.
CREATE VIEW talkmeter.line_quality AS
SELECT cv.line,
       (cv.started_at AT TIME ZONE s.value)::date AS day,
       count(*) AS offered,
       count(*) FILTER (WHERE cv.answered_at IS NOT NULL) AS answered,
       count(*) FILTER (WHERE cv.answered_at IS NULL) AS abandoned,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY cv.wait_ms) / 1000.0)::numeric(14, 3) AS median_wait_seconds,
       (percentile_cont(0.9) WITHIN GROUP (ORDER BY cv.wait_ms) / 1000.0)::numeric(14, 3) AS p90_wait_seconds,
       (sum(cv.talk_ms) / 1000.0)::numeric(14, 3) AS talk_seconds
  FROM talkmeter.conversations cv
  CROSS JOIN talkmeter.settings s
 WHERE s.key = 'line_timezone'
   AND cv.direction = 'inbound'
 GROUP BY cv.line, (cv.started_at AT TIME ZONE s.value)::date;

-- ===== Roles (cluster-wide, so created only when missing) ==================================
DO $$
BEGIN
    CREATE ROLE talkmeter_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE talkmeter_accountant NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- The daemon records conversations and posts ledger rows; it never updates or deletes the
-- ledger (the trigger would refuse anyway) and does not edit reference data.
GRANT USAGE ON SCHEMA talkmeter TO talkmeter_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA talkmeter TO talkmeter_writer;
GRANT INSERT ON talkmeter.conversations, talkmeter.conversation_segments,
                talkmeter.charges, talkmeter.charge_days TO talkmeter_writer;
GRANT UPDATE (client_id, match_status) ON talkmeter.conversations TO talkmeter_writer;

-- Accountants read the views and nothing else (views read the tables with their owner's rights).
GRANT USAGE ON SCHEMA talkmeter TO talkmeter_accountant;
GRANT SELECT ON talkmeter.conversation_charges, talkmeter.daily_usage, talkmeter.monthly_statement,
                talkmeter.unmatched_conversations, talkmeter.line_quality TO talkmeter_accountant;
