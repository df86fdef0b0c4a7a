-- Queue and lifecycle: heartbeats and exit codes of executions, indexes for the
-- dispatcher and the reaper, and the outbox of completion callbacks (delivered by a
-- worker, so a restart loses none).
ALTER TABLE executions
  ADD COLUMN last_heartbeat_at timestamptz,
  ADD COLUMN exit_code integer;

CREATE INDEX executions_queued_idx ON executions (session_id, seq) WHERE status = 'queued';
CREATE INDEX executions_started_idx ON executions (started_at) WHERE status = 'started';

CREATE TABLE callback_deliveries (
  execution_id    text PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
  session_id      text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  payload         jsonb NOT NULL,
  status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX callback_deliveries_pending_idx ON callback_deliveries (created_at) WHERE status = 'pending';
