-- Appends a batch of events in one statement, in array order, under the same lock as
-- events.publish (ids commit in increasing order). A repeated msg_id returns the stored
-- event's id with duplicate = true. One notification per (type, session) of the batch
-- (Postgres folds identical ones of a transaction anyway).
CREATE FUNCTION events.publish_batch(
  p_session_ids text[],
  p_execution_ids text[],
  p_types text[],
  p_payloads bytea[],
  p_msg_ids text[]
) RETURNS TABLE (ord integer, event_id bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
  v_id bigint;
  v_total bigint;
  i integer;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('kilo-cloud:events.publish'));
  SELECT e.total_bytes INTO v_total FROM events.events e ORDER BY e.id DESC LIMIT 1;
  v_total := coalesce(v_total, 0);
  FOR i IN 1 .. coalesce(array_length(p_msg_ids, 1), 0) LOOP
    v_id := NULL;
    INSERT INTO events.events AS e (session_id, execution_id, type, payload, msg_id, total_bytes)
    VALUES (p_session_ids[i], p_execution_ids[i], p_types[i], p_payloads[i], p_msg_ids[i],
            v_total + octet_length(p_payloads[i]))
    ON CONFLICT (msg_id) DO NOTHING
    RETURNING e.id INTO v_id;
    ord := i;
    IF v_id IS NOT NULL THEN
      v_total := v_total + octet_length(p_payloads[i]);
      event_id := v_id;
      duplicate := false;
    ELSE
      SELECT e.id INTO event_id FROM events.events e WHERE e.msg_id = p_msg_ids[i];
      duplicate := true;
    END IF;
    RETURN NEXT;
  END LOOP;
  PERFORM pg_notify('kilo_events', d.t || ':' || d.s)
  FROM (SELECT DISTINCT u.t, u.s FROM unnest(p_types, p_session_ids) AS u (t, s)) d;
END
$$;
