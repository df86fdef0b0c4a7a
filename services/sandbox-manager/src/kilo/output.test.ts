import { readdirSync, readFileSync } from "node:fs";
import { Readable } from "node:stream";
import { CAPTURED_KILO_STREAMS_DIR } from "@kilo-cloud/testing";
import { describe, expect, it } from "vitest";
import {
  type KiloPayload,
  kiloErrorMessage,
  kiloSessionId,
  type Line,
  LineSplitter,
  parseStderrLine,
  parseStdoutLine,
  readLines,
  SecretMasker,
  stripAnsi,
  UsageAccumulator,
} from "./output.js";

const fixtures = new URL(CAPTURED_KILO_STREAMS_DIR);
const fixture = (name: string) => readFileSync(new URL(name, fixtures), "utf8");
const payloads = (name: string): KiloPayload[] =>
  fixture(name)
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const event = parseStdoutLine(line);
      if (event.type !== "kilocode") throw new Error(`not a kilo event: ${line}`);
      return event.payload;
    });

describe("parseStdoutLine", () => {
  it("turns every captured kilo line into a kilocode event with the payload unchanged", () => {
    const files = readdirSync(fixtures).filter((f) => f.endsWith(".jsonl"));
    expect(files.length).toBeGreaterThanOrEqual(10);
    const types = new Set<unknown>();
    for (const file of files) {
      for (const line of fixture(file).split("\n").filter(Boolean)) {
        const event = parseStdoutLine(line);
        expect(event.type).toBe("kilocode");
        if (event.type !== "kilocode") continue;
        expect(event.payload).toEqual(JSON.parse(line));
        types.add(event.payload.type);
      }
    }
    expect([...types].sort()).toEqual(["error", "step_finish", "step_start", "text", "tool_use"]);
  });

  it("keeps other stdout as text, without escapes or a CR", () => {
    expect(parseStdoutLine("\u001b[31mpanic: boom\u001b[0m\r")).toEqual({
      type: "output",
      content: "panic: boom",
      source: "stdout",
    });
    // JSON that is not an object is still text to a user.
    expect(parseStdoutLine("[1,2]")).toMatchObject({ type: "output", content: "[1,2]" });
    expect(parseStdoutLine("42")).toMatchObject({ type: "output", content: "42" });
    expect(parseStdoutLine("{not json")).toMatchObject({ type: "output", content: "{not json" });
    expect(parseStdoutLine("")).toEqual({ type: "output", content: "", source: "stdout" });
  });

  it("marks stderr lines as such", () => {
    expect(parseStderrLine("\u001b[91m\u001b[1mError: \u001b[0mmodel not found")).toEqual({
      type: "output",
      content: "Error: model not found",
      source: "stderr",
    });
    // Even JSON on stderr is text: kilo's events come on stdout only.
    expect(parseStderrLine('{"type":"text"}')).toMatchObject({ type: "output", source: "stderr" });
  });
});

describe("kilo payload helpers", () => {
  it("reads the session id that continues a session", () => {
    const [first] = payloads("stream-session-run1.jsonl");
    const [again] = payloads("stream-session-run2-continued.jsonl");
    expect(kiloSessionId(first!)).toBe("ses_df5a57821ffeXH7GJhA57YYVOs");
    expect(kiloSessionId(again!)).toBe(kiloSessionId(first!));
    expect(kiloSessionId({ type: "text" })).toBeUndefined();
  });

  it("describes both shapes of error event", () => {
    const [e401] = payloads("stream-error-401.jsonl");
    expect(kiloErrorMessage(e401!)).toBe("APIError: mock error 401");
    const rejected = payloads("stream-no-auto-permission-rejected.jsonl").at(-1)!;
    expect(kiloErrorMessage(rejected)).toBe(
      "run ended with an auto-rejected permission; pass --auto for autonomous use",
    );
    expect(kiloErrorMessage({ type: "error", error: { name: "UnknownError" } })).toBe("UnknownError");
    expect(kiloErrorMessage({ type: "error" })).toBe("unknown kilo error");
    expect(kiloErrorMessage({ type: "text" })).toBeUndefined();
  });
});

describe("stripAnsi", () => {
  it("removes colours, cursor moves, OSC hyperlinks and titles", () => {
    expect(stripAnsi("\u001b[1;38;5;208mwarn\u001b[39;22m done")).toBe("warn done");
    expect(stripAnsi("\u001b[2K\u001b[1G\u001b[?25lspinner\u001b[?25h")).toBe("spinner");
    expect(stripAnsi("see \u001b]8;;https://kilo.ai\u0007docs\u001b]8;;\u0007 now")).toBe("see docs now");
    expect(stripAnsi("\u001b]0;window title\u001b\\text")).toBe("text");
    expect(stripAnsi("\u001b(B\u001b7saved\u001b8")).toBe("saved");
    expect(stripAnsi("\u009b31mC1 csi")).toBe("C1 csi");
    // An OSC cut off by the end of the line must not leak its payload.
    expect(stripAnsi("before\u001b]8;;https://secret.example/path")).toBe("before");
  });

  it("leaves plain text, including non-ASCII, alone", () => {
    const text = "plain [brackets] ✓ 😀 ~ \t tab";
    expect(stripAnsi(text)).toBe(text);
  });
});

describe("UsageAccumulator", () => {
  it("sums step_finish tokens and cost over a run, ignoring other events", () => {
    const acc = new UsageAccumulator();
    const counted = payloads("stream-write-tool.jsonl").filter((p) => acc.add(p));
    expect(counted).toHaveLength(2);
    expect(acc.usage).toEqual({
      steps: 2,
      inputTokens: 200,
      outputTokens: 20,
      reasoningTokens: 0,
      cacheReadTokens: 0,
      cacheWriteTokens: 0,
      totalTokens: 220,
      cost: 0,
    });
  });

  it("counts nothing for a run that failed before any step", () => {
    const acc = new UsageAccumulator();
    for (const p of payloads("stream-error-500-after-retries.jsonl")) acc.add(p);
    expect(acc.usage.steps).toBe(0);
    expect(acc.usage.totalTokens).toBe(0);
  });

  it("adds cache, reasoning and fractional cost, and survives malformed fields", () => {
    const acc = new UsageAccumulator();
    acc.add({
      type: "step_finish",
      part: { cost: 0.0125, tokens: { input: 10, output: 5, reasoning: 3, cache: { read: 7, write: 2 } } },
    });
    acc.add({
      type: "step_finish",
      part: { cost: "free", tokens: { input: -1, output: null, total: Number.POSITIVE_INFINITY } },
    });
    acc.add({ type: "step_finish" });
    const snapshot = acc.usage;
    expect(snapshot).toEqual({
      steps: 3,
      inputTokens: 10,
      outputTokens: 5,
      reasoningTokens: 3,
      cacheReadTokens: 7,
      cacheWriteTokens: 2,
      totalTokens: 18,
      cost: 0.0125,
    });
    acc.add({ type: "step_finish", part: { tokens: { input: 1 } } });
    expect(snapshot.steps).toBe(3); // snapshots do not move
  });
});

describe("SecretMasker", () => {
  it("masks secrets in text and inside JSON values, never in keys", () => {
    const masker = new SecretMasker(["sk-live-1234", "hunter22"]);
    expect(masker.maskString("key=sk-live-1234 pw=hunter22 again sk-live-1234")).toBe(
      "key=*** pw=*** again ***",
    );
    const payload = {
      type: "tool_use",
      hunter22: "key stays",
      part: {
        state: { input: { command: "echo sk-live-1234" }, output: ["x", "hunter22!"], exit: 0, ok: true },
      },
    };
    const masked = masker.maskJson(payload);
    expect(masked).toEqual({
      type: "tool_use",
      hunter22: "key stays",
      part: { state: { input: { command: "echo ***" }, output: ["x", "***!"], exit: 0, ok: true } },
    });
    expect(payload.part.state.input.command).toBe("echo sk-live-1234"); // input not mutated
  });

  it("masks a secret written by kilo's write tool everywhere it shows up", () => {
    const masker = new SecretMasker(["hello from mock"]);
    const lines = fixture("stream-write-tool.jsonl").split("\n").filter(Boolean);
    const events = lines.map((l) => masker.mask(parseStdoutLine(l)));
    const json = JSON.stringify(events);
    expect(json).not.toContain("hello from mock");
    expect(json).toContain('"content":"***\\n"');
    expect(json).toContain("+***\\n"); // inside the diff too
  });

  it("returns unchanged events as the same objects", () => {
    const masker = new SecretMasker(["not-present-anywhere"]);
    const event = parseStdoutLine(fixture("stream-bash-tool.jsonl").split("\n")[1]!);
    expect(masker.mask(event)).toBe(event);
    const text = parseStderrLine("nothing here");
    expect(masker.mask(text)).toBe(text);
  });

  it("ignores short values, prefers the longest match, and treats regex characters literally", () => {
    const masker = new SecretMasker(["abc", "", "a.b*c", "token", "token-extended"]);
    expect(masker.maskString("abc a.b*c axbbc token-extended token")).toBe("abc *** axbbc *** ***");
    expect(new SecretMasker(["abc", ""]).active).toBe(false);
    expect(new SecretMasker(["abcd"], { minLength: 8 }).maskString("abcd")).toBe("abcd");
  });

  it("masks each line of a multi-line secret, since output arrives line by line", () => {
    const pem = "-----BEGIN KEY-----\nMIIEvAIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END KEY-----\n";
    const masker = new SecretMasker([pem]);
    expect(masker.maskString("MIIEvAIBADANBgkq")).toBe("***");
    expect(masker.maskString(pem)).toBe("***");
  });

  it("keeps a __proto__ key as data", () => {
    const masker = new SecretMasker(["secret-value"]);
    const payload = JSON.parse('{"__proto__": "secret-value", "a": 1}') as Record<string, unknown>;
    const masked = masker.maskJson(payload);
    expect(Object.getPrototypeOf(masked)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(masked, "__proto__")?.value).toBe("***");
  });
});

describe("LineSplitter", () => {
  const collect = (chunks: Uint8Array[], maxLineBytes?: number): Line[] => {
    const splitter = new LineSplitter(maxLineBytes ? { maxLineBytes } : {});
    return [...chunks.flatMap((c) => splitter.push(c)), ...splitter.end()];
  };

  it("reassembles a captured stream cut into arbitrary chunks", () => {
    const text = fixture("stream-session-run1.jsonl");
    const bytes = Buffer.from(text);
    const expected = text.split("\n").filter(Boolean);
    for (const size of [1, 3, 7, 64, 1000, bytes.length]) {
      const chunks: Uint8Array[] = [];
      for (let i = 0; i < bytes.length; i += size) chunks.push(bytes.subarray(i, i + size));
      const lines = collect(chunks);
      expect(lines.map((l) => l.text)).toEqual(expected);
      expect(lines.every((l) => !l.truncated)).toBe(true);
    }
  });

  it("never breaks a multibyte character, wherever the chunk boundary falls", () => {
    const text = "héllo ✓ wörld 😀\r\nsecond 日本語\nlast without newline 🎉";
    const bytes = Buffer.from(text);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const lines = collect([bytes.subarray(0, cut), bytes.subarray(cut)]);
      expect(lines.map((l) => l.text)).toEqual([
        "héllo ✓ wörld 😀",
        "second 日本語",
        "last without newline 🎉",
      ]);
    }
  });

  it("does not hold on to a caller's buffer after push", () => {
    const splitter = new LineSplitter();
    const chunk = Buffer.from("abc");
    splitter.push(chunk);
    chunk.fill(0x78); // the caller reuses its buffer
    expect(splitter.push(Buffer.from("def\n")).map((l) => l.text)).toEqual(["abcdef"]);
  });

  it("keeps empty lines and reports byte lengths", () => {
    const lines = collect([Buffer.from("a\n\nb✓\r\n")]);
    expect(lines).toEqual([
      { text: "a", truncated: false, byteLength: 1 },
      { text: "", truncated: false, byteLength: 0 },
      { text: "b✓", truncated: false, byteLength: 4 },
    ]);
  });

  it("caps an overlong line on a character boundary and carries on with the next", () => {
    const max = 1024 * 1024;
    const huge = `${"x".repeat(max - 1)}é${"y".repeat(2 * max)}`; // é straddles the cap
    const bytes = Buffer.from(`${huge}\n{"type":"text"}\n`);
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < bytes.length; i += 65536) chunks.push(bytes.subarray(i, i + 65536));
    const lines = collect(chunks, max);
    expect(lines).toHaveLength(2);
    expect(lines[0]?.truncated).toBe(true);
    expect(lines[0]?.byteLength).toBe(Buffer.byteLength(huge));
    expect(lines[0]?.text).toBe("x".repeat(max - 1));
    expect(lines[0]?.text).not.toContain("\uFFFD");
    expect(lines[1]).toEqual({ text: '{"type":"text"}', truncated: false, byteLength: 15 });
  });

  it("does not call a line of exactly the cap truncated, with or without CR", () => {
    const lines = collect([Buffer.from("abcd\nabcd\r\nabcde\n")], 4);
    expect(lines.map((l) => [l.text, l.truncated])).toEqual([
      ["abcd", false],
      ["abcd", false],
      ["abcd", true],
    ]);
  });

  it("reads lines from a Node stream", async () => {
    const stream = Readable.from([Buffer.from("one\ntw"), Buffer.from("o\nthree")]);
    const texts: string[] = [];
    for await (const line of readLines(stream)) texts.push(line.text);
    expect(texts).toEqual(["one", "two", "three"]);
  });
});
