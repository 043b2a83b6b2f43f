-- What the alert evaluator reads and keeps (src/alerts.rs). (Its dead-letter count goes through the index on failed_at that
-- retention already keeps, migrations/0007_retention.sql.)

-- How far each partition reaches: the broker's end of the partition as the bridge consuming it knows it (high
-- watermark, or one past the last message read), recorded every few seconds. With next_offset it gives the lag,
-- for the bridge_behind alert; NULL until a bridge has recorded it.
ALTER TABLE herald_bridge_offsets ADD COLUMN end_offset bigint;

-- When a notification of an alert last went out (FIRING, a reminder, RESOLVED): a firing alert is announced again
-- every `alerts.remind_every_secs` while it lasts.
ALTER TABLE herald_alerts ADD COLUMN sent_at timestamptz;
