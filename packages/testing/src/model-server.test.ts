import { describe, expect, it } from "vitest";
import {
  type ChatCompletionRequest,
  type ChatMessage,
  defaultScript,
  kiloProviderConfig,
  messageText,
  startModelServer,
} from "./model-server.js";

interface Chunk {
  object: string;
  choices: Array<{
    delta: {
      content?: string | null;
      tool_calls?: Array<{
        index: number;
        id?: string;
        type?: string;
        function: { name?: string; arguments?: string };
      }>;
    };
    finish_reason: string | null;
  }>;
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

/** Reads an SSE body the way the AI SDK does: `data:` lines until `[DONE]`. */
async function readSse(res: Response): Promise<{ chunks: Chunk[]; done: boolean }> {
  const text = await res.text();
  const chunks: Chunk[] = [];
  let done = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith("data: ")) continue;
    const data = line.slice("data: ".length);
    if (data === "[DONE]") {
      done = true;
      continue;
    }
    expect(done, "no data after [DONE]").toBe(false);
    chunks.push(JSON.parse(data) as Chunk);
  }
  return { chunks, done };
}

function post(url: string, body: Partial<ChatCompletionRequest>, apiKey = "sk-mock") {
  return fetch(`${url}/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ model: "mock-model", stream: true, ...body }),
  });
}

const writeTool = {
  type: "function" as const,
  function: { name: "write", description: "write a file", parameters: { type: "object" } },
};

describe("model server", () => {
  it("streams a write call split over chunks, then text after the tool result", async () => {
    await using server = await startModelServer({ apiKey: "sk-mock" });
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);

    const user: ChatMessage = { role: "user", content: [{ type: "text", text: "make a file" }] };
    const first = await post(server.url, { messages: [user], tools: [writeTool] });
    expect(first.status).toBe(200);
    expect(first.headers.get("content-type")).toBe("text/event-stream");
    const { chunks, done } = await readSse(first);
    expect(done).toBe(true);

    const deltas = chunks.flatMap((c) => c.choices.flatMap((ch) => ch.delta.tool_calls ?? []));
    expect(deltas.length).toBeGreaterThan(2); // the client has to reassemble the arguments
    expect(deltas[0]).toMatchObject({ index: 0, type: "function", function: { name: "write" } });
    const callId = deltas[0]?.id;
    expect(callId).toMatch(/^call_/);
    const args = JSON.parse(deltas.map((d) => d.function.arguments ?? "").join(""));
    expect(args).toEqual({ filePath: "hello1.txt", content: "hello from mock\n" });
    expect(chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean)).toEqual(["tool_calls"]);
    expect(chunks.at(-1)?.usage).toEqual({ prompt_tokens: 100, completion_tokens: 10, total_tokens: 110 });

    const assistant: ChatMessage = {
      role: "assistant",
      content: null,
      tool_calls: [
        { id: callId!, type: "function", function: { name: "write", arguments: JSON.stringify(args) } },
      ],
    };
    const toolResult: ChatMessage = {
      role: "tool",
      tool_call_id: callId!,
      content: "Wrote file successfully.",
    };
    const second = await readSse(
      await post(server.url, { messages: [user, assistant, toolResult], tools: [writeTool] }),
    );
    const text = second.chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(text).toBe("Done: wrote the file.");
    expect(second.chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean)).toEqual(["stop"]);

    // The follow-up carried the earlier turn, and tests can see that.
    expect(server.requests).toHaveLength(2);
    expect(server.requests[1]?.body?.messages.map((m) => m.role)).toEqual(["user", "assistant", "tool"]);
    expect(messageText(server.requests[1]!.body!.messages[0]!)).toBe("make a file");
  });

  it("names the file after the number of user turns, so a continued session writes hello2", async () => {
    await using server = await startModelServer();
    const history: ChatMessage[] = [
      { role: "user", content: "one" },
      { role: "assistant", content: "ok" },
      { role: "user", content: "two" },
    ];
    const { chunks } = await readSse(await post(server.url, { messages: history, tools: [writeTool] }));
    const args = chunks.flatMap((c) => c.choices.flatMap((ch) => ch.delta.tool_calls ?? []));
    expect(JSON.parse(args.map((d) => d.function.arguments ?? "").join("")).filePath).toBe("hello2.txt");
  });

  it("answers text when no write tool is offered (kilo's title request)", async () => {
    await using server = await startModelServer();
    const { chunks } = await readSse(await post(server.url, { messages: [{ role: "user", content: "hi" }] }));
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe("Mock title");
  });

  it("refuses a wrong API key with an OpenAI-style 401 and records it", async () => {
    await using server = await startModelServer({ apiKey: "sk-right" });
    const res = await post(server.url, { messages: [{ role: "user", content: "hi" }] }, "sk-wrong");
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("invalid_api_key");
    expect(server.requests[0]?.authorized).toBe(false);
    expect(server.requests[0]?.reply).toBeUndefined();
  });

  it("returns scripted HTTP errors like OpenAI's", async () => {
    await using server = await startModelServer({ script: () => ({ status: 500 }) });
    const res = await post(server.url, { messages: [{ role: "user", content: "hi" }] });
    expect(res.status).toBe(500);
    expect(await res.json()).toEqual({
      error: { message: "mock error 500", type: "invalid_request_error", code: "500" },
    });
  });

  it("lets the script see each request and earlier ones, and report its own usage", async () => {
    const seen: number[] = [];
    await using server = await startModelServer({
      script: (req, ctx) => {
        seen.push(ctx.index, ctx.previous.length);
        return {
          text: `echo ${messageText(req.messages.at(-1)!)}`,
          usage: { prompt_tokens: 7, completion_tokens: 3 },
        };
      },
    });
    await readSse(await post(server.url, { messages: [{ role: "user", content: "a" }] }));
    const { chunks } = await readSse(
      await post(server.url, { messages: [{ role: "user", content: "b ✓ 😀" }] }),
    );
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? "").join("")).toBe("echo b ✓ 😀");
    expect(chunks.at(-1)?.usage?.total_tokens).toBe(10);
    expect(seen).toEqual([0, 0, 1, 1]);
  });

  it("answers a non-streaming request with a whole completion", async () => {
    await using server = await startModelServer();
    const res = await post(server.url, {
      stream: false,
      messages: [{ role: "user", content: "x" }],
      tools: [writeTool],
    });
    const body = (await res.json()) as {
      choices: Array<{
        finish_reason: string;
        message: { tool_calls: Array<{ function: { arguments: string } }> };
      }>;
    };
    expect(body.choices[0]?.finish_reason).toBe("tool_calls");
    expect(JSON.parse(body.choices[0]!.message.tool_calls[0]!.function.arguments).filePath).toBe(
      "hello1.txt",
    );
  });

  it("turns a throwing script into a non-retryable 400 that names the failure", async () => {
    await using server = await startModelServer({
      script: () => {
        throw new Error("unexpected turn");
      },
    });
    const res = await post(server.url, { messages: [{ role: "user", content: "x" }] });
    expect(res.status).toBe(400);
    expect(JSON.stringify(await res.json())).toContain("unexpected turn");
    expect(server.requests[0]?.error).toContain("unexpected turn");
  });

  it("hangs when told to, and close() still returns", async () => {
    const server = await startModelServer({ script: () => ({ hang: true }) });
    const pending = post(server.url, { messages: [{ role: "user", content: "x" }] });
    const seen = await server.waitForRequest((r) => r.reply !== undefined, { timeoutMs: 5_000 });
    expect(seen.reply).toEqual({ hang: true });
    const outcome = await Promise.race([
      pending.then(() => "answered"),
      new Promise((r) => setTimeout(() => r("still waiting"), 300)),
    ]);
    expect(outcome).toBe("still waiting");
    await server.close();
    await expect(pending).rejects.toThrow();
  });

  it("switches scripts between runs", async () => {
    await using server = await startModelServer();
    server.setScript(() => ({ status: 401 }));
    const res = await post(server.url, { messages: [{ role: "user", content: "x" }] });
    expect(res.status).toBe(401);
  });

  it("defaultScript takes custom file names and texts", () => {
    const script = defaultScript({ finalText: "fin", filePath: (n) => `f${n}.md` });
    const reply = script(
      { model: "m", messages: [{ role: "user", content: "x" }], tools: [writeTool] },
      { index: 0, previous: [] },
    );
    expect(reply).toEqual({
      toolCall: { name: "write", arguments: { filePath: "f1.md", content: "hello from mock\n" } },
    });
  });
});

describe("kiloProviderConfig", () => {
  it("points kilo at the server with nothing reaching the network", () => {
    const config = kiloProviderConfig("http://127.0.0.1:1234/v1", { apiKey: "{env:MOCK_KEY}" });
    expect(config).toMatchObject({
      model: "mock/mock-model",
      small_model: "mock/mock-model",
      enabled_providers: ["mock"],
      autoupdate: false,
      share: "disabled",
      experimental: { openTelemetry: false },
      permission: { bash: "allow", external_directory: "deny" },
      provider: {
        mock: {
          npm: "@ai-sdk/openai-compatible",
          options: { baseURL: "http://127.0.0.1:1234/v1", apiKey: "{env:MOCK_KEY}" },
          models: { "mock-model": { tool_call: true } },
        },
      },
    });
    // It travels as KILO_CONFIG_CONTENT.
    expect(JSON.parse(JSON.stringify(config))).toEqual(config);
  });

  it("refuses model ids that change kilo's tool set", () => {
    expect(() => kiloProviderConfig("http://127.0.0.1:1/v1", { modelId: "gpt-4o" })).toThrow(/apply_patch/);
  });
});
