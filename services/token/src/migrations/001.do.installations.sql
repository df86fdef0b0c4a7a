-- Which GitHub App installation serves which GitHub account (user or organization), and
-- who on the Kilo side may use it: exactly one Kilo organization, or, for a personal
-- account, one Kilo user. GitHub installs an App at most once per account, so the login
-- is unique; logins are case-insensitive on GitHub and kept lower-cased here.
CREATE TABLE installations (
  installation_id bigint PRIMARY KEY CHECK (installation_id > 0),
  account_login   text NOT NULL UNIQUE
                  CHECK (account_login ~ '^[a-z0-9][a-z0-9-]{0,38}$'),
  kilo_org_id     text CHECK (kilo_org_id <> ''),
  kilo_user_id    text CHECK (kilo_user_id <> ''),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT installations_one_owner CHECK ((kilo_org_id IS NULL) <> (kilo_user_id IS NULL))
);
