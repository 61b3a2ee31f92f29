-- Alerts with a standby (two talkmeter instances following one PBX, with the same `pbx` name):
-- the instance that claims a notification delivers it, and goes on with its pending deliveries
-- after a restart; the other instance must not pick them up (the receivers would get them twice).
-- And each instance's heartbeat of the live board may only drop the rows it wrote last.
-- NULL: claimed or written before instances were named (any instance of the PBX takes those).

ALTER TABLE talkmeter.notifications ADD COLUMN instance text;
ALTER TABLE talkmeter.live_conversations ADD COLUMN instance text;
