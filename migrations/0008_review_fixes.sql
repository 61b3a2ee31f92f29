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
