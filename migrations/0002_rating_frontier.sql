-- Recording a conversation re-rates only the conversations from the "frontier" on: the earliest
-- start among the client's conversations still talking at or after the new one's start (see
-- accounting/ledger.py). Finding it, and the usage of everything before it, needs these.
CREATE INDEX conversations_client_end ON talkmeter.conversations (client_id, ended_at);
CREATE INDEX charges_conversation ON talkmeter.charges (conversation_id);
