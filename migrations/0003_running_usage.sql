-- The ledger's running state: what the ledger sums to, kept current in the same transaction as
-- every ledger row, so that recording a conversation and reading a view never sum the ledger.
--
-- The ledger (charges, charge_days) stays the source of truth and append-only. Every table below
-- is derived from it, row for row, by accounting/usage.py (a pure diff, like the ledger rows of
-- accounting/postings.py) and written by accounting/store.py under the client's rating lock
-- (pg_advisory_xact_lock, see queries.sql `lock_client`), in the transaction that appends the
-- ledger rows it follows from. `talkmeter check-ledger` proves each of them equal to the sums of
-- the ledger. Every table carries client_id as the first key column and every write and every
-- rating query names one client, so they can be distributed by client (Citus) next to the ledger.
--
-- Days are client-local dates (the client's timezone at rating time); weeks are ISO weeks named by
-- their Monday. Milliseconds are exact integers; amounts have two decimals.

-- One row per ledger key (client, conversation, contract): the key's current value, i.e. the sum
-- of its ledger rows (additive columns) and the non-additive columns of its latest row. Written
-- with every ledger row of the key (insert on its 'charge' row, update on each 'adjustment').
-- A key reversed to zero keeps its row with zeros (the views skip talk_ms = 0, as before).
CREATE TABLE talkmeter.current_charges (
    client_id text NOT NULL REFERENCES talkmeter.clients,
    conversation_id text NOT NULL REFERENCES talkmeter.conversations,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    -- The conversation's start (a fact, never changed): rating reads the keys from a moment on.
    started_at timestamptz NOT NULL,
    -- The client-local date the conversation started: money and the conversation count belong to it.
    day date NOT NULL,
    talk_ms bigint NOT NULL,
    hold_ms bigint NOT NULL,
    excluded_ms bigint NOT NULL,
    free_ms bigint NOT NULL,
    prepaid_ms bigint NOT NULL,
    paid_ms bigint NOT NULL,
    billable_seconds bigint NOT NULL,
    amount numeric(14, 2) NOT NULL,
    currency char(3),
    over_quota boolean NOT NULL,
    short_call boolean NOT NULL,
    tier_changes jsonb NOT NULL,
    -- The key's milliseconds per client-local day as talked, days with any non-zero value only:
    -- {"2026-11-24": [talk_ms, free_ms, prepaid_ms, paid_ms], ...}
    days jsonb NOT NULL,
    postings integer NOT NULL CHECK (postings > 0),
    last_charge_id bigint NOT NULL,
    PRIMARY KEY (client_id, conversation_id, contract_id)
) WITH (fillfactor = 90);
CREATE INDEX current_charges_started ON talkmeter.current_charges (client_id, started_at);
CREATE INDEX current_charges_client_day ON talkmeter.current_charges (client_id, day);
CREATE INDEX current_charges_day ON talkmeter.current_charges (day);

-- One row per contract and client-local day on which the contract has ledger rows. Two halves:
--  * as talked on this day (a conversation across midnight counts on both days): talk, free,
--    prepaid and paid milliseconds: the sums of charge_days for the contract and day;
--  * by the day conversations started: conversations (keys with talk_ms <> 0), billable seconds
--    and amount: the sums of current_charges with this day.
-- Rating reads free_ms per day (the daily cap) and prepaid_ms (the package); a quota view reads
-- today's row. Written with every ledger row that touches the day (upsert adding differences).
CREATE TABLE talkmeter.usage_days (
    client_id text NOT NULL REFERENCES talkmeter.clients,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    day date NOT NULL,
    month date NOT NULL GENERATED ALWAYS AS (date_trunc('month', day::timestamp)::date) STORED,
    talk_ms bigint NOT NULL DEFAULT 0,
    free_ms bigint NOT NULL DEFAULT 0,
    prepaid_ms bigint NOT NULL DEFAULT 0,
    paid_ms bigint NOT NULL DEFAULT 0,
    conversations bigint NOT NULL DEFAULT 0,
    billable_seconds bigint NOT NULL DEFAULT 0,
    amount numeric(14, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, contract_id, day)
) WITH (fillfactor = 70);
CREATE INDEX usage_days_day ON talkmeter.usage_days (day);
CREATE INDEX usage_days_month ON talkmeter.usage_days (month, client_id);

-- One row per contract and ISO week (named by its Monday) with usage_days rows: free_days is the
-- number of local days of the week whose free_ms > 0, i.e. the week's slots of
-- free_days_per_week already taken; free_ms their sum. Written with usage_days.
CREATE TABLE talkmeter.usage_weeks (
    client_id text NOT NULL REFERENCES talkmeter.clients,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    week date NOT NULL CHECK (extract(isodow FROM week) = 1),
    free_days integer NOT NULL DEFAULT 0,
    free_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, contract_id, week)
) WITH (fillfactor = 70);

-- One row per contract with ledger rows: the sums of its usage_days over the contract's whole life
-- (prepaid_ms is the package used so far). Written with usage_days.
CREATE TABLE talkmeter.usage_totals (
    client_id text NOT NULL REFERENCES talkmeter.clients,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    talk_ms bigint NOT NULL DEFAULT 0,
    free_ms bigint NOT NULL DEFAULT 0,
    prepaid_ms bigint NOT NULL DEFAULT 0,
    paid_ms bigint NOT NULL DEFAULT 0,
    conversations bigint NOT NULL DEFAULT 0,
    billable_seconds bigint NOT NULL DEFAULT 0,
    amount numeric(14, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, contract_id)
) WITH (fillfactor = 70);

-- The ledger's per-day rows carry their client too (every ledger table is distributable by client).
-- Filling the new column is the one change ever made to existing ledger rows; the append-only
-- trigger is off for exactly this statement.
ALTER TABLE talkmeter.charge_days ADD COLUMN client_id text REFERENCES talkmeter.clients;
ALTER TABLE talkmeter.charge_days DISABLE TRIGGER charge_days_append_only;
UPDATE talkmeter.charge_days d SET client_id = ch.client_id
  FROM talkmeter.charges ch
 WHERE ch.charge_id = d.charge_id;
ALTER TABLE talkmeter.charge_days ENABLE TRIGGER charge_days_append_only;
ALTER TABLE talkmeter.charge_days ALTER COLUMN client_id SET NOT NULL;

-- ===== The running state of an existing ledger =============================================

INSERT INTO talkmeter.current_charges (
    client_id, conversation_id, contract_id, started_at, day, talk_ms, hold_ms, excluded_ms, free_ms,
    prepaid_ms, paid_ms, billable_seconds, amount, currency, over_quota, short_call, tier_changes,
    days, postings, last_charge_id)
SELECT k.client_id, k.conversation_id, k.contract_id, cv.started_at, k.day, k.talk_ms, k.hold_ms,
       k.excluded_ms, k.free_ms, k.prepaid_ms, k.paid_ms, k.billable_seconds, k.amount, k.currency,
       k.over_quota, k.short_call, k.tier_changes, COALESCE(d.days, '{}'::jsonb), k.postings,
       k.last_charge_id
  FROM (SELECT conversation_id, contract_id,
               (array_agg(client_id ORDER BY charge_id DESC))[1] AS client_id,
               (array_agg(day ORDER BY charge_id DESC))[1] AS day,
               sum(talk_ms) AS talk_ms, sum(hold_ms) AS hold_ms, sum(excluded_ms) AS excluded_ms,
               sum(free_ms) AS free_ms, sum(prepaid_ms) AS prepaid_ms, sum(paid_ms) AS paid_ms,
               sum(billable_seconds) AS billable_seconds, sum(amount) AS amount,
               (array_agg(currency ORDER BY charge_id DESC))[1] AS currency,
               (array_agg(over_quota ORDER BY charge_id DESC))[1] AS over_quota,
               (array_agg(short_call ORDER BY charge_id DESC))[1] AS short_call,
               (array_agg(tier_changes ORDER BY charge_id DESC))[1] AS tier_changes,
               count(*) AS postings, max(charge_id) AS last_charge_id
          FROM talkmeter.charges
         GROUP BY conversation_id, contract_id) k
  JOIN talkmeter.conversations cv USING (conversation_id)
  LEFT JOIN (SELECT conversation_id, contract_id,
                    jsonb_object_agg(day::text, jsonb_build_array(talk_ms, free_ms, prepaid_ms, paid_ms)
                                     ORDER BY day) AS days
               FROM (SELECT ch.conversation_id, ch.contract_id, cd.day,
                            sum(cd.talk_ms) AS talk_ms, sum(cd.free_ms) AS free_ms,
                            sum(cd.prepaid_ms) AS prepaid_ms, sum(cd.paid_ms) AS paid_ms
                       FROM talkmeter.charge_days cd
                       JOIN talkmeter.charges ch USING (charge_id)
                      GROUP BY ch.conversation_id, ch.contract_id, cd.day) per_day
              WHERE talk_ms <> 0 OR free_ms <> 0 OR prepaid_ms <> 0 OR paid_ms <> 0
              GROUP BY conversation_id, contract_id) d USING (conversation_id, contract_id);

INSERT INTO talkmeter.usage_days (
    client_id, contract_id, day, talk_ms, free_ms, prepaid_ms, paid_ms, conversations,
    billable_seconds, amount)
SELECT client_id, contract_id, day, sum(talk_ms), sum(free_ms), sum(prepaid_ms), sum(paid_ms),
       sum(conversations), sum(billable_seconds), sum(amount)
  FROM (SELECT cd.client_id, ch.contract_id, cd.day, cd.talk_ms, cd.free_ms, cd.prepaid_ms, cd.paid_ms,
               0 AS conversations, 0 AS billable_seconds, 0 AS amount
          FROM talkmeter.charge_days cd
          JOIN talkmeter.charges ch USING (charge_id)
        UNION ALL
        SELECT client_id, contract_id, day, 0, 0, 0, 0, (talk_ms <> 0)::int, billable_seconds, amount
          FROM talkmeter.current_charges) parts
 GROUP BY client_id, contract_id, day;

INSERT INTO talkmeter.usage_weeks (client_id, contract_id, week, free_days, free_ms)
SELECT client_id, contract_id, day - (extract(isodow FROM day)::int - 1),
       count(*) FILTER (WHERE free_ms > 0), sum(free_ms)
  FROM talkmeter.usage_days
 GROUP BY client_id, contract_id, day - (extract(isodow FROM day)::int - 1);

INSERT INTO talkmeter.usage_totals (
    client_id, contract_id, talk_ms, free_ms, prepaid_ms, paid_ms, conversations, billable_seconds, amount)
SELECT client_id, contract_id, sum(talk_ms), sum(free_ms), sum(prepaid_ms), sum(paid_ms),
       sum(conversations), sum(billable_seconds), sum(amount)
  FROM talkmeter.usage_days
 GROUP BY client_id, contract_id;

-- ===== Grants ==============================================================================
-- The daemon keeps the running state together with the ledger rows it appends.
GRANT SELECT, INSERT, UPDATE ON talkmeter.current_charges, talkmeter.usage_days, talkmeter.usage_weeks,
                                talkmeter.usage_totals TO talkmeter_writer;
