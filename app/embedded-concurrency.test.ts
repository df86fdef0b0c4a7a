import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLogger } from "@kilo-cloud/common";
import { SessionService } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type LocalSystem, startLocalSystem } from "./local-system.js";

/**
 * The embedded database under concurrent use: every service of `npm start` shares one
 * connection to PGlite, so no two clients' protocol messages can interleave (pglite-socket
 * would mix them inside a transaction). Many calls at once all succeed, and the system
 * shuts down in bounded time.
 */
describe("npm start's embedded database under concurrent calls", { timeout: 300_000 }, () => {
  let dir: string;
  let system: LocalSystem;
  const logs: string[] = [];
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kc-embedded-"));
    system = await startLocalSystem({
      port: 0,
      host: "127.0.0.1",
      dataDir: dir,
      provider: { kind: "openai-compatible", baseUrl: "http://127.0.0.1:9/v1", apiKey: "unused", id: "mock" },
      isolation: "bwrap",
      allowInsecureGit: false,
      callbackPolicy: { allowHttp: false, allowLoopback: false },
      devUser: "alice",
      logger: createLogger({
        service: "test",
        level: "warn",
        destination: { write: (l) => void logs.push(l) },
      }),
    });
  }, 240_000);
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
  });

  it("answers 60 concurrent prepare/get/list calls, then closes within seconds", async () => {
    const auth: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${system.token}`);
      req.header.set("x-internal-api-key", system.internalKey);
      return next(req);
    };
    const client = createClient(
      SessionService,
      createConnectTransport({ baseUrl: system.url, httpVersion: "1.1", interceptors: [auth] }),
    );
    const one = async (i: number) => {
      const { cloudAgentSessionId } = await client.prepareSession({
        prompt: `concurrent ${i}`,
        mode: "code",
        model: "mock-model",
        repository: { case: "githubRepo", value: "acme/widgets" },
        envVars: { values: { N: String(i) } },
      });
      const got = await client.getSession({ cloudAgentSessionId });
      expect(got.session?.prompt).toBe(`concurrent ${i}`);
      await client.listSessions({ pageSize: 5 });
      return cloudAgentSessionId;
    };
    const ids = await Promise.all(Array.from({ length: 20 }, (_, i) => one(i)));
    expect(new Set(ids).size).toBe(20);
    const listed = await client.listSessions({ pageSize: 50 });
    expect(listed.sessions.length).toBe(20);
    expect(logs.join("")).not.toMatch(/protocol|unexpected message|rpc failed/i);

    const started = Date.now();
    await system.close();
    expect(Date.now() - started).toBeLessThan(15_000);
  });
});
