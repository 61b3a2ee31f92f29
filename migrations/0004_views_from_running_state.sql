-- The accountants' views read the running state (0003) through indexes; re-rating follows what
-- changed; accountants can end and withdraw contracts. The views keep their names and columns
-- (new columns come after the old ones) so queries written against them keep running.

-- ===== Who a conversation belongs to, one conversation at a time ===========================
-- An assignment wins, then a number held by exactly one client. As a function of one
-- conversation, rating and rerate resolve just the conversations they look at.
CREATE FUNCTION talkmeter.resolve(conversation text, number text)
RETURNS TABLE (client_id text, status text)
LANGUAGE sql STABLE AS $$
SELECT CASE WHEN a.client_id IS NOT NULL THEN a.client_id
            WHEN n.candidates = 1 THEN n.only_client END,
       CASE WHEN a.client_id IS NOT NULL THEN 'assigned'
            WHEN number IS NULL THEN 'withheld'
            WHEN n.candidates = 0 THEN 'unknown'
            WHEN n.candidates > 1 THEN 'ambiguous'
            ELSE 'matched' END
  FROM (SELECT count(*) AS candidates, min(cn.client_id) AS only_client
          FROM talkmeter.client_numbers cn
         WHERE cn.number = resolve.number) n
  LEFT JOIN talkmeter.conversation_assignments a ON a.conversation_id = resolve.conversation
$$;

CREATE OR REPLACE VIEW talkmeter.conversation_resolution AS
SELECT c.conversation_id, r.client_id, r.status
  FROM talkmeter.conversations c
  CROSS JOIN LATERAL talkmeter.resolve(c.conversation_id, c.client_number) r;

-- Conversations by number and time (what a number change affects) and the unmatched queue (a
-- small part of the table).
DROP INDEX talkmeter.conversations_number;
CREATE INDEX conversations_number ON talkmeter.conversations (client_number, started_at);
CREATE INDEX conversations_unmatched ON talkmeter.conversations (started_at)
    WHERE match_status IN ('withheld', 'unknown', 'ambiguous', 'no_contract') AND talk_ms > 0;
CREATE INDEX conversation_assignments_client ON talkmeter.conversation_assignments (client_id);
-- The frontier reads (client_id, ended_at) and wants started_at: from the index alone.
DROP INDEX talkmeter.conversations_client_end;
CREATE INDEX conversations_client_end ON talkmeter.conversations (client_id, ended_at) INCLUDE (started_at);

-- ===== The day of a line ======================================================================
-- line_quality counts days in the partner's zone (settings.line_timezone). Each conversation
-- carries that day, so a day of line_quality is an index range whose size the planner knows (as
-- an expression of the setting it could only guess, and a guess of a tenth of the table made
-- every day's query pay for JIT compilation). Set on insert; a new line_timezone recomputes it
-- for every conversation (a rewrite of the table: rare, and slow on a big one).
ALTER TABLE talkmeter.conversations ADD COLUMN line_day date;
UPDATE talkmeter.conversations
   SET line_day = (started_at AT TIME ZONE (SELECT value FROM talkmeter.settings WHERE key = 'line_timezone'))::date;
CREATE INDEX conversations_line_day ON talkmeter.conversations (line_day, line);

CREATE FUNCTION talkmeter.set_line_day() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.line_day := (NEW.started_at AT TIME ZONE
                     (SELECT value FROM talkmeter.settings WHERE key = 'line_timezone'))::date;
    RETURN NEW;
END
$$;
CREATE TRIGGER conversations_line_day BEFORE INSERT ON talkmeter.conversations
    FOR EACH ROW EXECUTE FUNCTION talkmeter.set_line_day();

CREATE FUNCTION talkmeter.line_zone_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key = 'line_timezone' THEN
        UPDATE talkmeter.conversations SET line_day = (started_at AT TIME ZONE NEW.value)::date;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER settings_line_zone AFTER INSERT OR UPDATE ON talkmeter.settings
    FOR EACH ROW EXECUTE FUNCTION talkmeter.line_zone_changed();

-- ===== Usage per month ========================================================================
-- One row per contract and month (its first day) with usage_days rows: their sums (see 0003's
-- usage_days for what the columns hold). The monthly statement reads a month's rows, and the
-- prepaid left at a month's end is the contract's total less the months after it: a few rows,
-- not the contract's days. Written with usage_days.
CREATE TABLE talkmeter.usage_months (
    client_id text NOT NULL REFERENCES talkmeter.clients,
    contract_id text NOT NULL REFERENCES talkmeter.contracts,
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    talk_ms bigint NOT NULL DEFAULT 0,
    free_ms bigint NOT NULL DEFAULT 0,
    prepaid_ms bigint NOT NULL DEFAULT 0,
    paid_ms bigint NOT NULL DEFAULT 0,
    conversations bigint NOT NULL DEFAULT 0,
    billable_seconds bigint NOT NULL DEFAULT 0,
    amount numeric(14, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, contract_id, month)
) WITH (fillfactor = 70);
CREATE INDEX usage_months_month ON talkmeter.usage_months (month, client_id);
INSERT INTO talkmeter.usage_months (
    client_id, contract_id, month, talk_ms, free_ms, prepaid_ms, paid_ms, conversations,
    billable_seconds, amount)
SELECT client_id, contract_id, month, sum(talk_ms), sum(free_ms), sum(prepaid_ms), sum(paid_ms),
       sum(conversations), sum(billable_seconds), sum(amount)
  FROM talkmeter.usage_days
 GROUP BY client_id, contract_id, month;

-- ===== The rating frontier ===================================================================
-- The earliest moment from which re-rating a client is exact: `moment` pulled back to the start
-- of any of its conversations still talking then (ended at or after it), repeatedly while they
-- overlap. Each step reads the (client_id, ended_at) index from the moment on (the inner query
-- keeps the planner there: min() straight over the table would walk (client_id, started_at)
-- from the client's oldest conversation). A loop rather than a recursive query, so that each
-- step is planned for its actual moment: planned for an unknown one, the estimate is a third of
-- the client's conversations, and a big client's estimate then crosses jit_above_cost.
CREATE FUNCTION talkmeter.frontier(client text, moment timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    earliest timestamptz;
BEGIN
    LOOP
        SELECT min(still.started_at) INTO earliest
          FROM (SELECT c.started_at FROM talkmeter.conversations c
                 WHERE c.client_id = client AND c.ended_at >= moment OFFSET 0) still;
        IF earliest IS NULL OR earliest >= moment THEN
            RETURN moment;
        END IF;
        moment := earliest;
    END LOOP;
END
$$;

-- ===== What re-rating still has to do ======================================================
-- One row per client whose ledger may no longer equal the rating of its conversations, from
-- `since` on: written by the triggers below whenever reference data changes (a contract, a
-- client's time zone, a number, an assignment), whoever changes it and however; read and cleared
-- by `talkmeter rerate`, which re-rates each client from there on only. `reattribute` says that
-- numbers or assignments changed, so the client's conversations from `since` must be resolved
-- again too. `revision` grows with every change, so a rerate never clears a change that arrived
-- while it ran.
CREATE TABLE talkmeter.pending_rerates (
    client_id text PRIMARY KEY REFERENCES talkmeter.clients ON DELETE CASCADE,
    since timestamptz NOT NULL,
    reattribute boolean NOT NULL,
    revision bigint NOT NULL DEFAULT 1,
    queued_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION talkmeter.queue_rerate(client text, from_moment timestamptz, resolve_again boolean)
RETURNS void
LANGUAGE sql AS $$
INSERT INTO talkmeter.pending_rerates AS p (client_id, since, reattribute)
VALUES (client, from_moment, resolve_again)
ON CONFLICT (client_id) DO UPDATE
   SET since = LEAST(p.since, EXCLUDED.since), reattribute = p.reattribute OR EXCLUDED.reattribute,
       revision = p.revision + 1, queued_at = now()
$$;

-- The first moment of a client-local day.
CREATE FUNCTION talkmeter.local_midnight(client text, day date) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
SELECT day::timestamp AT TIME ZONE (SELECT timezone FROM talkmeter.clients WHERE client_id = client)
$$;

-- A contract's rules change what its conversations cost from its start; a new end date changes
-- the days between the old and the new end; a new contract may take conversations from its start.
-- (A contract with ledger rows cannot be deleted, and one without changes no rating.)
CREATE FUNCTION talkmeter.contract_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM talkmeter.queue_rerate(NEW.client_id, talkmeter.local_midnight(NEW.client_id, NEW.valid_from),
                                       false);
    ELSIF (OLD.client_id, OLD.valid_from, OLD.free_daily_minutes, OLD.free_days_per_week, OLD.prepaid_minutes,
           OLD.rate_per_minute, OLD.currency, OLD.billing_increment_seconds, OLD.minimum_billable_seconds,
           OLD.short_call_seconds, OLD.overage, OLD.hold_billable, OLD.lines)
          IS DISTINCT FROM
          (NEW.client_id, NEW.valid_from, NEW.free_daily_minutes, NEW.free_days_per_week, NEW.prepaid_minutes,
           NEW.rate_per_minute, NEW.currency, NEW.billing_increment_seconds, NEW.minimum_billable_seconds,
           NEW.short_call_seconds, NEW.overage, NEW.hold_billable, NEW.lines) THEN
        PERFORM talkmeter.queue_rerate(OLD.client_id, talkmeter.local_midnight(OLD.client_id,
                                                                               LEAST(OLD.valid_from, NEW.valid_from)),
                                       false);
        PERFORM talkmeter.queue_rerate(NEW.client_id, talkmeter.local_midnight(NEW.client_id,
                                                                               LEAST(OLD.valid_from, NEW.valid_from)),
                                       false);
    ELSIF OLD.valid_to IS DISTINCT FROM NEW.valid_to THEN
        PERFORM talkmeter.queue_rerate(
            NEW.client_id,
            talkmeter.local_midnight(NEW.client_id, LEAST(COALESCE(OLD.valid_to, 'infinity'),
                                                          COALESCE(NEW.valid_to, 'infinity')) + 1),
            false);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER contracts_rerate AFTER INSERT OR UPDATE ON talkmeter.contracts
    FOR EACH ROW EXECUTE FUNCTION talkmeter.contract_changed();

-- Days are counted in the client's zone: a new zone re-rates the client's whole history.
CREATE FUNCTION talkmeter.client_zone_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.timezone IS DISTINCT FROM NEW.timezone THEN
        PERFORM talkmeter.queue_rerate(NEW.client_id, '-infinity', false);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER clients_rerate AFTER UPDATE ON talkmeter.clients
    FOR EACH ROW EXECUTE FUNCTION talkmeter.client_zone_changed();

-- A number that changes hands moves its conversations: the clients that have them now and the
-- clients that hold the number now re-rate from its first conversation; conversations that stay
-- unattributable get their new reason (unknown / ambiguous) at once.
CREATE FUNCTION talkmeter.number_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed text := CASE WHEN TG_OP = 'DELETE' THEN OLD.number ELSE NEW.number END;
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
    RETURN NULL;
END
$$;
CREATE TRIGGER client_numbers_rerate AFTER INSERT OR UPDATE OR DELETE ON talkmeter.client_numbers
    FOR EACH ROW EXECUTE FUNCTION talkmeter.number_changed();

-- An assignment moves one conversation: its client now and its client to be re-rate from its start.
CREATE FUNCTION talkmeter.assignment_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed text := CASE WHEN TG_OP = 'DELETE' THEN OLD.conversation_id ELSE NEW.conversation_id END;
BEGIN
    PERFORM talkmeter.queue_rerate(affected.client_id, affected.started_at, true)
       FROM (SELECT c.client_id, c.started_at FROM talkmeter.conversations c
              WHERE c.conversation_id = changed AND c.client_id IS NOT NULL
             UNION ALL
             SELECT r.client_id, c.started_at FROM talkmeter.conversations c
              CROSS JOIN LATERAL talkmeter.resolve(c.conversation_id, c.client_number) r
              WHERE c.conversation_id = changed AND r.client_id IS NOT NULL) affected;
    UPDATE talkmeter.conversations c
       SET match_status = r.status
      FROM talkmeter.resolve(changed, (SELECT client_number FROM talkmeter.conversations
                                        WHERE conversation_id = changed)) r
     WHERE c.conversation_id = changed AND c.client_id IS NULL AND r.client_id IS NULL
       AND c.match_status IS DISTINCT FROM r.status;
    RETURN NULL;
END
$$;
CREATE TRIGGER conversation_assignments_rerate AFTER INSERT OR UPDATE OR DELETE
    ON talkmeter.conversation_assignments
    FOR EACH ROW EXECUTE FUNCTION talkmeter.assignment_changed();

-- ===== Contracts ended or withdrawn by an accountant ========================================
-- The only way the accountant role changes reference data: these run with the schema owner's
-- rights and check what they are asked. Both return the contract's client.
CREATE FUNCTION talkmeter.end_contract(contract text, last_day date) RETURNS text
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
    UPDATE talkmeter.contracts SET valid_to = last_day, updated_at = now() WHERE contract_id = contract;
    RETURN existing.client_id;
END
$$;

CREATE FUNCTION talkmeter.withdraw_contract(contract text) RETURNS text
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
    DELETE FROM talkmeter.contracts WHERE contract_id = contract;
    RETURN existing.client_id;
END
$$;
REVOKE ALL ON FUNCTION talkmeter.end_contract(text, date), talkmeter.withdraw_contract(text) FROM PUBLIC;

-- ===== The views ===========================================================================
DROP VIEW talkmeter.monthly_statement;
DROP VIEW talkmeter.daily_usage;
DROP VIEW talkmeter.conversation_charges;
DROP VIEW talkmeter.charge_day_totals;
DROP VIEW talkmeter.charge_totals;
DROP VIEW talkmeter.line_quality;

-- The ledger's own sums, row by row (what current_charges and usage_days must equal; slow over
-- the whole ledger, quick for one client).
CREATE VIEW talkmeter.charge_totals AS
SELECT conversation_id,
       contract_id,
       client_id,
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
 GROUP BY client_id, conversation_id, contract_id;

CREATE VIEW talkmeter.charge_day_totals AS
SELECT d.client_id, ch.contract_id, d.day,
       sum(d.talk_ms) AS talk_ms,
       sum(d.free_ms) AS free_ms,
       sum(d.prepaid_ms) AS prepaid_ms,
       sum(d.paid_ms) AS paid_ms
  FROM talkmeter.charge_days d
  JOIN talkmeter.charges ch USING (charge_id)
 GROUP BY d.client_id, ch.contract_id, d.day;

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
       t.amount::numeric AS amount,
       t.currency,
       t.over_quota,
       cv.consultants,
       t.day,
       (t.excluded_ms / 1000.0)::numeric(14, 3) AS excluded_seconds,
       t.short_call,
       t.tier_changes
  FROM talkmeter.current_charges t
  JOIN talkmeter.conversations cv USING (conversation_id)
  JOIN talkmeter.clients cl ON cl.client_id = t.client_id
 WHERE t.talk_ms <> 0;

-- Talk and allowances per client-local day as talked (a conversation across midnight counts
-- on both days); conversations, billable seconds and money on the day the conversation started.
CREATE VIEW talkmeter.daily_usage AS
SELECT u.client_id,
       u.day,
       sum(u.conversations)::bigint AS conversations,
       (sum(u.talk_ms) / 1000.0)::numeric(14, 3) AS talk_seconds,
       (sum(u.free_ms) / 1000.0)::numeric(14, 3) AS free_seconds,
       (sum(u.prepaid_ms) / 1000.0)::numeric(14, 3) AS prepaid_seconds,
       sum(u.billable_seconds) AS billable_seconds,
       sum(u.amount)::numeric(14, 2) AS amount,
       sum(k.free_daily_minutes::bigint * 60) FILTER (WHERE u.talk_ms <> 0) AS free_cap_seconds
  FROM talkmeter.usage_days u
  JOIN talkmeter.contracts k USING (contract_id)
 GROUP BY u.client_id, u.day
HAVING sum(u.talk_ms) <> 0 OR sum(u.conversations) <> 0;

-- Per client and month: the invoice. prepaid_remaining_seconds is what is left at the end of the
-- month on the prepaid contracts valid in it; contracts are those with usage in the month.
CREATE VIEW talkmeter.monthly_statement AS
SELECT m.client_id,
       m.month,
       m.conversations,
       m.talk_seconds,
       m.free_seconds,
       m.prepaid_seconds,
       m.billable_seconds,
       m.amount,
       p.remaining::numeric(14, 3) AS prepaid_remaining_seconds,
       m.currency,
       cl.name AS client_name,
       m.contracts
  FROM (SELECT u.client_id,
               u.month,
               sum(u.conversations)::bigint AS conversations,
               (sum(u.talk_ms) / 1000.0)::numeric(14, 3) AS talk_seconds,
               (sum(u.free_ms) / 1000.0)::numeric(14, 3) AS free_seconds,
               (sum(u.prepaid_ms) / 1000.0)::numeric(14, 3) AS prepaid_seconds,
               sum(u.billable_seconds)::bigint AS billable_seconds,
               sum(u.amount) AS amount,
               string_agg(DISTINCT k.currency, ',') FILTER (WHERE u.conversations <> 0) AS currency,
               string_agg(DISTINCT u.contract_id, ',') AS contracts
          FROM talkmeter.usage_months u
          JOIN talkmeter.contracts k USING (contract_id)
         GROUP BY u.client_id, u.month
        HAVING sum(u.talk_ms) <> 0 OR sum(u.conversations) <> 0) m
  JOIN talkmeter.clients cl USING (client_id)
  LEFT JOIN LATERAL (
        -- Used by the end of the month: the contract's total less what the months after it used.
        SELECT sum(k.prepaid_minutes::bigint * 60
                   - (COALESCE(t.prepaid_ms, 0)
                      - COALESCE((SELECT sum(a.prepaid_ms) FROM talkmeter.usage_months a
                                   WHERE a.client_id = k.client_id AND a.contract_id = k.contract_id
                                     AND a.month > m.month), 0)) / 1000.0) AS remaining
          FROM talkmeter.contracts k
          LEFT JOIN talkmeter.usage_totals t ON t.client_id = k.client_id AND t.contract_id = k.contract_id
         WHERE k.client_id = m.client_id
           AND k.prepaid_minutes IS NOT NULL
           AND k.valid_from < (m.month + interval '1 month')::date
           AND (k.valid_to IS NULL OR k.valid_to >= m.month)) p ON true;

-- How fast clients got through, per line and local day (in settings.line_timezone: each
-- conversation's line_day): inbound conversations only; wait = from the call's arrival to the
-- first consultant's answer.
CREATE VIEW talkmeter.line_quality AS
SELECT cv.line,
       cv.line_day AS day,
       count(*) AS offered,
       count(*) FILTER (WHERE cv.answered_at IS NOT NULL) AS answered,
       count(*) FILTER (WHERE cv.answered_at IS NULL) AS abandoned,
       (percentile_cont(0.5) WITHIN GROUP (ORDER BY cv.wait_ms) / 1000.0)::numeric(14, 3) AS median_wait_seconds,
       (percentile_cont(0.9) WITHIN GROUP (ORDER BY cv.wait_ms) / 1000.0)::numeric(14, 3) AS p90_wait_seconds,
       (sum(cv.talk_ms) / 1000.0)::numeric(14, 3) AS talk_seconds
  FROM talkmeter.conversations cv
 WHERE cv.direction = 'inbound'
   AND cv.line_day IS NOT NULL
 GROUP BY cv.line, cv.line_day;

-- Per contract and ISO week (Monday): the week's days with free time (the slots of
-- free_days_per_week taken) and the week's usage.
CREATE VIEW talkmeter.weekly_usage AS
SELECT w.client_id,
       w.contract_id,
       w.week,
       w.free_days AS free_days_used,
       k.free_days_per_week,
       GREATEST(k.free_days_per_week - w.free_days, 0) AS free_days_left,
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
CREATE INDEX usage_weeks_week ON talkmeter.usage_weeks (week);

-- Clients, their numbers and their contracts' terms, for accountants (who read no table).
CREATE VIEW talkmeter.client_contracts AS
SELECT cl.client_id,
       cl.name AS client_name,
       cl.timezone,
       ARRAY(SELECT n.number FROM talkmeter.client_numbers n
              WHERE n.client_id = cl.client_id ORDER BY n.number) AS numbers,
       k.contract_id,
       k.valid_from,
       k.valid_to,
       k.free_daily_minutes,
       k.free_days_per_week,
       k.prepaid_minutes,
       k.rate_per_minute,
       k.currency,
       k.billing_increment_seconds,
       k.minimum_billable_seconds,
       k.short_call_seconds,
       k.overage,
       k.hold_billable,
       k.lines,
       k.alert_thresholds
  FROM talkmeter.clients cl
  LEFT JOIN talkmeter.contracts k USING (client_id);

-- ===== Grants ==============================================================================
GRANT SELECT, INSERT, UPDATE ON talkmeter.usage_months TO talkmeter_writer;
GRANT SELECT ON talkmeter.charge_totals, talkmeter.charge_day_totals, talkmeter.conversation_charges,
                talkmeter.daily_usage, talkmeter.monthly_statement, talkmeter.line_quality,
                talkmeter.weekly_usage, talkmeter.client_contracts
   TO talkmeter_writer;

-- Accountants read the views; `talkmeter` checks the schema version first.
GRANT SELECT ON talkmeter.conversation_charges, talkmeter.daily_usage, talkmeter.monthly_statement,
                talkmeter.line_quality, talkmeter.weekly_usage, talkmeter.client_contracts,
                talkmeter.schema_migrations
   TO talkmeter_accountant;
-- They end and withdraw contracts through the two functions above, and re-rate (which reads
-- conversations and reference data and appends ledger rows talkmeter computes); they still may
-- not change the ledger's rows, conversations' facts, clients, numbers or contract terms.
GRANT EXECUTE ON FUNCTION talkmeter.end_contract(text, date), talkmeter.withdraw_contract(text)
   TO talkmeter_accountant;
GRANT SELECT ON talkmeter.settings, talkmeter.clients, talkmeter.client_numbers, talkmeter.contracts,
                talkmeter.conversations, talkmeter.conversation_segments,
                talkmeter.conversation_assignments, talkmeter.conversation_resolution,
                talkmeter.charges, talkmeter.charge_days, talkmeter.charge_totals,
                talkmeter.charge_day_totals, talkmeter.current_charges, talkmeter.usage_days,
                talkmeter.usage_weeks, talkmeter.usage_totals, talkmeter.pending_rerates
   TO talkmeter_accountant;
GRANT INSERT ON talkmeter.charges, talkmeter.charge_days TO talkmeter_accountant;
GRANT SELECT, INSERT, UPDATE ON talkmeter.usage_months TO talkmeter_accountant;
GRANT INSERT, UPDATE ON talkmeter.current_charges, talkmeter.usage_days, talkmeter.usage_weeks,
                        talkmeter.usage_totals TO talkmeter_accountant;
GRANT INSERT, UPDATE, DELETE ON talkmeter.pending_rerates TO talkmeter_accountant;
GRANT UPDATE (client_id, match_status) ON talkmeter.conversations TO talkmeter_accountant;
