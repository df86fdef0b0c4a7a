import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createKiloCloudClient, StreamService } from "@kilo-cloud/sdk";
import { afterEach, describe, expect, it } from "vitest";

/**
 * `subscribe` over real HTTP (Connect over the global fetch, as users run it) with the TCP
 * connection cut mid-stream by the server: the iterator reconnects from the last id.
 */

let server: Server | undefined;
afterEach(() => {
  server?.closeAllConnections();
  server?.close();
});

const event = (id: bigint) => ({
  id,
  cloudAgentSessionId: "agent_1",
  executionId: "exec_1",
  payload: { case: "output" as const, value: { content: `line ${id}` } },
});

async function listen(impl: Partial<ServiceImpl<typeof StreamService>>): Promise<string> {
  server = createServer(connectNodeAdapter({ routes: (router) => router.service(StreamService, impl) }));
  await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe("subscribe over HTTP", () => {
  it("resumes after the server cuts the connection, with each event once and in order", async () => {
    const fromIds: (bigint | undefined)[] = [];
    const baseUrl = await listen({
      async *subscribe(req, ctx) {
        fromIds.push(req.fromId);
        const from = req.fromId ?? 0n;
        const until = fromIds.length === 1 ? 3n : 6n;
        for (let id = from + 1n; id <= until; id++) yield { event: event(id) };
        // The first connection dies under the client (a proxy or a node going away).
        if (fromIds.length === 1) setTimeout(() => server?.closeAllConnections(), 100);
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
      },
    });
    const client = createKiloCloudClient({ baseUrl, token: "t", retry: { baseDelayMs: 10 } });
    const ids: bigint[] = [];
    for await (const e of client.subscribe("agent_1", { reconnect: { baseDelayMs: 10, maxDelayMs: 50 } })) {
      ids.push(e.id);
      if (e.id === 6n) break;
    }
    expect(ids).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(fromIds).toEqual([undefined, 3n]);
  });
});
