-- The ledger's rows reference their conversation, contract and client through their key, and are
-- found by conversation through their key's first row.
--
-- Every row of `charges` is appended by one statement (queries.sql `post`) together with its key's
-- row in `current_charges`, which carries the same three references (checked when the key is
-- created). Checking them again on every ledger row cost three index probes and three row locks
-- per row (about 0.03 ms each row on a 10M-conversation ledger): a third of what a whole-history
-- rerate spent in PostgreSQL, for a guarantee the key already gives. What the checks protected
-- stays protected: a conversation, contract or client that a ledger row names has a key that
-- references it, so it cannot be deleted (the ledger itself cannot be deleted at all: the
-- append-only triggers), and `talkmeter check-ledger` reports any ledger row whose key is
-- missing or disagrees with it. `charge_days` keeps its reference to its ledger row; its client,
-- the row's client, is not checked a second time either.
ALTER TABLE talkmeter.charges DROP CONSTRAINT charges_conversation_id_fkey;
ALTER TABLE talkmeter.charges DROP CONSTRAINT charges_contract_id_fkey;
ALTER TABLE talkmeter.charges DROP CONSTRAINT charges_client_id_fkey;
ALTER TABLE talkmeter.charge_days DROP CONSTRAINT charge_days_client_id_fkey;

-- Every ledger row also went into an index by conversation (0002), for the one query that looks a
-- conversation's keys up in the ledger (queries.sql `replace_conversation`); a key's first row is
-- its 'charge' row, which `charges_one_charge_per_key` already indexes by conversation. The index of
-- every row was the other third: a random leaf page per appended row.
DROP INDEX talkmeter.charges_conversation;
