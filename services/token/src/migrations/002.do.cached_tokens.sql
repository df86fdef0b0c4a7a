-- Installation tokens minted for one repository, shared by the replicas and kept across
-- restarts. The token is sealed (AES-256-GCM under TOKEN_SEALING_KEYS, bound to the
-- installation and repository), never stored in plaintext. Removing an installation
-- forgets its tokens.
CREATE TABLE cached_tokens (
  installation_id bigint NOT NULL REFERENCES installations (installation_id) ON DELETE CASCADE,
  -- The repository name without owner, lower-cased (GitHub names are case-insensitive).
  repository      text NOT NULL CHECK (repository ~ '^[a-z0-9._-]{1,100}$'),
  token_sealed    text NOT NULL CHECK (token_sealed LIKE 'v1.%'),
  expires_at      timestamptz NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (installation_id, repository)
);

CREATE INDEX cached_tokens_expires_idx ON cached_tokens (expires_at);
