/**
 * From kilo's raw process output to plain events. `kilo run --format json` writes one JSON
 * object per stdout line (`{type, timestamp, sessionID, part | error}`) and coloured human
 * text on stderr; anything else on stdout (a crash trace, a bwrap message) must still reach
 * the user, so it becomes an `output` event rather than being dropped.
 */

// ---------------------------------------------------------------- events

/** A kilo JSON event, kept exactly as kilo wrote it (after parsing). */
export type KiloPayload = { [key: string]: unknown };

export type KiloLineEvent =
  | { type: "kilocode"; payload: KiloPayload }
  | { type: "output"; content: string; source: "stdout" | "stderr" };

/**
 * A JSON object line becomes a `kilocode` event with its payload untouched; every other line
 * (including JSON that is not an object) is text with terminal escapes removed.
 */
export function parseStdoutLine(line: string): KiloLineEvent {
  const text = line.endsWith("\r") ? line.slice(0, -1) : line;
  // Cheap guard first: most non-JSON lines are rejected without a parse attempt.
  if (text.trimStart().startsWith("{")) {
    try {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
        return { type: "kilocode", payload: parsed as KiloPayload };
      }
    } catch {
      // Not JSON after all: falls through to text.
    }
  }
  return { type: "output", content: stripAnsi(text), source: "stdout" };
}

export function parseStderrLine(line: string): KiloLineEvent {
  const text = line.endsWith("\r") ? line.slice(0, -1) : line;
  return { type: "output", content: stripAnsi(text), source: "stderr" };
}

/** Kilo's session id (`ses_...`), needed to continue the session with `--session` later. */
export function kiloSessionId(payload: KiloPayload): string | undefined {
  return typeof payload.sessionID === "string" && payload.sessionID ? payload.sessionID : undefined;
}

/**
 * The human message of an `error` event. Kilo sends either an object
 * `{name, data: {message, statusCode, ...}}` (provider errors) or a bare string
 * (e.g. a run ended by an auto-rejected permission).
 */
export function kiloErrorMessage(payload: KiloPayload): string | undefined {
  if (payload.type !== "error") return undefined;
  const { error } = payload;
  if (typeof error === "string") return error;
  if (typeof error !== "object" || error === null) return "unknown kilo error";
  const e = error as { name?: unknown; message?: unknown; data?: { message?: unknown } };
  const message =
    typeof e.data?.message === "string"
      ? e.data.message
      : typeof e.message === "string"
        ? e.message
        : undefined;
  const name = typeof e.name === "string" ? e.name : undefined;
  if (message && name) return `${name}: ${message}`;
  return message ?? name ?? "unknown kilo error";
}

// ---------------------------------------------------------------- ANSI

// CSI (ESC [ or 8-bit 0x9B) with parameters; OSC (ESC ]) up to BEL/ST or the end of the line,
// since a line split may cut one; DCS/SOS/PM/APC strings up to ST; charset designations;
// and the remaining two-byte ESC sequences (cursor save/restore, keypad modes, RIS...).
const ANSI_PATTERN = new RegExp(
  [
    "(?:\\u001b\\[|\\u009b)[0-?]*[ -/]*[@-~]",
    "(?:\\u001b\\]|\\u009d)[^\\u0007\\u001b\\u009c]*(?:\\u0007|\\u001b\\\\|\\u009c|$)",
    "(?:\\u001b[PX^_]|[\\u0090\\u0098\\u009e\\u009f])[^\\u001b\\u009c]*(?:\\u001b\\\\|\\u009c|$)",
    "\\u001b[()*+\\-./#%][\\u0020-\\u007e]",
    "\\u001b[\\u0020-\\u007e]",
  ].join("|"),
  "g",
);

// ESC or any C1 control: every sequence ANSI_PATTERN removes starts with one.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point.
const ESCAPE_START = /[\u001b\u0090-\u009f]/;

/** Removes terminal control sequences so colours and cursor moves do not reach clients. */
export function stripAnsi(text: string): string {
  // Fast path: nearly all lines have no escape at all.
  if (!ESCAPE_START.test(text)) return text;
  return text.replace(ANSI_PATTERN, "");
}

// ---------------------------------------------------------------- usage

export interface KiloUsage {
  /** Number of `step_finish` events counted (one per model call). */
  steps: number;
  inputTokens: number;
  outputTokens: number;
  reasoningTokens: number;
  cacheReadTokens: number;
  cacheWriteTokens: number;
  /** As kilo reports it (`tokens.total`); input + output + reasoning where it does not. */
  totalTokens: number;
  /** In the provider's currency unit (USD for the Kilo gateway); 0 for unpriced models. */
  cost: number;
}

/**
 * Sums usage over a run. Kilo reports per step, in `step_finish` events:
 * `part.tokens = {total, input, output, reasoning, cache: {read, write}}` and `part.cost`
 * (a number). A malformed or absent field counts as 0 rather than poisoning the sum.
 */
export class UsageAccumulator {
  #usage: KiloUsage = emptyUsage();

  /** Counts the payload if it is a `step_finish`; returns whether it was. */
  add(payload: KiloPayload): boolean {
    if (payload.type !== "step_finish") return false;
    const part = asRecord(payload.part);
    const tokens = asRecord(part?.tokens);
    const cache = asRecord(tokens?.cache);
    const input = count(tokens?.input);
    const output = count(tokens?.output);
    const reasoning = count(tokens?.reasoning);
    const u = this.#usage;
    u.steps += 1;
    u.inputTokens += input;
    u.outputTokens += output;
    u.reasoningTokens += reasoning;
    u.cacheReadTokens += count(cache?.read);
    u.cacheWriteTokens += count(cache?.write);
    u.totalTokens +=
      tokens && typeof tokens.total === "number" ? count(tokens.total) : input + output + reasoning;
    u.cost += count(part?.cost);
    return true;
  }

  /** A snapshot; later `add` calls do not change it. */
  get usage(): KiloUsage {
    return { ...this.#usage };
  }
}

function emptyUsage(): KiloUsage {
  return {
    steps: 0,
    inputTokens: 0,
    outputTokens: 0,
    reasoningTokens: 0,
    cacheReadTokens: 0,
    cacheWriteTokens: 0,
    totalTokens: 0,
    cost: 0,
  };
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}

function count(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : 0;
}

// ---------------------------------------------------------------- secret masking

export interface SecretMaskerOptions {
  /** Shorter values are not masked: masking "a" or "true" would shred all output. Default 4. */
  minLength?: number;
  replacement?: string;
}

/**
 * Replaces secret values (decrypted env secrets, tokens) wherever they appear in output.
 * One precompiled alternation (longest first, so a secret containing another is masked
 * whole) keeps the cost per line linear in its length. Secrets spanning several lines are
 * also masked line by line, because output reaches the masker one line at a time.
 */
export class SecretMasker {
  readonly #pattern: RegExp | undefined;
  readonly #replacement: string;

  constructor(secrets: Iterable<string>, opts: SecretMaskerOptions = {}) {
    const minLength = opts.minLength ?? 4;
    this.#replacement = opts.replacement ?? "***";
    const values = new Set<string>();
    for (const secret of secrets) {
      if (typeof secret !== "string") continue;
      if (secret.length >= minLength) values.add(secret);
      if (/[\r\n]/.test(secret)) {
        for (const line of secret.split(/\r?\n|\r/)) if (line.length >= minLength) values.add(line);
      }
    }
    if (values.size > 0) {
      const alternatives = [...values].sort((a, b) => b.length - a.length).map(escapeRegExp);
      this.#pattern = new RegExp(alternatives.join("|"), "g");
    }
  }

  /** False when there is nothing to mask, so callers can skip the work. */
  get active(): boolean {
    return this.#pattern !== undefined;
  }

  maskString(text: string): string {
    if (!this.#pattern) return text;
    return text.replace(this.#pattern, this.#replacement);
  }

  /**
   * Masks every string inside a JSON value; object keys are left alone (they are kilo's
   * field names). Unchanged subtrees are returned as the same objects, so masking a line
   * with no secret allocates nothing.
   */
  maskJson<T>(value: T): T {
    if (!this.#pattern) return value;
    return this.#walk(value) as T;
  }

  mask(event: KiloLineEvent): KiloLineEvent {
    if (!this.#pattern) return event;
    if (event.type === "kilocode") {
      const payload = this.maskJson(event.payload);
      return payload === event.payload ? event : { type: "kilocode", payload };
    }
    const content = this.maskString(event.content);
    return content === event.content ? event : { ...event, content };
  }

  #walk(value: unknown): unknown {
    if (typeof value === "string") return this.maskString(value);
    if (Array.isArray(value)) {
      let copy: unknown[] | undefined;
      for (let i = 0; i < value.length; i++) {
        const masked = this.#walk(value[i]);
        if (masked !== value[i]) {
          copy ??= value.slice();
          copy[i] = masked;
        }
      }
      return copy ?? value;
    }
    if (typeof value === "object" && value !== null) {
      let copy: Record<string, unknown> | undefined;
      for (const [key, v] of Object.entries(value)) {
        const masked = this.#walk(v);
        if (masked !== v) {
          copy ??= { ...value };
          // defineProperty, not assignment: a "__proto__" key must stay data.
          Object.defineProperty(copy, key, {
            value: masked,
            enumerable: true,
            writable: true,
            configurable: true,
          });
        }
      }
      return copy ?? value;
    }
    return value;
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// ---------------------------------------------------------------- line splitting

export interface Line {
  /** Without the line terminator (`\n` or `\r\n`). */
  text: string;
  /** The line was longer than the cap; `text` holds its beginning only. */
  truncated: boolean;
  /** Length of the whole original line in bytes, terminator excluded. */
  byteLength: number;
}

export interface LineSplitterOptions {
  /** Longest line kept, in bytes. Default 1 MiB: an event must fit a NATS message. */
  maxLineBytes?: number;
}

export const DEFAULT_MAX_LINE_BYTES = 1024 * 1024;

/**
 * Splits a byte stream into lines. Works on bytes, not decoded text: `\n` never occurs
 * inside a UTF-8 multibyte sequence, so each complete line decodes correctly wherever the
 * chunks were cut. Memory per line is bounded by the cap: the rest of an overlong line is
 * counted and dropped, not buffered.
 */
export class LineSplitter {
  readonly #max: number;
  readonly #decoder = new TextDecoder("utf-8");
  #parts: Uint8Array[] = [];
  #kept = 0;
  #total = 0;
  #lastByte = -1;

  constructor(opts: LineSplitterOptions = {}) {
    this.#max = opts.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
    if (!Number.isInteger(this.#max) || this.#max < 4)
      throw new RangeError("maxLineBytes must be an integer ≥ 4");
  }

  push(chunk: Uint8Array): Line[] {
    const lines: Line[] = [];
    let start = 0;
    while (start < chunk.length) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) {
        // The tail outlives this call and the caller may reuse its buffer: keep a copy
        // (not Buffer#slice, which is a view despite its name).
        this.#append(new Uint8Array(chunk.subarray(start)));
        break;
      }
      this.#append(chunk.subarray(start, nl));
      lines.push(this.#flush());
      start = nl + 1;
    }
    return lines;
  }

  /** The last line when the stream did not end with a newline. */
  end(): Line[] {
    return this.#total > 0 ? [this.#flush()] : [];
  }

  #append(bytes: Uint8Array) {
    if (bytes.length === 0) return;
    this.#total += bytes.length;
    this.#lastByte = bytes[bytes.length - 1] ?? -1;
    // One byte of slack so a line of exactly `max` bytes plus `\r` is not called truncated.
    const room = this.#max + 1 - this.#kept;
    if (room <= 0) return;
    const take = bytes.length > room ? bytes.subarray(0, room) : bytes;
    this.#parts.push(take);
    this.#kept += take.length;
  }

  #flush(): Line {
    const crlf = this.#lastByte === 0x0d;
    const byteLength = this.#total - (crlf ? 1 : 0);
    let bytes = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#kept);
    const truncated = byteLength > this.#max;
    if (truncated) {
      // Cut on a character boundary: back over UTF-8 continuation bytes (10xxxxxx).
      let cut = this.#max;
      while (cut > 0 && ((bytes[cut] ?? 0) & 0xc0) === 0x80) cut--;
      bytes = bytes.subarray(0, cut);
    } else if (crlf) {
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const text = this.#decoder.decode(bytes);
    this.#parts = [];
    this.#kept = 0;
    this.#total = 0;
    this.#lastByte = -1;
    return { text, truncated, byteLength };
  }
}

/** Lines of a byte stream such as a child's stdout, the last one included even without `\n`. */
export async function* readLines(
  stream: AsyncIterable<Uint8Array | string>,
  opts: LineSplitterOptions = {},
): AsyncGenerator<Line> {
  const splitter = new LineSplitter(opts);
  for await (const chunk of stream) {
    yield* splitter.push(typeof chunk === "string" ? Buffer.from(chunk, "utf8") : chunk);
  }
  yield* splitter.end();
}
