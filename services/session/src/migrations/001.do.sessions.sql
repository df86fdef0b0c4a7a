-- Sessions: one row per cloud-agent session, with its configuration.
-- Tokens, env values, setup commands, MCP servers and the callback target are sealed
-- (AES-256-GCM under the service key, bound to the row and column); encrypted secrets are
-- stored as received from the backend (only sandbox-manager can open them).
CREATE TABLE sessions (
  id                     text PRIMARY KEY CHECK (id ~ '^agent_[0-9a-f-]{36}$'),
  kilo_session_id        text NOT NULL,
  user_id                text NOT NULL,
  org_id                 text,
  bot_id                 text,
  github_repo            text,
  git_url                text,
  prompt                 text NOT NULL,
  mode                   text,
  model                  text,
  auto_commit            boolean,
  upstream_branch        text,
  github_token_sealed    text,
  git_token_sealed       text,
  kilo_token_sealed      text,
  env_vars_sealed        text,
  env_var_count          integer NOT NULL DEFAULT 0,
  encrypted_secrets      jsonb NOT NULL DEFAULT '{}'::jsonb,
  setup_commands_sealed  text,
  setup_command_count    integer NOT NULL DEFAULT 0,
  mcp_servers_sealed     text,
  mcp_server_count       integer NOT NULL DEFAULT 0,
  callback_target_sealed text,
  state                  text NOT NULL CHECK (state IN ('prepared', 'initiated')),
  prepared_at            timestamptz NOT NULL DEFAULT now(),
  initiated_at           timestamptz,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  version                bigint NOT NULL DEFAULT 1,
  CONSTRAINT sessions_one_repository CHECK ((github_repo IS NULL) <> (git_url IS NULL))
);

CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at DESC);
