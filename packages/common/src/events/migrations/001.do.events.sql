-- The event log on Postgres (schema `events`). Every name is schema-qualified: on embedded
-- PGlite all connections share one backend session, so the search_path another migration
-- sets at the same moment must not decide where these tables land.

CREATE TABLE events.events (
  -- The event id: strictly increasing, and (see events.publish) committed in id order.
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  session_id text NOT NULL,
  execution_id text NOT NULL,
  type text NOT NULL,
  -- kilocode.cloudagent.v1.Event in protobuf binary, with id 0 (the row's id is the id).
  payload bytea NOT NULL,
  -- The idempotency key (<executionId>:<n>): a repeated publish returns the stored event.
  msg_id text NOT NULL UNIQUE,
  -- Payload bytes of every event up to and including this one: retention by size finds
  -- its cut with an index scan instead of summing the table.
  total_bytes bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX events_session_id_id ON events.events (session_id, id);

-- Everything below first_id has been pruned: a reader asking for older ids gets
-- OUT_OF_RANGE instead of a silent gap. One row.
CREATE TABLE events.retention (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  first_id bigint NOT NULL
);
INSERT INTO events.retention (first_id) VALUES (1);

-- Durable consumers: the last id handled, and a lease so that one instance of a name
-- delivers at a time (several replicas may share a name).
CREATE TABLE events.consumers (
  name text PRIMARY KEY,
  last_id bigint NOT NULL DEFAULT 0,
  owner text,
  lease_until timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a consumer's handler failed on, delivered again from next_at on (the cursor has
-- moved past them, so one failing event does not hold up the others).
CREATE TABLE events.consumer_retries (
  consumer text NOT NULL REFERENCES events.consumers (name) ON DELETE CASCADE,
  event_id bigint NOT NULL,
  attempts integer NOT NULL,
  next_at timestamptz NOT NULL,
  last_error text,
  PRIMARY KEY (consumer, event_id)
);

-- Appends one event, or returns the stored one for a repeated msg_id.
--
-- Publishers are serialised by a transaction-level advisory lock taken before the id is
-- drawn and held until commit: ids are therefore committed in increasing order, and a
-- reader that has seen id N (or found the newest committed id to be N) never later finds
-- a smaller id appearing. Without it, an identity value drawn by a slow transaction could
-- commit after a larger one that a reader has already passed, and that reader would skip
-- it forever. As a function, the whole publish is one statement and one round trip; each
-- statement inside takes a fresh snapshot, so after the lock the duplicate lookup sees
-- whatever an earlier publisher of the same msg_id committed.
CREATE FUNCTION events.publish(
  p_session_id text,
  p_execution_id text,
  p_type text,
  p_payload bytea,
  p_msg_id text
) RETURNS TABLE (event_id bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
  v_id bigint;
  v_total bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('kilo-cloud:events.publish'));
  SELECT e.total_bytes INTO v_total FROM events.events e ORDER BY e.id DESC LIMIT 1;
  INSERT INTO events.events AS e (session_id, execution_id, type, payload, msg_id, total_bytes)
  VALUES (p_session_id, p_execution_id, p_type, p_payload, p_msg_id,
          coalesce(v_total, 0) + octet_length(p_payload))
  ON CONFLICT (msg_id) DO NOTHING
  RETURNING e.id INTO v_id;
  IF v_id IS NOT NULL THEN
    -- Delivered at commit; readers of the session (and consumers of the type) wake up.
    PERFORM pg_notify('kilo_events', p_type || ':' || p_session_id);
    RETURN QUERY SELECT v_id, false;
    RETURN;
  END IF;
  RETURN QUERY SELECT e.id, true FROM events.events e WHERE e.msg_id = p_msg_id;
END
$$;
