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
