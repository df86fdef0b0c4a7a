-- Every sealed value is bound to its session, its OWNER and its column (associated data
-- `session:<id>:user:<user>:<column>`), and encrypted secrets are sealed like the other
-- columns (they were kept as received). Rows written before have seal_version 1: the
-- service re-seals them at start-up (resealLegacySessions), binding them to the owner the
-- row names at that moment.
ALTER TABLE sessions
  ADD COLUMN seal_version smallint NOT NULL DEFAULT 1,
  ADD COLUMN encrypted_secrets_sealed text,
  ADD COLUMN encrypted_secret_count integer NOT NULL DEFAULT 0;

UPDATE sessions SET encrypted_secret_count = (SELECT count(*) FROM jsonb_object_keys(encrypted_secrets));

ALTER TABLE sessions ALTER COLUMN seal_version SET DEFAULT 2;

CREATE INDEX sessions_legacy_seal_idx ON sessions (id) WHERE seal_version < 2;
