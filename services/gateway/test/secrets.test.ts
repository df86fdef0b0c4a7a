import {
  constants,
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  privateDecrypt,
  publicEncrypt,
  randomBytes,
  randomUUID,
} from "node:crypto";
import { type DescMessage, type MessageInitShape, type MessageShape, toJsonString } from "@bufbuild/protobuf";
import { type CallOptions, Code, ConnectError } from "@connectrpc/connect";
import {
  CreateStreamTicketResponseSchema,
  type EncryptedSecretSchema,
  GetSessionResponseSchema,
  InitiateSessionResponseSchema,
  type McpServerSchema,
  PrepareLegacySessionResponseSchema,
  type PrepareSessionRequestSchema,
  PrepareSessionResponseSchema,
  SessionField,
  SessionService,
  SessionState,
  UpdateSessionResponseSchema,
} from "@kilo-cloud/proto";
import { legacySealContext, resealLegacySessions, SEAL_VERSION, sealContext } from "@kilo-cloud/session";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTERNAL_API_KEY, type Stack, startStack, TEST_AUDIENCE, TEST_ISSUER } from "./support/stack.js";

// ---------------------------------------------------------------------------------------
// The backend's secret envelope (as the reference's encryptSecret makes it): RSA-OAEP
// SHA-256 wraps a random 32-byte key; AES-256-GCM with a 16-byte IV encrypts the value;
// encryptedData = base64(iv | ciphertext | tag).

const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });

function encryptSecret(plaintext: string): MessageInitShape<typeof EncryptedSecretSchema> {
  const dek = randomBytes(32);
  const iv = randomBytes(16);
  const cipher = createCipheriv("aes-256-gcm", dek, iv);
  const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  const wrapped = publicEncrypt(
    { key: rsa.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
    dek,
  );
  return {
    encryptedData: Buffer.concat([iv, ct, cipher.getAuthTag()]).toString("base64"),
    encryptedDek: wrapped.toString("base64"),
    algorithm: "rsa-aes-256-gcm",
    version: 1,
  };
}

function decryptSecret(s: { encryptedData: string; encryptedDEK: string }): string {
  const dek = privateDecrypt(
    { key: rsa.privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
    Buffer.from(s.encryptedDEK, "base64"),
  );
  const raw = Buffer.from(s.encryptedData, "base64");
  const decipher = createDecipheriv("aes-256-gcm", dek, raw.subarray(0, 16));
  decipher.setAuthTag(raw.subarray(raw.length - 16));
  return Buffer.concat([decipher.update(raw.subarray(16, raw.length - 16)), decipher.final()]).toString(
    "utf8",
  );
}

// ---------------------------------------------------------------------------------------
// Canaries: distinct, unguessable strings planted in every secret-bearing field.

const RUN = randomBytes(6).toString("hex");
const canaries = new Map<string, string>();
/** A fresh canary for a field; every canary made is searched for at the end. */
const canary = (label: string): string => {
  const value = `canary-${RUN}-${randomBytes(4).toString("hex")}-${label}`;
  canaries.set(label, value);
  return value;
};

/** The forms in which a leaked canary could appear (plain, or merely encoded). */
const encodings = (s: string) => [
  s,
  Buffer.from(s).toString("base64"),
  Buffer.from(s).toString("base64url"),
  Buffer.from(s).toString("hex"),
  JSON.stringify(s).slice(1, -1),
];

/** Not a secret: prompts are stored and shown by design. It proves the searches see the data. */
const PROMPT_MARKER = `marker-${RUN}-prompt`;

const bigintSafe = (_k: string, v: unknown) => (typeof v === "bigint" ? v.toString() : v);

/** A session's full configuration with a canary in every secret-bearing value. */
function secretConfig(tag: string) {
  return {
    envVars: {
      values: {
        API_KEY: canary(`${tag}-env-api-key`),
        DATABASE_URL: `postgres://app:${canary(`${tag}-env-db-password`)}@db/app`,
      },
    },
    encryptedSecrets: {
      values: {
        STRIPE_KEY: encryptSecret(canary(`${tag}-secret-stripe`)),
        NPM_TOKEN: encryptSecret(canary(`${tag}-secret-npm`)),
      },
    },
    setupCommands: {
      values: [
        `npm config set //registry.npmjs.org/:_authToken ${canary(`${tag}-setup-npm`)}`,
        `echo ${canary(`${tag}-setup-echo`)} > .token`,
      ],
    },
    mcpServers: {
      values: {
        remote: {
          transport: {
            case: "sse",
            value: {
              url: "https://mcp.example.com/sse",
              headers: { authorization: `Bearer ${canary(`${tag}-mcp-sse-header`)}` },
            },
          },
        },
        streaming: {
          transport: {
            case: "streamableHttp",
            value: {
              url: "https://mcp.example.com/mcp",
              headers: { "x-api-key": canary(`${tag}-mcp-http-header`) },
            },
          },
        },
        local: {
          transport: {
            case: "stdio",
            value: {
              command: "npx",
              args: ["-y", "@acme/mcp", `--token=${canary(`${tag}-mcp-stdio-arg`)}`],
              env: { ACME_TOKEN: canary(`${tag}-mcp-stdio-env`) },
              cwd: "tools",
            },
          },
          alwaysAllow: ["read"],
        },
      } satisfies Record<string, MessageInitShape<typeof McpServerSchema>>,
    },
  } satisfies MessageInitShape<typeof PrepareSessionRequestSchema>;
}

describe("secrets never leak (canaries)", () => {
  let stack: Stack;
  /** alice's bearer token: it carries a canary claim, and its own bytes are a secret too. */
  let bearer: string;
  /** Everything a caller received: responses, headers, trailers, errors. */
  const seen: string[] = [];
  const errors: ConnectError[] = [];

  const capture = (): CallOptions => ({
    onHeader: (h) => void seen.push(JSON.stringify([...h.entries()])),
    onTrailer: (t) => void seen.push(JSON.stringify([...t.entries()])),
  });
  const record = <D extends DescMessage>(schema: D, msg: MessageShape<D>): MessageShape<D> => {
    seen.push(toJsonString(schema, msg));
    seen.push(JSON.stringify(msg, bigintSafe));
    return msg;
  };
  const failure = async (p: Promise<unknown>): Promise<ConnectError> => {
    try {
      await p;
    } catch (err) {
      const ce = ConnectError.from(err);
      errors.push(ce);
      seen.push(ce.message, ce.rawMessage, JSON.stringify(ce.details), JSON.stringify([...ce.metadata]));
      return ce;
    }
    throw new Error("expected the call to fail");
  };
  const client = (headers: Record<string, string> = {}) =>
    stack.rawClient(SessionService, {
      authorization: `Bearer ${bearer}`,
      "x-internal-api-key": INTERNAL_API_KEY,
      ...headers,
    });

  let githubSession: string;
  let gitSession: string;
  let legacySession: string;

  beforeAll(async () => {
    stack = await startStack();
    bearer = await new SignJWT({ ctx: canary("bearer-claim") })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setSubject("alice")
      .setIssuer(TEST_ISSUER)
      .setAudience(TEST_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime("10m")
      .sign(new TextEncoder().encode(stack.hs256Secret));
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("PrepareSession stores a GitHub session and a git URL session", async () => {
    const c = client();
    const a = record(
      PrepareSessionResponseSchema,
      await c.prepareSession(
        {
          prompt: `add input validation to the signup form (${PROMPT_MARKER})`,
          mode: "code",
          model: "mock/model",
          repository: { case: "githubRepo", value: "acme/widgets" },
          githubToken: canary("github-token"),
          kilocodeOrganizationId: "org_1",
          autoCommit: true,
          ...secretConfig("prep"),
          callbackTarget: {
            url: "https://backend.example.com/callback",
            headers: {
              authorization: `Bearer ${canary("callback-header")}`,
              "x-sig": canary("callback-sig"),
            },
          },
        },
        capture(),
      ),
    );
    githubSession = a.cloudAgentSessionId;
    const b = record(
      PrepareSessionResponseSchema,
      await c.prepareSession(
        {
          prompt: "bump the dependencies",
          mode: "code",
          model: "mock/model",
          repository: { case: "gitUrl", value: "https://git.example.com/acme/widgets.git" },
          gitToken: canary("git-token"),
        },
        capture(),
      ),
    );
    gitSession = b.cloudAgentSessionId;
  });

  it("GetSession returns counts and flags, never values", async () => {
    const c = client({ "x-internal-api-key": "" });
    const gh = record(
      GetSessionResponseSchema,
      await c.getSession({ cloudAgentSessionId: githubSession }, capture()),
    ).session!;
    expect(gh).toMatchObject({
      envVarCount: 2,
      encryptedSecretCount: 2,
      setupCommandCount: 2,
      mcpServerCount: 3,
      hasCallbackTarget: true,
      hasGithubToken: true,
      hasGitToken: false,
      state: SessionState.PREPARED,
    });
    const git = record(
      GetSessionResponseSchema,
      await c.getSession({ cloudAgentSessionId: gitSession }, capture()),
    ).session!;
    expect(git).toMatchObject({
      envVarCount: 0,
      encryptedSecretCount: 0,
      setupCommandCount: 0,
      mcpServerCount: 0,
      hasCallbackTarget: false,
      hasGithubToken: false,
      hasGitToken: true,
    });
  });

  it("UpdateSession sets new tokens and configuration", async () => {
    const c = client();
    const gh = record(
      UpdateSessionResponseSchema,
      await c.updateSession(
        {
          cloudAgentSessionId: githubSession,
          expectedVersion: 1n,
          githubToken: canary("github-token-updated"),
          ...secretConfig("upd"),
        },
        capture(),
      ),
    ).session!;
    expect(gh.version).toBe(2n);
    expect(gh.hasGithubToken).toBe(true);
    expect(gh.encryptedSecretCount).toBe(2);
    const git = record(
      UpdateSessionResponseSchema,
      await c.updateSession(
        { cloudAgentSessionId: gitSession, gitToken: canary("git-token-updated") },
        capture(),
      ),
    ).session!;
    expect(git.hasGitToken).toBe(true);
    // Clearing a token clears its flag (and keeps no ciphertext).
    const cleared = record(
      UpdateSessionResponseSchema,
      await c.updateSession(
        { cloudAgentSessionId: gitSession, clear: [SessionField.GIT_TOKEN], envVars: { values: {} } },
        capture(),
      ),
    ).session!;
    expect(cleared.hasGitToken).toBe(false);
    const { rows } = await stack.db.query("SELECT git_token_sealed FROM session.sessions WHERE id = $1", [
      gitSession,
    ]);
    expect(rows[0].git_token_sealed).toBeNull();
    record(
      UpdateSessionResponseSchema,
      await c.updateSession(
        { cloudAgentSessionId: gitSession, gitToken: canary("git-token-again") },
        capture(),
      ),
    );
  });

  it("InitiateSession starts the session (and keeps the caller's token sealed)", async () => {
    const c = client({ "x-internal-api-key": "" });
    const first = record(
      InitiateSessionResponseSchema,
      await c.initiateSession({ cloudAgentSessionId: githubSession }, capture()),
    );
    const again = record(
      InitiateSessionResponseSchema,
      await c.initiateSession({ cloudAgentSessionId: githubSession }, capture()),
    );
    expect(again.executionId).toBe(first.executionId);
    record(
      CreateStreamTicketResponseSchema,
      await c.createStreamTicket({ cloudAgentSessionId: githubSession }, capture()),
    );
  });

  it("PrepareLegacySession stores a session with given ids", async () => {
    legacySession = `agent_${randomUUID()}`;
    const res = record(
      PrepareLegacySessionResponseSchema,
      await client().prepareLegacySession(
        {
          cloudAgentSessionId: legacySession,
          kiloSessionId: randomUUID(),
          session: {
            prompt: "continue where we left off",
            mode: "code",
            model: "mock/model",
            repository: { case: "githubRepo", value: "acme/legacy" },
            githubToken: canary("legacy-github-token"),
            ...secretConfig("legacy"),
            callbackTarget: {
              url: "https://backend.example.com/callback",
              headers: { authorization: canary("legacy-callback-header") },
            },
          },
        },
        capture(),
      ),
    );
    expect(res.cloudAgentSessionId).toBe(legacySession);
    const got = record(
      GetSessionResponseSchema,
      await client().getSession({ cloudAgentSessionId: legacySession }, capture()),
    ).session!;
    expect(got).toMatchObject({
      hasGithubToken: true,
      envVarCount: 2,
      encryptedSecretCount: 2,
      mcpServerCount: 3,
    });
  });

  it("error paths echo no secret (validation, state, version, conflict, auth, not found, internal)", async () => {
    const c = client();
    // Validation: every field invalid at once, each carrying a canary.
    const invalid = await failure(
      c.prepareSession({
        prompt: "x",
        mode: "code",
        model: "mock/model",
        repository: {
          case: "gitUrl",
          value: `https://user:${canary("invalid-url-password")}@git.example.com/r.git`,
        },
        githubToken: `${canary("invalid-github-token")}${"x".repeat(4100)}`,
        gitToken: `${canary("invalid-git-token")}${"y".repeat(4100)}`,
        envVars: { values: { TOO_LONG: `${canary("invalid-env")}${"z".repeat(300)}` } },
        encryptedSecrets: {
          values: {
            BAD: { ...encryptSecret(canary("invalid-secret")), algorithm: canary("invalid-algorithm") },
          },
        },
        setupCommands: { values: [`${canary("invalid-setup")}${"s".repeat(600)}`] },
        mcpServers: {
          values: {
            bad: {
              transport: {
                case: "sse",
                value: {
                  url: `http://${canary("invalid-mcp-url")}.example.com`,
                  headers: { ok: `${canary("invalid-mcp-header")}${"h".repeat(4100)}` },
                },
              },
            },
          },
        },
        callbackTarget: {
          url: "https://backend.example.com/cb",
          headers: { "x-auth": `${canary("invalid-callback-header")}${"c".repeat(4100)}` },
        },
      }),
    );
    expect(invalid.code).toBe(Code.InvalidArgument);
    expect(invalid.rawMessage).toContain("github_token");
    const invalidUpdate = await failure(
      c.updateSession({
        cloudAgentSessionId: gitSession,
        gitToken: canary("invalid-update-git-token"),
        clear: [SessionField.GIT_TOKEN],
      }),
    );
    expect(invalidUpdate.code).toBe(Code.InvalidArgument);
    // State: the initiated session no longer takes updates.
    const frozen = await failure(
      c.updateSession({ cloudAgentSessionId: githubSession, githubToken: canary("frozen-github-token") }),
    );
    expect(frozen.code).toBe(Code.FailedPrecondition);
    // Version conflict.
    const stale = await failure(
      c.updateSession({
        cloudAgentSessionId: gitSession,
        expectedVersion: 1n,
        gitToken: canary("stale-git-token"),
        ...secretConfig("stale"),
      }),
    );
    expect(stale.code).toBe(Code.Aborted);
    // Conflict: the legacy id is taken.
    const taken = await failure(
      c.prepareLegacySession({
        cloudAgentSessionId: legacySession,
        kiloSessionId: randomUUID(),
        session: {
          prompt: "again",
          mode: "code",
          model: "mock/model",
          repository: { case: "githubRepo", value: "acme/legacy" },
          githubToken: canary("taken-github-token"),
          ...secretConfig("taken"),
        },
      }),
    );
    expect(taken.code).toBe(Code.AlreadyExists);
    // Not found.
    const missing = await failure(
      c.updateSession({
        cloudAgentSessionId: `agent_${randomUUID()}`,
        githubToken: canary("missing-github-token"),
      }),
    );
    expect(missing.code).toBe(Code.NotFound);
    // Authorization: no internal API key; a bad bearer token that is itself a canary.
    const denied = await failure(
      client({ "x-internal-api-key": canary("wrong-internal-key") }).prepareSession({
        prompt: "x",
        mode: "code",
        model: "mock/model",
        repository: { case: "githubRepo", value: "acme/widgets" },
        githubToken: canary("denied-github-token"),
      }),
    );
    expect(denied.code).toBe(Code.PermissionDenied);
    const unauthenticated = await failure(
      client({ authorization: `Bearer ${canary("bad-bearer")}` }).getSession({
        cloudAgentSessionId: githubSession,
      }),
    );
    expect(unauthenticated.code).toBe(Code.Unauthenticated);
    // Internal: the database refuses the row after the secrets were sealed (a constraint
    // added for this test stands for any storage failure).
    await stack.db.query(
      "ALTER TABLE session.sessions ADD CONSTRAINT test_storage_fault CHECK (prompt <> 'storage fault') NOT VALID",
    );
    const internal = await failure(
      c.prepareSession({
        prompt: "storage fault",
        mode: "code",
        model: "mock/model",
        repository: { case: "githubRepo", value: "acme/widgets" },
        githubToken: canary("internal-github-token"),
        ...secretConfig("internal"),
        callbackTarget: {
          url: "https://backend.example.com/callback",
          headers: { authorization: canary("internal-callback-header") },
        },
      }),
    );
    await stack.db.query("ALTER TABLE session.sessions DROP CONSTRAINT test_storage_fault");
    expect(internal.code).toBe(Code.Internal);
    expect(internal.rawMessage).toBe("session service failed");
    const failed = stack.logs.map((l) => JSON.parse(l)).filter((l) => l.msg === "rpc failed");
    expect(failed.map((l) => [l.service, l.level, l.error])).toEqual([
      ["session", 50, "could not store the session"],
      ["gateway", 50, "session service failed"],
    ]);
    // The plain-HTTP ticket route, with a canary as the session id.
    const res = await fetch(new URL("/stream-ticket", stack.gatewayUrl), {
      method: "POST",
      headers: { authorization: `Bearer ${bearer}`, "content-type": "application/json" },
      body: JSON.stringify({ cloudAgentSessionId: canary("ticket-body") }),
    });
    expect(res.status).toBe(400);
    seen.push(await res.text(), JSON.stringify([...res.headers.entries()]));
  });

  it("the stored rows hold only sealed values, bound to the session and its owner", async () => {
    const { rows } = await stack.db.query("SELECT * FROM session.sessions WHERE id = $1", [githubSession]);
    const row = rows[0];
    for (const col of [
      "github_token_sealed",
      "kilo_token_sealed",
      "env_vars_sealed",
      "setup_commands_sealed",
      "mcp_servers_sealed",
      "callback_target_sealed",
      "encrypted_secrets_sealed",
    ]) {
      expect(row[col], col).toMatch(/^v1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    }
    expect(row.encrypted_secrets).toEqual({});
    expect(row.seal_version).toBe(SEAL_VERSION);
    // Opened for its session and owner: the backend's envelopes, which open (with the
    // sandbox's key) to the canaries.
    const own = { sessionId: githubSession, userId: row.user_id as string };
    const secrets = stack.sealer.openJson<Record<string, { encryptedData: string; encryptedDEK: string }>>(
      row.encrypted_secrets_sealed,
      sealContext(own, "encrypted_secrets"),
    );
    expect(Object.keys(secrets).sort()).toEqual(["NPM_TOKEN", "STRIPE_KEY"]);
    expect(decryptSecret(secrets.STRIPE_KEY!)).toBe(canaries.get("upd-secret-stripe"));
    expect(decryptSecret(secrets.NPM_TOKEN!)).toBe(canaries.get("upd-secret-npm"));
    // A row whose owner is rewritten (or a value copied to another session) opens nothing.
    for (const other of [
      { ...own, userId: "mallory" },
      { ...own, sessionId: legacySession },
    ]) {
      expect(() =>
        stack.sealer.open(row.encrypted_secrets_sealed, sealContext(other, "encrypted_secrets")),
      ).toThrow();
      expect(() => stack.sealer.open(row.github_token_sealed, sealContext(other, "github_token"))).toThrow();
    }
  });

  it("re-seals a row written before owners were bound (seal_version 1) at start-up", async () => {
    const { rows } = await stack.db.query("SELECT * FROM session.sessions WHERE id = $1", [githubSession]);
    const row = rows[0];
    const own = { sessionId: githubSession, userId: row.user_id as string };
    const token = stack.sealer.open(row.github_token_sealed, sealContext(own, "github_token"));
    const envelopes = stack.sealer.openJson(
      row.encrypted_secrets_sealed,
      sealContext(own, "encrypted_secrets"),
    );
    // The row as the previous version stored it.
    await stack.db.query(
      `UPDATE session.sessions SET seal_version = 1, github_token_sealed = $2, encrypted_secrets = $3,
         encrypted_secrets_sealed = NULL WHERE id = $1`,
      [
        githubSession,
        stack.sealer.seal(token, legacySealContext(githubSession, "github_token")),
        JSON.stringify(envelopes),
      ],
    );
    // Other legacy columns keep their old seal: re-seal them the old way too.
    for (const col of ["kilo_token", "env_vars", "setup_commands", "mcp_servers", "callback_target"]) {
      const plain = stack.sealer.open(row[`${col}_sealed`], sealContext(own, col));
      await stack.db.query(`UPDATE session.sessions SET ${col}_sealed = $2 WHERE id = $1`, [
        githubSession,
        stack.sealer.seal(plain, legacySealContext(githubSession, col)),
      ]);
    }
    expect(await resealLegacySessions(stack.db, stack.sealer)).toBe(1);
    const after = (await stack.db.query("SELECT * FROM session.sessions WHERE id = $1", [githubSession]))
      .rows[0];
    expect(after.seal_version).toBe(SEAL_VERSION);
    expect(after.encrypted_secrets).toEqual({});
    expect(stack.sealer.open(after.github_token_sealed, sealContext(own, "github_token"))).toBe(token);
    expect(
      stack.sealer.openJson(after.encrypted_secrets_sealed, sealContext(own, "encrypted_secrets")),
    ).toEqual(envelopes);
    expect(await resealLegacySessions(stack.db, stack.sealer)).toBe(0);
    expect(after.encrypted_secret_count).toBe(2);
  });

  it("no canary, bearer token or internal key appears in any response, log line or database row", async () => {
    // Every row of every table of every application schema, as text.
    const tables = await stack.db.query<{ schema: string; name: string }>(
      `SELECT table_schema AS schema, table_name AS name FROM information_schema.tables
       WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`,
    );
    expect(tables.rows.map((t) => `${t.schema}.${t.name}`)).toEqual(
      expect.arrayContaining(["session.sessions", "session.executions"]),
    );
    const dbText: string[] = [];
    for (const t of tables.rows) {
      const { rows } = await stack.db.query<{ row: string }>(
        `SELECT t::text AS row FROM "${t.schema}"."${t.name}" t`,
      );
      dbText.push(...rows.map((r) => r.row));
    }
    expect(dbText.join("\n")).toContain(githubSession);
    expect(dbText.join("\n")).toContain(legacySession);

    const haystacks = {
      responses: seen.join("\n"),
      logs: stack.logs.join("\n"),
      database: dbText.join("\n"),
    };
    // Make sure the searches see something: the plaintext prompt is found where it is kept,
    // and the logs hold the refusals and the failure.
    expect(haystacks.database).toContain(PROMPT_MARKER);
    expect(haystacks.responses).toContain(PROMPT_MARKER);
    expect(haystacks.logs).toContain("rpc refused");
    expect(haystacks.logs).toContain("rpc failed");
    expect(errors.length).toBeGreaterThanOrEqual(9);

    const [, , signature] = bearer.split(".");
    const needles: [string, string][] = [
      ["bearer token", bearer],
      ["bearer token signature", signature!],
      ["internal API key", INTERNAL_API_KEY],
      ["HS256 secret", stack.hs256Secret],
    ];
    for (const [label, value] of canaries) {
      for (const form of encodings(value)) needles.push([label, form]);
    }
    expect(canaries.size).toBeGreaterThan(60);

    const leaks: string[] = [];
    for (const [where, text] of Object.entries(haystacks)) {
      for (const [label, needle] of needles) {
        if (text.includes(needle)) leaks.push(`${label} in ${where}`);
      }
    }
    expect(leaks).toEqual([]);
  });
});
