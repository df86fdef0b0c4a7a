import { createTRPCClient, httpBatchLink, httpLink, httpSubscriptionLink, splitLink } from "@trpc/client";
import type { CloudAgentRouter } from "../../src/trpc/router.js";
import { type FullStack, GIT_TOKEN, INTERNAL_KEY, REPO } from "../support/full-stack.js";

/** Clients of the hosted-compatible API, built with the real @trpc/client v11 links. */

export type Link = "batch" | "plain";

export function trpcHeaders(token: string, internal: boolean): Record<string, string> {
  return {
    authorization: `Bearer ${token}`,
    ...(internal ? { "x-internal-api-key": INTERNAL_KEY } : {}),
  };
}

export function hostedClient(
  stack: FullStack,
  token: string,
  opts: { internal?: boolean; link?: Link } = {},
) {
  const url = `${stack.gatewayUrl}/trpc`;
  const headers = trpcHeaders(token, opts.internal ?? true);
  const http = opts.link === "plain" ? httpLink({ url, headers }) : httpBatchLink({ url, headers });
  return createTRPCClient<CloudAgentRouter>({
    links: [
      splitLink({
        condition: (op) => op.type === "subscription",
        // EventSource cannot send headers; the real backend uses a polyfill that can.
        true: httpSubscriptionLink({
          url,
          EventSource: headerEventSource(headers) as unknown as typeof EventSource,
        }),
        false: http,
      }),
    ],
  });
}

/** A minimal EventSource over fetch that sends headers (what the hosted backend's polyfill does). */
function headerEventSource(headers: Record<string, string>) {
  return class extends EventTarget {
    static readonly CONNECTING = 0;
    static readonly OPEN = 1;
    static readonly CLOSED = 2;
    readyState = 0;
    readonly url: string;
    readonly withCredentials = false;
    onopen: ((e: Event) => void) | null = null;
    onmessage: ((e: MessageEvent) => void) | null = null;
    onerror: ((e: Event) => void) | null = null;
    #abort = new AbortController();
    constructor(url: string | URL) {
      super();
      this.url = String(url);
      void this.#run();
    }
    close() {
      this.readyState = 2;
      this.#abort.abort();
    }
    #emit(type: string, data: string) {
      const ev = new MessageEvent(type, { data });
      if (type === "message") this.onmessage?.(ev);
      this.dispatchEvent(ev);
    }
    async #run() {
      try {
        const res = await fetch(this.url, { headers, signal: this.#abort.signal });
        if (!res.ok || !res.body) throw new Error(`SSE request failed with ${res.status}`);
        this.readyState = 1;
        const open = new Event("open");
        this.onopen?.(open);
        this.dispatchEvent(open);
        const decoder = new TextDecoder();
        let buf = "";
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buf += decoder.decode(chunk, { stream: true });
          for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let type = "message";
            const data: string[] = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) type = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (data.length > 0 || type !== "message") this.#emit(type, data.join("\n"));
          }
        }
      } catch {
        if (this.readyState === 2) return;
      }
      if (this.readyState !== 2) {
        this.readyState = 2;
        const err = new Event("error");
        this.onerror?.(err);
        this.dispatchEvent(err);
      }
    }
  };
}

/** A prepareSession input (hosted JSON) for the stack's git server. */
export function prepareInput(extra: Record<string, unknown> = {}) {
  return {
    githubRepo: REPO,
    githubToken: GIT_TOKEN,
    prompt: "Write a file",
    mode: "code" as const,
    model: "mock-model",
    ...extra,
  };
}

/** Raw HTTP against /trpc, for what a client library hides (statuses, bodies). */
export async function rawTrpc(
  stack: FullStack,
  path: string,
  init: { method?: string; headers?: Record<string, string>; body?: unknown } = {},
) {
  const res = await fetch(`${stack.gatewayUrl}/trpc/${path}`, {
    method: init.method ?? "GET",
    headers: {
      ...(init.body !== undefined ? { "content-type": "application/json" } : {}),
      ...init.headers,
    },
    ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json: json as never };
}
