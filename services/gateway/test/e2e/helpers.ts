import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type {
  Event,
  PrepareSessionRequest,
  PrepareSessionRequestSchema,
  SessionService,
  StreamService,
  SubscribeRequest,
  SubscribeResponse,
} from "@kilo-cloud/proto";
import { GIT_TOKEN, REPO } from "../support/full-stack.js";

/** Helpers shared by the e2e files that run on the kilo replayer (see full-stack.ts). */

export const TERMINAL = new Set(["complete", "error", "interrupted"]);

export type SubscribeInit = Partial<Omit<SubscribeRequest, "$typeName">> & { cloudAgentSessionId: string };

type PrepareInit = Exclude<MessageInitShape<typeof PrepareSessionRequestSchema>, PrepareSessionRequest>;

/** Prepares a session on the stack's git server; any field can be overridden. */
export async function prepareSession(
  client: Client<typeof SessionService>,
  extra: Partial<PrepareInit> = {},
): Promise<{ cloudAgentSessionId: string; kiloSessionId: string }> {
  return client.prepareSession({
    prompt: "Write a file",
    mode: "code",
    model: "mock-model",
    repository: { case: "githubRepo", value: REPO },
    githubToken: GIT_TOKEN,
    autoCommit: false,
    ...extra,
  });
}

/**
 * A Subscribe whose request is ended when the caller stops iterating (breaking out of a
 * for-await over the client's stream does not close an HTTP/1.1 request by itself), or
 * after `timeoutMs`.
 */
export async function* subscribe(
  stream: Client<typeof StreamService>,
  req: SubscribeInit,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): AsyncGenerator<SubscribeResponse> {
  const done = new AbortController();
  const signals = [done.signal, AbortSignal.timeout(opts.timeoutMs ?? 60_000)];
  if (opts.signal) signals.push(opts.signal);
  try {
    yield* stream.subscribe(req, { signal: AbortSignal.any(signals) });
  } finally {
    done.abort();
  }
}

/** Reads the stream until `count` terminal events were seen (keep-alives are skipped). */
export async function readUntilTerminals(
  stream: Client<typeof StreamService>,
  req: SubscribeInit,
  count: number,
  opts: { signal?: AbortSignal; timeoutMs?: number; onEvent?: (e: Event) => void } = {},
): Promise<Event[]> {
  const out: Event[] = [];
  let terminals = 0;
  if (count <= 0) return out;
  for await (const res of subscribe(stream, req, opts)) {
    if (!res.event) continue;
    out.push(res.event);
    opts.onEvent?.(res.event);
    if (TERMINAL.has(res.event.payload.case ?? "")) terminals++;
    if (terminals >= count) break;
  }
  return out;
}

/**
 * Reads the stream until it has gone quiet: the gateway sends a keep-alive only after
 * `keepaliveMs` without an event, so this returns at the first keep-alive that follows an
 * event (or after `emptyAfter` keep-alives without any, for a stream with nothing to
 * deliver; a keep-alive may come first when opening the stream is slow).
 */
export async function readUntilIdle(
  stream: Client<typeof StreamService>,
  req: SubscribeInit,
  opts: { timeoutMs?: number; emptyAfter?: number } = {},
): Promise<Event[]> {
  const out: Event[] = [];
  let keepalives = 0;
  for await (const res of subscribe(stream, req, { timeoutMs: opts.timeoutMs ?? 30_000 })) {
    if (res.event) out.push(res.event);
    else if (res.events.length > 0) out.push(...res.events);
    else if (res.keepalive && (out.length > 0 || ++keepalives >= (opts.emptyAfter ?? 3))) break;
  }
  return out;
}

/** The code a Subscribe fails with before its first message (Unknown if it does not fail). */
export async function subscribeCode(stream: Client<typeof StreamService>, req: SubscribeInit): Promise<Code> {
  try {
    for await (const _ of subscribe(stream, req, { timeoutMs: 10_000 })) break;
    return Code.Unknown;
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

/** The error of a call, as a ConnectError (throws if it succeeded). */
export async function connectErrorOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

/** Consecutive runs of execution ids: [a, a, b, b, a] → [a, b, a]. */
export function blocksOf(events: Event[]): string[] {
  return events.map((e) => e.executionId).filter((id, i, all) => i === 0 || all[i - 1] !== id);
}

/** How many events of each execution satisfy `pred`. */
export function countBy(events: Event[], pred: (e: Event) => boolean): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of events) if (pred(e)) m.set(e.executionId, (m.get(e.executionId) ?? 0) + 1);
  return m;
}

export const isKiloStatus = (e: Event): boolean =>
  e.payload.case === "status" && e.payload.value.step === "kilo";

export const isTerminal = (e: Event): boolean => TERMINAL.has(e.payload.case ?? "");
