/**
 * Every limit of the public API, at its boundary, through a real client over HTTP to the
 * gateway: accepted AT the limit, INVALID_ARGUMENT naming the field ONE PAST it. The limits
 * are the hosted product's (see the cloud-worker README); they are declared once in the
 * proto (`buf.validate`) and enforced by the validation interceptor before any handler runs.
 */
import { constants, createCipheriv, generateKeyPairSync, publicEncrypt, randomBytes } from "node:crypto";
import type { DescMessage, Message, MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type EncryptedSecretSchema,
  type McpServerSchema,
  type PrepareSessionRequestSchema,
  SessionField,
  type SessionInfo,
  type UpdateSessionRequestSchema,
} from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTERNAL_API_KEY, type Protocol, type Stack, startStack } from "./support/stack.js";

/** The plain-object init of a message (its init shape without the Message alternative). */
type Init<D extends DescMessage> = Exclude<MessageInitShape<D>, Message>;
type PrepareInit = Init<typeof PrepareSessionRequestSchema>;
type UpdateInit = Init<typeof UpdateSessionRequestSchema>;
type McpServerInit = Init<typeof McpServerSchema>;
type SecretInit = Init<typeof EncryptedSecretSchema>;

const USER = "limits-user";
const MAX_PROMPT_BYTES = 102_400;
const UNKNOWN_SESSION_ID = "agent_123e4567-e89b-12d3-a456-426614174000";

// ---------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------

/** A PrepareSession request that passes every rule; `overrides` replaces fields. */
function validPrepare(overrides: Partial<PrepareInit> = {}): PrepareInit {
  return {
    prompt: "Add a retry to the flaky upload test",
    mode: "code",
    model: "anthropic/claude-sonnet-4.5",
    repository: { case: "githubRepo", value: "acme/widgets" },
    ...overrides,
  };
}

/** `n` items built by `make(i)`, keyed by `key(i)`. */
function record<T>(n: number, key: (i: number) => string, make: (i: number) => T): Record<string, T> {
  return Object.fromEntries(Array.from({ length: n }, (_, i) => [key(i), make(i)]));
}

const envVars = (n: number) => ({
  values: record(
    n,
    (i) => `VAR_${i}`,
    (i) => `value-${i}`,
  ),
});
const setupCommands = (n: number, len = 12) => ({
  values: Array.from({ length: n }, (_, i) => `echo ${i}`.padEnd(len, "x")),
});
const stdio = (command = "npx", extra: Partial<McpServerInit> = {}): McpServerInit => ({
  transport: { case: "stdio", value: { command, args: ["-y", "@modelcontextprotocol/server-github"] } },
  ...extra,
});
const remote = (
  kind: "sse" | "streamableHttp",
  url = "https://mcp.example.com/mcp",
  extra: Partial<McpServerInit> = {},
): McpServerInit => ({ transport: { case: kind, value: { url } }, ...extra });
const mcpServers = (values: Record<string, McpServerInit>) => ({ values });
const mcpOne = (server: McpServerInit) => mcpServers({ github: server });
/** The field path of the server that `mcpOne` configures. */
const MCP_ONE = 'mcp_servers.values["github"]';

/**
 * Real envelopes, made the way the backend makes them: AES-256-GCM under a fresh DEK, the
 * DEK wrapped with RSA-OAEP (SHA-256) under a 2048-bit key. encryptedData is
 * base64(IV 16 + ciphertext + tag 16), encryptedDEK is base64 of 256 bytes (344 chars).
 */
const { publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
function sealSecret(value: string): SecretInit {
  const dek = randomBytes(32);
  const iv = randomBytes(16);
  const cipher = createCipheriv("aes-256-gcm", dek, iv);
  const ciphertext = Buffer.concat([cipher.update(value, "utf8"), cipher.final()]);
  const wrapped = publicEncrypt(
    { key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
    dek,
  );
  return {
    encryptedData: Buffer.concat([iv, ciphertext, cipher.getAuthTag()]).toString("base64"),
    encryptedDek: wrapped.toString("base64"),
    algorithm: "rsa-aes-256-gcm",
    version: 1,
  };
}
const SECRET = sealSecret("ghp_exampletoken");
/** Valid base64 of exactly `chars` characters (a multiple of 4). */
const b64 = (chars: number) => randomBytes((chars / 4) * 3).toString("base64");
const secrets = (n: number) => ({
  values: record(
    n,
    (i) => `SECRET_${i}`,
    (i) => sealSecret(`value-${i}`),
  ),
});
const secretOne = (patch: Partial<SecretInit>) => ({ values: { API_KEY: { ...SECRET, ...patch } } });

const headers = (n: number) =>
  record(
    n,
    (i) => `X-Header-${i}`,
    (i) => `v${i}`,
  );
const callback = (url: string, hdrs: Record<string, string> = {}) => ({ url, headers: hdrs });

/** `bytes` bytes of UTF-8 made of 2-byte characters (é is U+00E9, two bytes in UTF-8). */
const twoByteChars = (bytes: number) => "é".repeat(bytes / 2);

/** Table rows as `[name, row]`, so that titles use `%s` (vitest truncates `$name`). */
const named = <T extends { name: string }>(rows: T[]) => rows.map((row) => [row.name, row] as const);

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

/** The call fails with INVALID_ARGUMENT and its message names `field` (the proto path). */
async function expectInvalid(promise: Promise<unknown>, field: string): Promise<ConnectError> {
  const err = await promise.then(
    () => {
      throw new Error(`expected INVALID_ARGUMENT naming "${field}", but the call succeeded`);
    },
    (e: unknown) => ConnectError.from(e),
  );
  expect(err.code, err.rawMessage).toBe(Code.InvalidArgument);
  expect(err.rawMessage).toContain(field);
  return err;
}

/**
 * The request passed validation: the call succeeds or fails for a reason other than
 * INVALID_ARGUMENT (e.g. NOT_FOUND for an unknown session, or UNIMPLEMENTED).
 */
async function expectValidated(promise: Promise<unknown>): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  if (err) expect(err.code, err.rawMessage).not.toBe(Code.InvalidArgument);
}

// ---------------------------------------------------------------------------------------

describe("API limits through the gateway", () => {
  let stack: Stack;
  const client = (protocol?: Protocol) => stack.sessions(USER, protocol ? { protocol } : {});
  /** Log lines of the session service about `method` since `mark` (it logs every call it refuses). */
  const sessionServiceLines = (mark: number, method: string) =>
    stack.logs.slice(mark).filter((l) => l.includes('"service":"session"') && l.includes(`/${method}"`));
  const sessionCount = async () =>
    Number((await stack.db.query("SELECT count(*)::int AS n FROM session.sessions")).rows[0].n);

  beforeAll(async () => {
    stack = await startStack();
    await stack.login(USER);
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  /** Prepares the request and returns what GetSession then reports. */
  async function prepareOk(req: PrepareInit, protocol?: Protocol): Promise<SessionInfo> {
    const c = client(protocol);
    const { cloudAgentSessionId } = await c.prepareSession(req);
    expect(cloudAgentSessionId).toMatch(/^agent_[0-9a-f-]{36}$/);
    const { session } = await c.getSession({ cloudAgentSessionId });
    return session!;
  }

  /**
   * PrepareSession is refused naming `field` by the gateway itself: the request never
   * reached the session service (which logs every call it refuses) and nothing was stored.
   */
  async function expectPrepareInvalid(req: PrepareInit, field: string, protocol?: Protocol) {
    const before = await sessionCount();
    const logMark = stack.logs.length;
    await expectInvalid(client(protocol).prepareSession(req), field);
    expect(sessionServiceLines(logMark, "PrepareSession")).toEqual([]);
    expect(await sessionCount()).toBe(before);
  }

  // -------------------------------------------------------------------------------------
  describe("PrepareSession", () => {
    type Accepted = { name: string; req: Partial<PrepareInit>; stored?: Partial<SessionInfo> };
    type Rejected = { name: string; req: Partial<PrepareInit>; field: string };

    const accepted: Accepted[] = [
      // prompt: 1 .. 102400 bytes of UTF-8
      { name: "prompt of 1 character", req: { prompt: "x" } },
      { name: "prompt of 102400 ASCII bytes", req: { prompt: "a".repeat(MAX_PROMPT_BYTES) } },
      {
        name: "prompt of 102400 bytes of 2-byte characters",
        req: { prompt: twoByteChars(MAX_PROMPT_BYTES) },
        stored: { prompt: twoByteChars(MAX_PROMPT_BYTES) },
      },
      {
        name: "prompt of 102400 bytes of 4-byte characters",
        req: { prompt: "😀".repeat(MAX_PROMPT_BYTES / 4) },
      },
      // mode
      ...["code", "architect", "ask", "debug", "orchestrator"].map((mode) => ({
        name: `mode ${mode}`,
        req: { mode },
        stored: { mode },
      })),
      // model: 1 .. 256 characters, no whitespace
      { name: "model of 1 character", req: { model: "m" } },
      { name: "model of 256 characters", req: { model: "m".repeat(256) } },
      // repository
      { name: "githubRepo a/b", req: { repository: { case: "githubRepo", value: "a/b" } } },
      {
        name: "githubRepo with a 39-character owner and a 100-character name",
        req: { repository: { case: "githubRepo", value: `${"o".repeat(39)}/${"n".repeat(100)}` } },
      },
      {
        name: "githubRepo my-org/repo_name.v2",
        req: { repository: { case: "githubRepo", value: "my-org/repo_name.v2" } },
      },
      {
        name: "gitUrl over https",
        req: { repository: { case: "gitUrl", value: "https://git.example.com/acme/widgets.git" } },
        stored: { gitUrl: "https://git.example.com/acme/widgets.git" },
      },
      {
        name: "gitUrl of 2048 characters",
        req: { repository: { case: "gitUrl", value: "https://git.example.com/".padEnd(2048, "a") } },
      },
      // tokens: 1 .. 4096
      {
        name: "githubToken of 4096 characters",
        req: { githubToken: "t".repeat(4096) },
        stored: { hasGithubToken: true },
      },
      {
        name: "gitToken of 4096 characters",
        req: {
          repository: { case: "gitUrl", value: "https://git.example.com/a/b.git" },
          gitToken: "t".repeat(4096),
        },
        stored: { hasGitToken: true },
      },
      // organization and bot ids
      {
        name: "kilocodeOrganizationId as a uuid",
        req: { kilocodeOrganizationId: "9d278969-5453-4ae3-a51f-a8d2274a7b56" },
        stored: { orgId: "9d278969-5453-4ae3-a51f-a8d2274a7b56" },
      },
      { name: "kilocodeOrganizationId of 128 characters", req: { kilocodeOrganizationId: "o".repeat(128) } },
      { name: "botId reviewer_2-b", req: { botId: "reviewer_2-b" }, stored: { botId: "reviewer_2-b" } },
      { name: "botId of 128 characters", req: { botId: "b".repeat(128) } },
      // env vars: 50 pairs; keys and values 256 characters; shell-variable keys
      { name: "50 env vars", req: { envVars: envVars(50) }, stored: { envVarCount: 50 } },
      { name: "env var key of 256 characters", req: { envVars: { values: { ["K".repeat(256)]: "v" } } } },
      { name: "env var value of 256 characters", req: { envVars: { values: { K: "v".repeat(256) } } } },
      {
        name: "env var value of 256 2-byte characters",
        req: { envVars: { values: { K: "é".repeat(256) } } },
      },
      { name: "env var key _A1", req: { envVars: { values: { _A1: "v" } } } },
      { name: "env var with an empty value", req: { envVars: { values: { EMPTY: "" } } } },
      // encrypted secrets: 50 envelopes
      {
        name: "50 encrypted secrets",
        req: { encryptedSecrets: secrets(50) },
        stored: { encryptedSecretCount: 50 },
      },
      {
        name: "encryptedData of the 44-character minimum",
        req: { encryptedSecrets: secretOne({ encryptedData: b64(44) }) },
      },
      {
        name: "encryptedData of 8192 characters",
        req: { encryptedSecrets: secretOne({ encryptedData: b64(8192) }) },
      },
      {
        name: "encryptedDEK of 2048 characters",
        req: { encryptedSecrets: secretOne({ encryptedDek: b64(2048) }) },
      },
      // setup commands: 20 of 500 characters
      {
        name: "20 setup commands of 500 characters",
        req: { setupCommands: setupCommands(20, 500) },
        stored: { setupCommandCount: 20 },
      },
      // MCP servers: 20; one transport each; timeout 1 .. 3600
      {
        name: "20 MCP servers",
        req: {
          mcpServers: mcpServers(
            record(
              20,
              (i) => `server-${i}`,
              () => stdio(),
            ),
          ),
        },
        stored: { mcpServerCount: 20 },
      },
      { name: "an MCP stdio server", req: { mcpServers: mcpOne(stdio()) } },
      { name: "an MCP sse server", req: { mcpServers: mcpOne(remote("sse")) } },
      { name: "an MCP streamable-http server", req: { mcpServers: mcpOne(remote("streamableHttp")) } },
      {
        name: "an MCP server with headers",
        req: {
          mcpServers: mcpServers({
            github: {
              transport: {
                case: "streamableHttp",
                value: {
                  url: "https://api.githubcopilot.com/mcp/",
                  // biome-ignore lint/suspicious/noTemplateCurlyInString: kilo's `${env:NAME}` reference, not JS
                  headers: { Authorization: "Bearer ${env:GITHUB_PAT}" },
                },
              },
            },
          }),
        },
      },
      {
        name: "an MCP sse url of 2048 characters",
        req: { mcpServers: mcpOne(remote("sse", "https://mcp.example.com/".padEnd(2048, "a"))) },
      },
      { name: "MCP timeout 1", req: { mcpServers: mcpOne(stdio("npx", { timeoutSeconds: 1 })) } },
      {
        name: "MCP timeout 3600",
        req: { mcpServers: mcpOne(remote("sse", undefined, { timeoutSeconds: 3600 })) },
      },
      {
        name: "MCP server name of 64 characters",
        req: { mcpServers: mcpServers({ ["s".repeat(64)]: stdio() }) },
      },
      { name: "MCP stdio command of 1024 characters", req: { mcpServers: mcpOne(stdio("c".repeat(1024))) } },
      // upstream branch
      ...["main", "develop", "feature/x", "release-1.2", "v1.0_rc/fix.y", "a".repeat(255)].map((b) => ({
        name: `upstreamBranch ${b.length > 40 ? `of ${b.length} characters` : b}`,
        req: { upstreamBranch: b },
        stored: { upstreamBranch: b },
      })),
      // callback target
      {
        name: "callbackTarget over https with 20 headers",
        req: { callbackTarget: callback("https://example.com/callbacks/cloud-agent", headers(20)) },
        stored: { hasCallbackTarget: true },
      },
      {
        name: "callbackTarget url of 2048 characters",
        req: { callbackTarget: callback("https://example.com/".padEnd(2048, "a")) },
      },
      {
        name: "callbackTarget header value of 4096 characters",
        req: { callbackTarget: callback("https://example.com/cb", { Authorization: "v".repeat(4096) }) },
      },
      { name: "autoCommit", req: { autoCommit: true }, stored: { autoCommit: true } },
    ];

    it.each(named(accepted))("accepts %s", async (_, { req, stored }) => {
      const info = await prepareOk(validPrepare(req));
      if (stored) expect(info).toMatchObject(stored);
    });

    const rejected: Rejected[] = [
      // prompt
      { name: "an empty prompt", req: { prompt: "" }, field: "prompt" },
      {
        name: "a prompt of 102401 ASCII bytes",
        req: { prompt: "a".repeat(MAX_PROMPT_BYTES + 1) },
        field: "prompt",
      },
      {
        name: "a prompt of 102400 bytes of 2-byte characters plus one byte",
        req: { prompt: `${twoByteChars(MAX_PROMPT_BYTES)}a` },
        field: "prompt",
      },
      {
        // 51201 characters, but 102402 bytes: the limit is in bytes, not characters.
        name: "a prompt of 51201 2-byte characters",
        req: { prompt: twoByteChars(MAX_PROMPT_BYTES + 2) },
        field: "prompt",
      },
      { name: "a prompt with a NUL character", req: { prompt: "a\u0000b" }, field: "prompt" },
      // mode
      { name: "mode plan", req: { mode: "plan" }, field: "mode" },
      { name: "mode Code (case matters)", req: { mode: "Code" }, field: "mode" },
      { name: "an empty mode", req: { mode: "" }, field: "mode" },
      // model
      { name: "an empty model", req: { model: "" }, field: "model" },
      { name: "a model of 257 characters", req: { model: "m".repeat(257) }, field: "model" },
      { name: "a model with a space", req: { model: "claude sonnet" }, field: "model" },
      { name: "a model with a tab", req: { model: "claude\tsonnet" }, field: "model" },
      // repository: exactly one of githubRepo or gitUrl
      { name: "no repository", req: { repository: { case: undefined } }, field: "repository" },
      ...[
        "acme",
        "acme/",
        "/widgets",
        "acme/widgets/extra",
        "-acme/widgets",
        "ac me/widgets",
        "acme/wid gets",
        "acme/.",
        "acme/..",
        "https://github.com/acme/widgets",
        "github.com/acme/widgets",
        `${"o".repeat(40)}/widgets`,
        `acme/${"n".repeat(101)}`,
      ].map((value) => ({
        name: `githubRepo ${value.length > 50 ? `${value.slice(0, 12)}… (${value.length} chars)` : value}`,
        req: { repository: { case: "githubRepo" as const, value } },
        field: "github_repo",
      })),
      ...[
        "ssh://git@github.com/acme/widgets.git",
        "git@github.com:acme/widgets.git",
        "file:///srv/git/widgets.git",
        "https://user:pw@host.example.com/x",
        "https://token@host.example.com/x",
        "https://host.example.com/x.git?access_token=abc",
        "https://host.example.com/x.git#frag",
        "https://",
        "https:///acme/widgets.git",
        "HTTPS://git.example.com/acme/widgets.git",
        "",
        "https://git.example.com/".padEnd(2049, "a"),
      ].map((value) => ({
        name: `gitUrl ${value.length > 60 ? `of ${value.length} characters` : JSON.stringify(value)}`,
        req: { repository: { case: "gitUrl" as const, value } },
        field: "git_url",
      })),
      // tokens
      { name: "an empty githubToken", req: { githubToken: "" }, field: "github_token" },
      {
        name: "a githubToken of 4097 characters",
        req: { githubToken: "t".repeat(4097) },
        field: "github_token",
      },
      { name: "an empty gitToken", req: { gitToken: "" }, field: "git_token" },
      { name: "a gitToken of 4097 characters", req: { gitToken: "t".repeat(4097) }, field: "git_token" },
      // organization and bot ids
      ...["", "o".repeat(129), "-org", "_org", "org/x", "org id", "org:1"].flatMap((value) => [
        {
          name: `kilocodeOrganizationId ${value.length > 40 ? `of ${value.length} characters` : JSON.stringify(value)}`,
          req: { kilocodeOrganizationId: value },
          field: "kilocode_organization_id",
        },
        {
          name: `botId ${value.length > 40 ? `of ${value.length} characters` : JSON.stringify(value)}`,
          req: { botId: value },
          field: "bot_id",
        },
      ]),
      // env vars
      { name: "51 env vars", req: { envVars: envVars(51) }, field: "env_vars.values" },
      {
        name: "an env var key of 257 characters",
        req: { envVars: { values: { ["K".repeat(257)]: "v" } } },
        field: "env_vars.values",
      },
      {
        name: "an env var value of 257 characters",
        req: { envVars: { values: { K: "v".repeat(257) } } },
        field: 'env_vars.values["K"]',
      },
      ...["1ABC", "A-B", "A B", "A.B", "", "É"].map((key) => ({
        name: `env var key ${JSON.stringify(key)}`,
        req: { envVars: { values: { [key]: "v" } } },
        field: `env_vars.values[${JSON.stringify(key)}]`,
      })),
      ...["HOME", "SESSION_ID", "SESSION_HOME"].map((key) => ({
        name: `reserved env var ${key}`,
        req: { envVars: { values: { [key]: "/tmp" } } },
        field: `env_vars.values["${key}"]`,
      })),
      // encrypted secrets
      {
        name: "51 encrypted secrets",
        req: { encryptedSecrets: secrets(51) },
        field: "encrypted_secrets.values",
      },
      ...["HOME", "SESSION_ID", "SESSION_HOME", "1X", "A-B"].map((key) => ({
        name: `encrypted secret key ${key}`,
        req: { encryptedSecrets: { values: { [key]: SECRET } } },
        field: `encrypted_secrets.values["${key}"]`,
      })),
      ...(
        [
          ["algorithm aes-256-gcm", { algorithm: "aes-256-gcm" }, "algorithm"],
          ["an empty algorithm", { algorithm: "" }, "algorithm"],
          ["version 2", { version: 2 }, "version"],
          ["version 0", { version: 0 }, "version"],
          ["encryptedData that is not base64", { encryptedData: `${"!".repeat(44)}` }, "encrypted_data"],
          ["encryptedData in the url-safe alphabet", { encryptedData: `${b64(40)}-_-_` }, "encrypted_data"],
          [
            "encryptedData with a base64 length that is not a multiple of 4",
            { encryptedData: `${b64(44)}A` },
            "encrypted_data",
          ],
          [
            "encryptedData with padding in the middle",
            { encryptedData: `${b64(20)}==${b64(24)}` },
            "encrypted_data",
          ],
          [
            "encryptedData of 40 characters (less than IV + tag)",
            { encryptedData: b64(40) },
            "encrypted_data",
          ],
          ["encryptedData of 8196 characters", { encryptedData: b64(8196) }, "encrypted_data"],
          ["an empty encryptedDEK", { encryptedDek: "" }, "encrypted_dek"],
          ["encryptedDEK that is not base64", { encryptedDek: "not base64 at all!!" }, "encrypted_dek"],
          ["encryptedDEK of 2052 characters", { encryptedDek: b64(2052) }, "encrypted_dek"],
        ] as const
      ).map(([name, patch, field]) => ({
        name: `an encrypted secret with ${name}`,
        req: { encryptedSecrets: secretOne(patch) },
        field: `encrypted_secrets.values["API_KEY"].${field}`,
      })),
      // setup commands
      {
        name: "21 setup commands",
        req: { setupCommands: setupCommands(21) },
        field: "setup_commands.values",
      },
      {
        name: "a setup command of 501 characters",
        req: { setupCommands: setupCommands(1, 501) },
        field: "setup_commands.values[0]",
      },
      {
        name: "an empty setup command",
        req: { setupCommands: { values: ["npm ci", ""] } },
        field: "setup_commands.values[1]",
      },
      // MCP servers
      {
        name: "21 MCP servers",
        req: {
          mcpServers: mcpServers(
            record(
              21,
              (i) => `server-${i}`,
              () => stdio(),
            ),
          ),
        },
        field: "mcp_servers.values",
      },
      {
        name: "an MCP server without a transport",
        req: { mcpServers: mcpOne({}) },
        field: `${MCP_ONE}.transport`,
      },
      {
        name: "an MCP stdio server without a command",
        req: { mcpServers: mcpOne(stdio("")) },
        field: `${MCP_ONE}.stdio.command`,
      },
      {
        name: "an MCP stdio command of 1025 characters",
        req: { mcpServers: mcpOne(stdio("c".repeat(1025))) },
        field: `${MCP_ONE}.stdio.command`,
      },
      {
        name: "an MCP stdio server with an absolute cwd",
        req: { mcpServers: mcpOne({ transport: { case: "stdio", value: { command: "x", cwd: "/etc" } } }) },
        field: `${MCP_ONE}.stdio.cwd`,
      },
      {
        name: "an MCP stdio server with a cwd outside the workspace",
        req: {
          mcpServers: mcpOne({ transport: { case: "stdio", value: { command: "x", cwd: "tools/../../x" } } }),
        },
        field: `${MCP_ONE}.stdio.cwd`,
      },
      {
        name: "an MCP stdio env key 1A",
        req: {
          mcpServers: mcpOne({ transport: { case: "stdio", value: { command: "x", env: { "1A": "v" } } } }),
        },
        field: `${MCP_ONE}.stdio.env["1A"]`,
      },
      {
        name: "an MCP sse server over http",
        req: { mcpServers: mcpOne(remote("sse", "http://mcp.example.com/sse")) },
        field: `${MCP_ONE}.sse.url`,
      },
      {
        name: "an MCP streamable-http server over http",
        req: { mcpServers: mcpOne(remote("streamableHttp", "http://mcp.example.com/mcp")) },
        field: `${MCP_ONE}.streamable_http.url`,
      },
      {
        name: "an MCP sse server without a url",
        req: { mcpServers: mcpOne(remote("sse", "")) },
        field: `${MCP_ONE}.sse.url`,
      },
      {
        name: "an MCP sse server without a host",
        req: { mcpServers: mcpOne(remote("sse", "https://")) },
        field: `${MCP_ONE}.sse.url`,
      },
      {
        name: "an MCP server header name with a space",
        req: {
          mcpServers: mcpOne({
            transport: {
              case: "sse",
              value: { url: "https://mcp.example.com/", headers: { "Bad Header": "v" } },
            },
          }),
        },
        field: `${MCP_ONE}.sse.headers["Bad Header"]`,
      },
      {
        name: "MCP timeout 0",
        req: { mcpServers: mcpOne(stdio("npx", { timeoutSeconds: 0 })) },
        field: `${MCP_ONE}.timeout_seconds`,
      },
      {
        name: "MCP timeout 3601",
        req: { mcpServers: mcpOne(remote("sse", undefined, { timeoutSeconds: 3601 })) },
        field: `${MCP_ONE}.timeout_seconds`,
      },
      {
        name: "an MCP server name of 65 characters",
        req: { mcpServers: mcpServers({ ["s".repeat(65)]: stdio() }) },
        field: "mcp_servers.values",
      },
      {
        name: "an MCP server name with a space",
        req: { mcpServers: mcpServers({ "my server": stdio() }) },
        field: "mcp_servers.values",
      },
      // upstream branch: [A-Za-z0-9._/-], 1..255, a valid git branch name
      ...[
        "",
        "a".repeat(256),
        "-x",
        "/x",
        "a..b",
        "..",
        "a b",
        "a~1",
        "a:b",
        "a^b",
        "a@{1}",
        // Rejected by `git check-ref-format --branch` as well: no remote branch can have these names.
        "a//b",
        "a.lock",
        "feature/x.lock",
        "a/",
        "a.",
        ".a",
        "a/.b",
      ].map((value) => ({
        name: `upstreamBranch ${value.length > 40 ? `of ${value.length} characters` : JSON.stringify(value)}`,
        req: { upstreamBranch: value },
        field: "upstream_branch",
      })),
      // callback target
      { name: "a callback without a url", req: { callbackTarget: {} }, field: "callback_target.url" },
      {
        name: "a callback without a host",
        req: { callbackTarget: callback("https://") },
        field: "callback_target.url",
      },
      {
        name: "a callback to a relative url",
        req: { callbackTarget: callback("/cb") },
        field: "callback_target.url",
      },
      {
        name: "a callback url of 2049 characters",
        req: { callbackTarget: callback("https://example.com/".padEnd(2049, "a")) },
        field: "callback_target.url",
      },
      {
        name: "a callback with 21 headers",
        req: { callbackTarget: callback("https://example.com/cb", headers(21)) },
        field: "callback_target.headers",
      },
      {
        name: "a callback header name with a space",
        req: { callbackTarget: callback("https://example.com/cb", { "Bad Header": "v" }) },
        field: 'callback_target.headers["Bad Header"]',
      },
      {
        name: "a callback header value of 4097 characters",
        req: { callbackTarget: callback("https://example.com/cb", { Authorization: "v".repeat(4097) }) },
        field: 'callback_target.headers["Authorization"]',
      },
    ];

    it.each(named(rejected))("rejects %s and stores nothing", async (_, { req, field }) => {
      await expectPrepareInvalid(validPrepare(req), field);
    });

    // The scheme and address rules of callbacks are the deployment's policy (https only and
    // public addresses by default), checked by the session service before it stores anything.
    it.each([
      ["over http", "http://example.com/cb"],
      ["to a loopback address", "https://127.0.0.1/cb"],
      ["to the metadata address", "https://169.254.169.254/latest/meta-data"],
      ["to a private address", "https://10.0.0.7/cb"],
      ["to localhost", "https://localhost/cb"],
    ])("refuses a callback %s by policy and stores nothing", async (_, url) => {
      const before = await sessionCount();
      await expectInvalid(
        client().prepareSession(validPrepare({ callbackTarget: callback(url) })),
        "callback_target.url",
      );
      expect(await sessionCount()).toBe(before);
    });

    it("refuses an http git URL by policy (https only unless the deployment allows it) and stores nothing", async () => {
      const before = await sessionCount();
      await expectInvalid(
        client().prepareSession(
          validPrepare({ repository: { case: "gitUrl", value: "http://git.example.com/acme/widgets.git" } }),
        ),
        "git_url",
      );
      expect(await sessionCount()).toBe(before);
    });

    it("rejects both githubRepo and gitUrl (only expressible in JSON) and stores nothing", async () => {
      const before = await sessionCount();
      const res = await fetch(`${stack.gatewayUrl}/kilocode.cloudagent.v1.SessionService/PrepareSession`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${await stack.tokenFor(USER)}`,
          "x-internal-api-key": INTERNAL_API_KEY,
        },
        body: JSON.stringify({
          prompt: "p",
          mode: "code",
          model: "m",
          githubRepo: "acme/widgets",
          gitUrl: "https://git.example.com/acme/widgets.git",
        }),
      });
      expect(res.status).toBe(400);
      const body = (await res.json()) as { code: string; message: string };
      expect(body.code).toBe("invalid_argument");
      expect(body.message).toContain("repository");
      expect(await sessionCount()).toBe(before);
    });

    it("reports every violation of a request at once", async () => {
      const err = await expectInvalid(
        client().prepareSession(validPrepare({ prompt: "", mode: "plan", model: "a b" })),
        "prompt",
      );
      expect(err.rawMessage).toContain("mode");
      expect(err.rawMessage).toContain("model");
    });
  });

  // -------------------------------------------------------------------------------------
  describe("PrepareLegacySession", () => {
    const legacy = (
      session: PrepareInit | undefined,
      kiloSessionId = "601313d3-0dd7-4d4c-af24-5e0014398a86",
    ) => ({
      cloudAgentSessionId: `agent_${crypto.randomUUID()}`,
      kiloSessionId,
      ...(session ? { session } : {}),
    });

    it("accepts a legacy session whose prompt is at the limit", async () => {
      const res = await client().prepareLegacySession(
        legacy(validPrepare({ prompt: "a".repeat(MAX_PROMPT_BYTES) })),
      );
      expect(res.cloudAgentSessionId).toMatch(/^agent_/);
    });

    it.each(
      named([
        { name: "without a session", req: () => legacy(undefined), field: "session" },
        {
          name: "whose prompt is one byte past the limit",
          req: () => legacy(validPrepare({ prompt: "a".repeat(MAX_PROMPT_BYTES + 1) })),
          field: "session.prompt",
        },
        {
          name: "whose env vars include HOME",
          req: () => legacy(validPrepare({ envVars: { values: { HOME: "/" } } })),
          field: 'session.env_vars.values["HOME"]',
        },
        {
          name: "with kiloSessionId of 129 characters",
          req: () => legacy(validPrepare(), "k".repeat(129)),
          field: "kilo_session_id",
        },
        {
          name: "with an id agent_x",
          req: () => ({ ...legacy(validPrepare()), cloudAgentSessionId: "agent_x" }),
          field: "cloud_agent_session_id",
        },
      ]),
    )("rejects a legacy session %s and stores nothing", async (_, { req, field }) => {
      const before = await sessionCount();
      await expectInvalid(client().prepareLegacySession(req()), field);
      expect(await sessionCount()).toBe(before);
    });
  });

  // -------------------------------------------------------------------------------------
  describe("UpdateSession", () => {
    let id: string;
    const update = (req: Omit<UpdateInit, "cloudAgentSessionId">) =>
      client().updateSession({ cloudAgentSessionId: id, ...req });
    const version = async () => (await client().getSession({ cloudAgentSessionId: id })).session!.version;

    beforeAll(async () => {
      ({ cloudAgentSessionId: id } = await client().prepareSession(validPrepare()));
    });

    type Accepted = {
      name: string;
      req: Omit<UpdateInit, "cloudAgentSessionId">;
      stored?: Partial<SessionInfo>;
    };
    type Rejected = { name: string; req: Omit<UpdateInit, "cloudAgentSessionId">; field: string };

    const accepted: Accepted[] = [
      { name: "mode orchestrator", req: { mode: "orchestrator" }, stored: { mode: "orchestrator" } },
      { name: "a model of 256 characters", req: { model: "m".repeat(256) } },
      { name: "50 env vars", req: { envVars: envVars(50) }, stored: { envVarCount: 50 } },
      {
        name: "50 encrypted secrets",
        req: { encryptedSecrets: secrets(50) },
        stored: { encryptedSecretCount: 50 },
      },
      {
        name: "20 setup commands of 500 characters",
        req: { setupCommands: setupCommands(20, 500) },
        stored: { setupCommandCount: 20 },
      },
      {
        name: "20 MCP servers",
        req: {
          mcpServers: mcpServers(
            record(
              20,
              (i) => `s${i}`,
              () => remote("sse", undefined, { timeoutSeconds: 3600 }),
            ),
          ),
        },
        stored: { mcpServerCount: 20 },
      },
      {
        name: "a githubToken of 4096 characters",
        req: { githubToken: "t".repeat(4096) },
        stored: { hasGithubToken: true },
      },
      {
        name: "a gitToken of 4096 characters",
        req: { gitToken: "t".repeat(4096) },
        stored: { hasGitToken: true },
      },
      {
        name: "clearing all five scalar fields",
        req: {
          clear: [
            SessionField.MODE,
            SessionField.MODEL,
            SessionField.GITHUB_TOKEN,
            SessionField.GIT_TOKEN,
            SessionField.AUTO_COMMIT,
          ],
        },
        stored: { hasGithubToken: false, hasGitToken: false },
      },
      {
        name: "empty collections (clear all)",
        req: { envVars: {}, setupCommands: {} },
        stored: { envVarCount: 0, setupCommandCount: 0 },
      },
    ];

    it.each(named(accepted))("accepts %s", async (_, { req, stored }) => {
      const { session } = await update(req);
      if (stored) expect(session).toMatchObject(stored);
    });

    it("accepts expectedVersion equal to the current version", async () => {
      const v = await version();
      const { session } = await update({ expectedVersion: v, autoCommit: true });
      expect(session?.version).toBe(v + 1n);
    });

    const rejected: Rejected[] = [
      { name: "mode plan", req: { mode: "plan" }, field: "mode" },
      { name: "an empty mode", req: { mode: "" }, field: "mode" },
      { name: "a model of 257 characters", req: { model: "m".repeat(257) }, field: "model" },
      { name: "a model with a space", req: { model: "a b" }, field: "model" },
      { name: "51 env vars", req: { envVars: envVars(51) }, field: "env_vars.values" },
      { name: "env var HOME", req: { envVars: { values: { HOME: "/" } } }, field: 'env_vars.values["HOME"]' },
      {
        name: "an env var value of 257 characters",
        req: { envVars: { values: { K: "v".repeat(257) } } },
        field: 'env_vars.values["K"]',
      },
      {
        name: "51 encrypted secrets",
        req: { encryptedSecrets: secrets(51) },
        field: "encrypted_secrets.values",
      },
      {
        name: "a secret with version 2",
        req: { encryptedSecrets: secretOne({ version: 2 }) },
        field: 'encrypted_secrets.values["API_KEY"].version',
      },
      {
        name: "21 setup commands",
        req: { setupCommands: setupCommands(21) },
        field: "setup_commands.values",
      },
      {
        name: "a setup command of 501 characters",
        req: { setupCommands: setupCommands(1, 501) },
        field: "setup_commands.values[0]",
      },
      {
        name: "MCP timeout 3601",
        req: { mcpServers: mcpOne(stdio("npx", { timeoutSeconds: 3601 })) },
        field: `${MCP_ONE}.timeout_seconds`,
      },
      {
        name: "21 MCP servers",
        req: {
          mcpServers: mcpServers(
            record(
              21,
              (i) => `s${i}`,
              () => stdio(),
            ),
          ),
        },
        field: "mcp_servers.values",
      },
      {
        name: "a githubToken of 4097 characters",
        req: { githubToken: "t".repeat(4097) },
        field: "github_token",
      },
      { name: "an empty gitToken", req: { gitToken: "" }, field: "git_token" },
      { name: "expectedVersion 0", req: { expectedVersion: 0n }, field: "expected_version" },
      {
        name: "clearing SESSION_FIELD_UNSPECIFIED",
        req: { clear: [SessionField.UNSPECIFIED] },
        field: "clear[0]",
      },
      { name: "clearing an undefined field", req: { clear: [99 as SessionField] }, field: "clear[0]" },
      {
        name: "clearing a field twice",
        req: { clear: [SessionField.MODE, SessionField.MODE] },
        field: "clear",
      },
      // A field cannot be both set and cleared; the message says which one.
      { name: "setting and clearing mode", req: { mode: "code", clear: [SessionField.MODE] }, field: "mode" },
      {
        name: "setting and clearing model",
        req: { model: "m", clear: [SessionField.MODEL] },
        field: "model",
      },
      {
        name: "setting and clearing githubToken",
        req: { githubToken: "t", clear: [SessionField.GITHUB_TOKEN] },
        field: "github_token",
      },
      {
        name: "setting and clearing gitToken",
        req: { gitToken: "t", clear: [SessionField.GIT_TOKEN] },
        field: "git_token",
      },
      {
        name: "setting and clearing autoCommit",
        req: { autoCommit: false, clear: [SessionField.AUTO_COMMIT] },
        field: "auto_commit",
      },
    ];

    it.each(named(rejected))("rejects %s and changes nothing", async (_, { req, field }) => {
      const before = await version();
      await expectInvalid(update(req), field);
      expect(await version()).toBe(before);
    });

    it("rejects a malformed session id", async () => {
      await expectInvalid(
        client().updateSession({ cloudAgentSessionId: "agent_x", mode: "code" }),
        "cloud_agent_session_id",
      );
    });
  });

  // -------------------------------------------------------------------------------------
  describe("SendMessage", () => {
    let id: string;
    const send = (req: { prompt: string; mode?: string; model?: string }) =>
      client().sendMessage({ cloudAgentSessionId: id, ...req });

    beforeAll(async () => {
      ({ cloudAgentSessionId: id } = await client().prepareSession(validPrepare()));
    });

    it.each(
      named([
        { name: "a prompt of 102400 ASCII bytes", req: { prompt: "a".repeat(MAX_PROMPT_BYTES) } },
        {
          name: "a prompt of 102400 bytes of 2-byte characters",
          req: { prompt: twoByteChars(MAX_PROMPT_BYTES) },
        },
        {
          name: "mode ask and a model of 256 characters",
          req: { prompt: "p", mode: "ask", model: "m".repeat(256) },
        },
      ]),
    )("passes validation with %s", async (_, { req }) => {
      await expectValidated(send(req));
    });

    it.each(
      named([
        { name: "an empty prompt", req: { prompt: "" }, field: "prompt" },
        {
          name: "a prompt of 102401 ASCII bytes",
          req: { prompt: "a".repeat(MAX_PROMPT_BYTES + 1) },
          field: "prompt",
        },
        {
          name: "a prompt of 102400 bytes of 2-byte characters plus one byte",
          req: { prompt: `${twoByteChars(MAX_PROMPT_BYTES)}a` },
          field: "prompt",
        },
        { name: "mode plan", req: { prompt: "p", mode: "plan" }, field: "mode" },
        { name: "a model with a space", req: { prompt: "p", model: "a b" }, field: "model" },
        { name: "a model of 257 characters", req: { prompt: "p", model: "m".repeat(257) }, field: "model" },
      ]),
    )("rejects %s", async (_, { req, field }) => {
      await expectInvalid(send(req), field);
    });
  });

  // -------------------------------------------------------------------------------------
  describe("session ids", () => {
    it("accepts a well-formed id (NOT_FOUND from the session service, not INVALID_ARGUMENT)", async () => {
      const mark = stack.logs.length;
      const err = ConnectError.from(
        await client()
          .getSession({ cloudAgentSessionId: UNKNOWN_SESSION_ID })
          .catch((e: unknown) => e),
      );
      expect(err.code).toBe(Code.NotFound);
      // The control for the "never reached the session service" checks: this one did.
      expect(sessionServiceLines(mark, "GetSession")).toHaveLength(1);
    });

    it.each([
      "agent_x",
      "",
      "123e4567-e89b-12d3-a456-426614174000",
      "agent_123E4567-E89B-12D3-A456-426614174000",
      "agent_123e4567e89b12d3a456426614174000",
      `${UNKNOWN_SESSION_ID}0`,
      ` ${UNKNOWN_SESSION_ID}`,
    ])("GetSession rejects %j at the gateway", async (cloudAgentSessionId) => {
      const mark = stack.logs.length;
      await expectInvalid(client().getSession({ cloudAgentSessionId }), "cloud_agent_session_id");
      expect(sessionServiceLines(mark, "GetSession")).toEqual([]);
    });

    it.each([
      ["DeleteSession", () => client().deleteSession({ cloudAgentSessionId: "agent_x" })],
      ["InitiateSession", () => client().initiateSession({ cloudAgentSessionId: "agent_x" })],
      ["InterruptSession", () => client().interruptSession({ cloudAgentSessionId: "agent_x" })],
      ["CreateStreamTicket", () => client().createStreamTicket({ cloudAgentSessionId: "agent_x" })],
      ["SendMessage", () => client().sendMessage({ cloudAgentSessionId: "agent_x", prompt: "p" })],
    ] as const)("%s rejects agent_x", async (_method, call) => {
      await expectInvalid(call(), "cloud_agent_session_id");
    });
  });

  // -------------------------------------------------------------------------------------
  describe.each<Protocol>(["connect", "grpc", "grpc-web"])("over %s", (protocol) => {
    it("accepts a prompt of 102400 bytes", async () => {
      const info = await prepareOk(validPrepare({ prompt: twoByteChars(MAX_PROMPT_BYTES) }), protocol);
      expect(info.prompt).toHaveLength(MAX_PROMPT_BYTES / 2);
    });

    it("rejects a prompt of 102401 bytes and stores nothing", async () => {
      await expectPrepareInvalid(
        validPrepare({ prompt: "a".repeat(MAX_PROMPT_BYTES + 1) }),
        "prompt",
        protocol,
      );
    });

    it("rejects a reserved env var and stores nothing", async () => {
      await expectPrepareInvalid(
        validPrepare({ envVars: { values: { SESSION_HOME: "/" } } }),
        'env_vars.values["SESSION_HOME"]',
        protocol,
      );
    });

    it("rejects a malformed session id on GetSession", async () => {
      await expectInvalid(
        client(protocol).getSession({ cloudAgentSessionId: "agent_x" }),
        "cloud_agent_session_id",
      );
    });
  });
});
