-- Completion callbacks retried over hours: each delivery carries the time of its next
-- attempt (the outbox makes one attempt per claim and schedules the next) and the HTTP
-- status of the last answer. 'failed' deliveries are kept: listed and redeliverable.
ALTER TABLE callback_deliveries
  ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
  ADD COLUMN last_http_status integer;

DROP INDEX callback_deliveries_pending_idx;
CREATE INDEX callback_deliveries_due_idx ON callback_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX callback_deliveries_session_idx ON callback_deliveries (session_id, created_at DESC);
