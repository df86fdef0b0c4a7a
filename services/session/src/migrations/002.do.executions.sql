-- Executions: each message of a session (the first comes from InitiateSession, the rest
-- from SendMessage), queued FIFO per session by `seq`.
CREATE TABLE executions (
  id            text PRIMARY KEY CHECK (id ~ '^exec_[0-9a-f-]{36}$'),
  session_id    text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  seq           bigint GENERATED ALWAYS AS IDENTITY,
  prompt        text NOT NULL,
  mode          text NOT NULL,
  model         text NOT NULL,
  status        text NOT NULL CHECK (status IN ('queued', 'started', 'completed', 'failed', 'interrupted', 'expired')),
  error_message text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  started_at    timestamptz,
  finished_at   timestamptz
);

CREATE INDEX executions_session_seq_idx ON executions (session_id, seq);
-- At most one running execution per session, whatever the dispatchers do.
CREATE UNIQUE INDEX executions_one_running_idx ON executions (session_id) WHERE status = 'started';
