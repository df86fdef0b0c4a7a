import {
  type DescMessage,
  fromJson,
  type JsonObject,
  type JsonValue,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  PrepareLegacySessionRequestSchema,
  PrepareSessionRequestSchema,
  SendMessageRequestSchema,
  SessionField,
  UpdateSessionRequestSchema,
} from "@kilo-cloud/proto";
import { badRequest, camelFieldNames } from "./errors.js";

/**
 * The hosted product's JSON inputs, translated field by field into our requests' JSON
 * (ProtoJSON). Only shapes are translated here: every rule (lengths, patterns, limits,
 * exactly-one-repository…) is the Connect API's protovalidate check, done by the session
 * service. Unknown keys are dropped, as the hosted product's zod objects do.
 */

type Json = Record<string, unknown>;

export function asObject(input: unknown, what = "input"): Json {
  if (input === null || typeof input !== "object" || Array.isArray(input)) {
    throw badRequest(`${what}: must be a JSON object`);
  }
  return input as Json;
}

/** Parses ProtoJSON into a request; a wrongly typed field is BAD_REQUEST naming it. */
function parse<D extends DescMessage>(schema: D, json: Json): MessageShape<D> {
  try {
    return fromJson(schema, json as JsonObject, { ignoreUnknownFields: true });
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    if (/oneof/.test(text) && json.githubRepo !== undefined && json.gitUrl !== undefined) {
      throw badRequest("repository: must provide either githubRepo or gitUrl, but not both");
    }
    const field = /field ([\w.]+)/.exec(text)?.[1]?.split(".").pop();
    throw badRequest(
      field ? `${camelFieldNames(field)}: has the wrong type` : "input: does not have the expected shape",
    );
  }
}

/** Copies the keys that are present (and not null) under the same name. */
function pick(input: Json, keys: readonly string[]): Json {
  const out: Json = {};
  for (const k of keys) if (input[k] !== undefined && input[k] !== null) out[k] = input[k];
  return out;
}

/** Hosted MCP config (`type` + flat fields) → our oneof transport. */
function mcpServer(raw: unknown, name: string): Json {
  const s = asObject(raw, `mcpServers.${name}`);
  const common = {
    ...(s.timeout !== undefined ? { timeoutSeconds: s.timeout } : {}),
    ...pick(s, ["disabled", "alwaysAllow"]),
  };
  if (s.type === "sse" || s.type === "streamable-http") {
    const remote = pick(s, ["url", "headers"]);
    return { ...common, [s.type === "sse" ? "sse" : "streamableHttp"]: remote };
  }
  if (s.type !== undefined && s.type !== "stdio") {
    throw badRequest(`mcpServers.${name}.type: must be one of stdio, sse, streamable-http`);
  }
  return { ...common, stdio: pick(s, ["command", "args", "env", "cwd"]) };
}

function mcpServers(raw: unknown): Json {
  const values: Json = {};
  for (const [name, server] of Object.entries(asObject(raw, "mcpServers"))) {
    values[name] = mcpServer(server, name);
  }
  return { values };
}

/** Collections: `{values: …}` wrappers; null or empty means "none" (cleared on update). */
function collections(input: Json): Json {
  const out: Json = {};
  const wrap = (key: string, empty: JsonValue) => {
    if (input[key] === undefined) return;
    out[key] = { values: input[key] ?? empty };
  };
  wrap("envVars", {});
  wrap("encryptedSecrets", {});
  wrap("setupCommands", []);
  if (input.mcpServers !== undefined) {
    out.mcpServers = input.mcpServers === null ? { values: {} } : mcpServers(input.mcpServers);
  }
  return out;
}

const PREPARE_SCALARS = [
  "prompt",
  "mode",
  "model",
  "githubRepo",
  "gitUrl",
  "githubToken",
  "gitToken",
  "kilocodeOrganizationId",
  "upstreamBranch",
  "autoCommit",
  "callbackTarget",
] as const;

function prepareJson(input: Json): Json {
  return { ...pick(input, PREPARE_SCALARS), ...collections(input) };
}

export function prepareSessionRequest(raw: unknown) {
  return parse(PrepareSessionRequestSchema, prepareJson(asObject(raw)));
}

export function prepareLegacySessionRequest(raw: unknown) {
  const input = asObject(raw);
  return parse(PrepareLegacySessionRequestSchema, {
    ...pick(input, ["cloudAgentSessionId", "kiloSessionId"]),
    session: prepareJson(input),
  });
}

/** Hosted scalars that `null` clears, and the field our UpdateSession clears for each. */
const CLEARABLE: Record<string, SessionField> = {
  mode: SessionField.MODE,
  model: SessionField.MODEL,
  githubToken: SessionField.GITHUB_TOKEN,
  gitToken: SessionField.GIT_TOKEN,
  autoCommit: SessionField.AUTO_COMMIT,
};

/** Hosted update fields this server keeps fixed after prepare (see the README). */
const NOT_UPDATABLE = ["upstreamBranch", "condenseOnComplete", "appendSystemPrompt", "callbackTarget"];

export function updateSessionRequest(raw: unknown) {
  const input = asObject(raw);
  for (const key of NOT_UPDATABLE) {
    if (input[key] !== undefined)
      throw badRequest(`${key}: cannot be changed by updateSession on this server`);
  }
  const clear = Object.keys(CLEARABLE)
    .filter((k) => input[k] === null)
    .map((k) => SessionField[CLEARABLE[k] as SessionField]);
  return parse(UpdateSessionRequestSchema, {
    ...pick(input, ["cloudAgentSessionId", ...Object.keys(CLEARABLE)]),
    ...collections(input),
    ...(clear.length > 0 ? { clear: clear.map((name) => `SESSION_FIELD_${name}`) } : {}),
  });
}

export function sendMessageRequest(raw: unknown) {
  return parse(
    SendMessageRequestSchema,
    pick(asObject(raw), ["cloudAgentSessionId", "prompt", "mode", "model"]),
  );
}

/** `{sessionId}` (interruptSession, deleteSession, logs) → our `cloudAgentSessionId`. */
export function bySessionId<D extends DescMessage>(schema: D, raw: unknown): MessageShape<D> {
  const { sessionId } = asObject(raw);
  if (typeof sessionId !== "string") throw badRequest("sessionId: must be a session id (agent_<uuid>)");
  return parse(schema, { cloudAgentSessionId: sessionId });
}

export function byCloudAgentSessionId<D extends DescMessage>(schema: D, raw: unknown): MessageShape<D> {
  return parse(schema, pick(asObject(raw), ["cloudAgentSessionId"]));
}
