import { timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A scripted OpenAI-compatible chat-completions server for driving the real `kilo` binary
 * in tests. Kilo's `@ai-sdk/openai-compatible` provider posts to `<baseURL>/chat/completions`
 * with `stream: true` and reads SSE `chat.completion.chunk`s; a test decides what the
 * "model" answers with a script, so a whole kilo run is deterministic and offline.
 */

// ---- request shapes (only what tests look at; everything else stays in the raw body) ----

export interface ChatContentPart {
  type: string;
  text?: string;
  [key: string]: unknown;
}

export interface ChatToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool" | (string & {});
  content?: string | ChatContentPart[] | null;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
  [key: string]: unknown;
}

export interface ChatTool {
  type: "function";
  function: { name: string; description?: string; parameters?: unknown };
}

export interface ChatCompletionRequest {
  model: string;
  messages: ChatMessage[];
  tools?: ChatTool[];
  stream?: boolean;
  [key: string]: unknown;
}

export interface ModelUsage {
  prompt_tokens: number;
  completion_tokens: number;
}

// ---- replies a script can give ----

export type ModelReply =
  | {
      /** Streamed as `delta.tool_calls` with the arguments split over several chunks. */
      toolCall: { name: string; arguments: Record<string, unknown> | string; id?: string };
      usage?: ModelUsage;
      delayMs?: number;
    }
  | { text: string; usage?: ModelUsage; delayMs?: number }
  | {
      /** An HTTP error shaped like OpenAI's; kilo fails at once on 4xx and retries 5xx. */
      status: number;
      message?: string;
      /** Replaces the OpenAI-style error body entirely. */
      body?: unknown;
    }
  /** Never answers: for the service's own timeouts (kilo itself waits forever). */
  | { hang: true };

export interface ScriptContext {
  /** 0-based index of this request among all chat-completion requests the server saw. */
  index: number;
  /** Every request recorded before this one (including refused ones). */
  previous: readonly RecordedRequest[];
}

export type ModelScript = (
  request: ChatCompletionRequest,
  ctx: ScriptContext,
) => ModelReply | Promise<ModelReply>;

export interface RecordedRequest {
  path: string;
  headers: IncomingHttpHeaders;
  /** Undefined only when the body was not valid JSON. */
  body: ChatCompletionRequest | undefined;
  /** False when the API key check refused the request (the script was not asked). */
  authorized: boolean;
  reply?: ModelReply;
  /** Set when the script threw or the body was unusable; the client got a 400. */
  error?: string;
  receivedAt: number;
}

export interface ModelServerOptions {
  /** Defaults to {@link defaultScript}(). */
  script?: ModelScript;
  /** When set, requests must carry `Authorization: Bearer <apiKey>`; others get a 401. */
  apiKey?: string;
  /** Usage reported when a reply does not give its own. Kilo shows these in step_finish.tokens. */
  usage?: ModelUsage;
  /** The address to listen on (default 127.0.0.1), e.g. a test cluster's bridge address for pods. */
  host?: string;
}

export interface ModelServer extends AsyncDisposable {
  /** The provider's baseURL, ending in `/v1`. */
  readonly url: string;
  readonly requests: readonly RecordedRequest[];
  /** Replaces the script, e.g. to make the second run of a session fail. */
  setScript(script: ModelScript): void;
  /** Resolves with the first recorded request (already seen or future) that matches. */
  waitForRequest(
    predicate?: (request: RecordedRequest) => boolean,
    opts?: { timeoutMs?: number },
  ): Promise<RecordedRequest>;
  close(): Promise<void>;
}

const DEFAULT_USAGE: ModelUsage = { prompt_tokens: 100, completion_tokens: 10 };
const MAX_BODY_BYTES = 32 * 1024 * 1024;

/** The text of a message, whether the SDK sent a plain string or content parts. */
export function messageText(message: ChatMessage): string {
  const { content } = message;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((p) => (typeof p.text === "string" ? p.text : ""))
    .filter(Boolean)
    .join("\n");
}

export interface DefaultScriptOptions {
  /** File the `write` call creates on the n-th user turn (1-based). Default `hello<n>.txt`. */
  filePath?: (userTurn: number) => string;
  content?: string;
  /** Answer to a tool result. */
  finalText?: string;
  /** Answer to requests that offer no `write` tool (the ask agent; a title request, if kilo makes one). */
  plainText?: string;
}

/**
 * A complete, deterministic kilo run: each user turn gets a `write` call, each tool result a
 * short text. The file name counts user messages in the request, so a continued session (which
 * resends its history) writes `hello2.txt` on its second run: a visible proof that kilo
 * really carried the earlier turns over.
 */
export function defaultScript(opts: DefaultScriptOptions = {}): ModelScript {
  const filePath = opts.filePath ?? ((n: number) => `hello${n}.txt`);
  const content = opts.content ?? "hello from mock\n";
  const finalText = opts.finalText ?? "Done: wrote the file.";
  const plainText = opts.plainText ?? "Mock title";
  return (req) => {
    const last = req.messages.at(-1);
    if (last?.role === "tool") return { text: finalText };
    const offersWrite = req.tools?.some((t) => t.function?.name === "write") ?? false;
    if (!offersWrite) return { text: plainText };
    const userTurns = req.messages.filter((m) => m.role === "user").length;
    return { toolCall: { name: "write", arguments: { filePath: filePath(userTurns), content } } };
  };
}

export async function startModelServer(opts: ModelServerOptions = {}): Promise<ModelServer> {
  let script = opts.script ?? defaultScript();
  const usageDefault = opts.usage ?? DEFAULT_USAGE;
  const expectedAuth = opts.apiKey === undefined ? undefined : Buffer.from(`Bearer ${opts.apiKey}`);
  const requests: RecordedRequest[] = [];
  const waiters = new Set<(r: RecordedRequest) => void>();
  // Tool call ids count across the server's life, like a real provider's never repeat.
  let toolCallCounter = 0;
  let chunkCounter = 0;

  const notify = (r: RecordedRequest) => {
    for (const w of [...waiters]) w(r);
  };

  const isAuthorized = (headers: IncomingHttpHeaders): boolean => {
    if (!expectedAuth) return true;
    const got = Buffer.from(headers.authorization ?? "");
    return got.length === expectedAuth.length && timingSafeEqual(got, expectedAuth);
  };

  const handleCompletion = async (req: IncomingMessage, res: ServerResponse, path: string) => {
    const raw = await readBody(req);
    const receivedAt = Date.now();
    let body: ChatCompletionRequest | undefined;
    try {
      const parsed: unknown = JSON.parse(raw.toString("utf8"));
      if (isChatRequest(parsed)) body = parsed;
    } catch {
      // Reported below as a 400 like a real provider would.
    }
    const authorized = isAuthorized(req.headers);
    const entry: RecordedRequest = { path, headers: req.headers, body, authorized, receivedAt };
    // Recorded on arrival so concurrent requests (kilo asks for a title beside the main turn)
    // keep their arrival order; waiters hear of it once the reply is decided.
    const index = requests.push(entry) - 1;
    const previous = requests.slice(0, index);
    if (!authorized) {
      notify(entry);
      sendJson(res, 401, {
        error: {
          message: "Incorrect API key provided.",
          type: "invalid_request_error",
          code: "invalid_api_key",
        },
      });
      return;
    }
    if (!body) {
      entry.error = "request body is not a chat-completions request";
      notify(entry);
      sendJson(res, 400, openAiError(400, entry.error));
      return;
    }
    let reply: ModelReply;
    try {
      reply = await script(body, { index, previous });
    } catch (err) {
      // A 400 rather than a 500: kilo retries 5xx for about 90 s, which would hide the bug.
      entry.error = `mock script failed: ${err instanceof Error ? err.message : String(err)}`;
      notify(entry);
      sendJson(res, 400, openAiError(400, entry.error));
      return;
    }
    entry.reply = reply;
    notify(entry);

    if ("hang" in reply) return; // close() destroys the socket.
    if ("status" in reply) {
      sendJson(res, reply.status, reply.body ?? openAiError(reply.status, reply.message));
      return;
    }
    if (reply.delayMs) await sleep(reply.delayMs);
    if (res.destroyed) return;

    const usage = reply.usage ?? usageDefault;
    const id = `chatcmpl-mock-${++chunkCounter}`;
    const created = Math.floor(receivedAt / 1000);
    const model = body.model;
    if ("toolCall" in reply) {
      const call = reply.toolCall;
      const callId = call.id ?? `call_${++toolCallCounter}`;
      const args = typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments);
      if (body.stream) {
        const chunks: unknown[] = [
          chunk(id, created, model, {
            role: "assistant",
            content: null,
            tool_calls: [
              { index: 0, id: callId, type: "function", function: { name: call.name, arguments: "" } },
            ],
          }),
          ...splitPieces(args).map((piece) =>
            chunk(id, created, model, { tool_calls: [{ index: 0, function: { arguments: piece } }] }),
          ),
          chunk(id, created, model, {}, "tool_calls"),
          usageChunk(id, created, model, usage),
        ];
        sendStream(res, chunks);
      } else {
        sendJson(
          res,
          200,
          completion(id, created, model, usage, "tool_calls", {
            role: "assistant",
            content: null,
            tool_calls: [{ id: callId, type: "function", function: { name: call.name, arguments: args } }],
          }),
        );
      }
      return;
    }
    if (body.stream) {
      sendStream(res, [
        chunk(id, created, model, { role: "assistant", content: "" }),
        ...splitPieces(reply.text).map((piece) => chunk(id, created, model, { content: piece })),
        chunk(id, created, model, {}, "stop"),
        usageChunk(id, created, model, usage),
      ]);
    } else {
      sendJson(
        res,
        200,
        completion(id, created, model, usage, "stop", { role: "assistant", content: reply.text }),
      );
    }
  };

  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0] ?? "/";
    if (req.method === "POST" && path === "/v1/chat/completions") {
      handleCompletion(req, res, path).catch((err: unknown) => {
        if (!res.headersSent) sendJson(res, 500, openAiError(500, String(err)));
        else res.destroy();
      });
      return;
    }
    if (req.method === "GET" && path === "/v1/models") {
      if (!isAuthorized(req.headers))
        return sendJson(res, 401, openAiError(401, "Incorrect API key provided."));
      return sendJson(res, 200, { object: "list", data: [] });
    }
    req.resume();
    sendJson(res, 404, openAiError(404, `no route for ${req.method} ${path}`));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, opts.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  let closed: Promise<void> | undefined;
  const close = () => {
    closed ??= new Promise<void>((resolve) => {
      // Hanging replies keep sockets open forever; cut them so close() returns.
      server.closeAllConnections();
      server.close(() => resolve());
    });
    return closed;
  };

  return {
    url: `http://${opts.host ?? "127.0.0.1"}:${port}/v1`,
    requests,
    setScript(s) {
      script = s;
    },
    waitForRequest(predicate = () => true, { timeoutMs = 60_000 } = {}) {
      const seen = requests.find(predicate);
      if (seen) return Promise.resolve(seen);
      return new Promise<RecordedRequest>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`model server: no matching request within ${timeoutMs} ms`));
        }, timeoutMs);
        const waiter = (r: RecordedRequest) => {
          if (!predicate(r)) return;
          clearTimeout(timer);
          waiters.delete(waiter);
          resolve(r);
        };
        waiters.add(waiter);
      });
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

// ---- kilo configuration ----

export interface KiloProviderConfigOptions {
  /** Default `sk-mock`. May be `{env:NAME}` so the key stays out of the config text. */
  apiKey?: string;
  /** Default `mock`. */
  providerId?: string;
  /** Default `mock-model`. Must not contain `gpt-`: kilo then swaps `edit` for `apply_patch`. */
  modelId?: string;
  /** Merged over `{bash: "allow", external_directory: "deny"}`. */
  permission?: Record<string, unknown>;
  /** Kilo's `mcp` config key, passed through. */
  mcp?: Record<string, unknown>;
}

export interface KiloConfig {
  $schema: string;
  model: string;
  small_model: string;
  enabled_providers: string[];
  autoupdate: false;
  share: "disabled";
  experimental: { openTelemetry: false };
  provider: Record<string, unknown>;
  permission: Record<string, unknown>;
  mcp?: Record<string, unknown>;
}

/**
 * Kilo config (for `KILO_CONFIG_CONTENT`) that points kilo at a loopback model server and
 * switches off everything that would reach the network (models.dev, autoupdate, sharing,
 * telemetry). `external_directory: deny` keeps `--auto` runs inside the workspace.
 */
export function kiloProviderConfig(baseUrl: string, opts: KiloProviderConfigOptions = {}): KiloConfig {
  const providerId = opts.providerId ?? "mock";
  const modelId = opts.modelId ?? "mock-model";
  if (modelId.includes("gpt-")) {
    throw new Error(
      `model id "${modelId}" contains "gpt-", which makes kilo use apply_patch instead of edit`,
    );
  }
  new URL(baseUrl); // fail here, not deep inside kilo, on a malformed URL
  const config: KiloConfig = {
    $schema: "https://app.kilo.ai/config.json",
    model: `${providerId}/${modelId}`,
    small_model: `${providerId}/${modelId}`,
    enabled_providers: [providerId],
    autoupdate: false,
    share: "disabled",
    experimental: { openTelemetry: false },
    provider: {
      [providerId]: {
        npm: "@ai-sdk/openai-compatible",
        name: "Mock (loopback)",
        options: { baseURL: baseUrl, apiKey: opts.apiKey ?? "sk-mock" },
        models: {
          [modelId]: { name: "Mock Model", tool_call: true, limit: { context: 128000, output: 4096 } },
        },
      },
    },
    permission: { bash: "allow", external_directory: "deny", ...opts.permission },
  };
  if (opts.mcp) config.mcp = opts.mcp;
  return config;
}

// ---- helpers ----

function isChatRequest(v: unknown): v is ChatCompletionRequest {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.model === "string" && Array.isArray(o.messages);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on("data", (b: Buffer) => {
      size += b.length;
      if (size > MAX_BODY_BYTES) {
        req.destroy(new Error("request body too large"));
        return;
      }
      parts.push(b);
    });
    req.on("end", () => resolve(Buffer.concat(parts)));
    req.on("error", reject);
  });
}

/** Splits into up to three pieces on code-point boundaries, so clients must reassemble. */
function splitPieces(s: string): string[] {
  const cps = Array.from(s);
  if (cps.length < 2) return [s];
  const n = Math.min(3, cps.length);
  const size = Math.ceil(cps.length / n);
  const out: string[] = [];
  for (let i = 0; i < cps.length; i += size) out.push(cps.slice(i, i + size).join(""));
  return out;
}

function chunk(
  id: string,
  created: number,
  model: string,
  delta: object,
  finishReason: string | null = null,
) {
  return {
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [{ index: 0, delta, finish_reason: finishReason }],
  };
}

function usageChunk(id: string, created: number, model: string, usage: ModelUsage) {
  return {
    id,
    object: "chat.completion.chunk",
    created,
    model,
    choices: [],
    usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens },
  };
}

function completion(
  id: string,
  created: number,
  model: string,
  usage: ModelUsage,
  finishReason: string,
  message: object,
) {
  return {
    id,
    object: "chat.completion",
    created,
    model,
    choices: [{ index: 0, message, finish_reason: finishReason }],
    usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens },
  };
}

function openAiError(status: number, message?: string) {
  return {
    error: {
      message: message ?? `mock error ${status}`,
      type: "invalid_request_error",
      code: String(status),
    },
  };
}

function sendStream(res: ServerResponse, chunks: unknown[]) {
  res.writeHead(200, {
    "content-type": "text/event-stream",
    "cache-control": "no-cache",
    connection: "keep-alive",
  });
  for (const c of chunks) res.write(`data: ${JSON.stringify(c)}\n\n`);
  res.end("data: [DONE]\n\n");
}

function sendJson(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

function sleep(ms: number) {
  return new Promise<void>((r) => setTimeout(r, ms));
}
