import { createHash, createHmac, randomBytes, randomUUID } from "node:crypto";
import { request as http1Request } from "node:http";
import { connect as http2Connect } from "node:http2";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  createLogger,
  createServiceTokenSigner,
  generateServiceKeyPair,
  listen,
  type RunningServer,
} from "@kilo-cloud/common";
import { type PrepareSessionRequestSchema, SessionService } from "@kilo-cloud/proto";
import {
  decodeJwt,
  exportJWK,
  exportSPKI,
  generateKeyPair,
  importPKCS8,
  type JWTPayload,
  SignJWT,
} from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGateway, type GatewayApp } from "../src/index.js";
import {
  INTERNAL_API_KEY,
  type Protocol,
  type Stack,
  startStack,
  TEST_AUDIENCE,
  TEST_ISSUER,
} from "./support/stack.js";

const SESSION_AUDIENCE = "kilo-cloud-session";
const PROTOCOLS: Protocol[] = ["connect", "grpc", "grpc-web"];

const b64url = (v: string | Buffer) => Buffer.from(v).toString("base64url");
const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Builds a compact JWS by hand, so the test controls every byte (e.g. `alg: none`). */
function handMadeJwt(header: object, payload: object, sign: (input: string) => string): string {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  return `${input}.${sign(input)}`;
}

const hs256With = (key: Buffer | string) => (input: string) =>
  createHmac("sha256", key).update(input).digest("base64url");

/** The outcome of a call: "ok" or the ConnectError's code. */
async function codeOf(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return ConnectError.from(err).code;
  }
}

async function errorOf(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

const prepareRequest = (): MessageInitShape<typeof PrepareSessionRequestSchema> => ({
  prompt: "fix the bug",
  mode: "code",
  model: "mock/model",
  repository: { case: "githubRepo", value: "acme/widgets" },
});

describe("gateway authentication and authorization", () => {
  let stack: Stack;
  let aliceSession: string;
  let bobSession: string;

  /** A valid-looking token for alice with the stack's secret, with claims overridden. */
  const aliceClaims = (over: JWTPayload = {}): JWTPayload => ({
    sub: "alice",
    iss: TEST_ISSUER,
    aud: TEST_AUDIENCE,
    iat: nowSeconds(),
    exp: nowSeconds() + 600,
    ...over,
  });
  const signHs256 = (payload: JWTPayload, secret = stack.hs256Secret) =>
    new SignJWT(payload)
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .sign(new TextEncoder().encode(secret));

  beforeAll(async () => {
    stack = await startStack();
    await stack.login("alice");
    await stack.login("bob");
    aliceSession = (await stack.sessions("alice").prepareSession(prepareRequest())).cloudAgentSessionId;
    bobSession = (await stack.sessions("bob").prepareSession(prepareRequest())).cloudAgentSessionId;
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  describe("bad bearer tokens are UNAUTHENTICATED", () => {
    /** Each case gives the Authorization header (undefined: none at all). */
    const cases: [string, () => Promise<string | undefined>][] = [
      ["missing bearer", async () => undefined],
      ["empty header", async () => ""],
      ["Basic scheme", async () => `Basic ${b64url("alice:password")}`],
      ["Bearer without a token", async () => "Bearer"],
      ["Bearer with a blank token", async () => "Bearer    "],
      ["token without the Bearer scheme", async () => signHs256(aliceClaims())],
      [
        "two tokens",
        async () => `Bearer ${await signHs256(aliceClaims())} ${await signHs256(aliceClaims())}`,
      ],
      ["not a JWT", async () => "Bearer not-a-jwt"],
      ["two segments", async () => `Bearer ${b64url('{"alg":"HS256"}')}.${b64url('{"sub":"alice"}')}`],
      ["garbage segments", async () => "Bearer a.b.c"],
      [
        "bad signature (another secret)",
        async () => `Bearer ${await signHs256(aliceClaims(), randomBytes(32).toString("hex"))}`,
      ],
      [
        "tampered payload (sub changed after signing)",
        async () => {
          const [h, , s] = (await signHs256(aliceClaims({ sub: "mallory" }))).split(".");
          return `Bearer ${h}.${b64url(JSON.stringify(aliceClaims()))}.${s}`;
        },
      ],
      [
        "expired token",
        async () =>
          `Bearer ${await signHs256(aliceClaims({ iat: nowSeconds() - 7200, exp: nowSeconds() - 3600 }))}`,
      ],
      [
        "no exp (would never expire)",
        async () => `Bearer ${await signHs256(aliceClaims({ exp: undefined }))}`,
      ],
      [
        "lifetime over the 24 h bound (iat now, exp in 2 days)",
        async () => `Bearer ${await signHs256(aliceClaims({ exp: nowSeconds() + 2 * 86_400 }))}`,
      ],
      [
        "exp 2 days ahead and no iat",
        async () =>
          `Bearer ${await signHs256(aliceClaims({ iat: undefined, exp: nowSeconds() + 2 * 86_400 }))}`,
      ],
      [
        "not yet valid (nbf)",
        async () => `Bearer ${await signHs256(aliceClaims({ nbf: nowSeconds() + 3600 }))}`,
      ],
      ["wrong issuer", async () => `Bearer ${await signHs256(aliceClaims({ iss: "https://evil.test" }))}`],
      ["no issuer", async () => `Bearer ${await signHs256(aliceClaims({ iss: undefined }))}`],
      ["wrong audience", async () => `Bearer ${await signHs256(aliceClaims({ aud: "someone-else" }))}`],
      ["no audience", async () => `Bearer ${await signHs256(aliceClaims({ aud: undefined }))}`],
      ["no sub", async () => `Bearer ${await signHs256(aliceClaims({ sub: undefined }))}`],
      ["empty sub", async () => `Bearer ${await signHs256(aliceClaims({ sub: "" }))}`],
      [
        "non-string sub",
        async () => `Bearer ${await signHs256({ ...aliceClaims(), sub: 42 as unknown as string })}`,
      ],
      ["alg none", async () => `Bearer ${handMadeJwt({ alg: "none" }, aliceClaims(), () => "")}`],
      [
        "alg none with typ",
        async () => `Bearer ${handMadeJwt({ alg: "none", typ: "JWT" }, aliceClaims(), () => "")}`,
      ],
      ["alg None", async () => `Bearer ${handMadeJwt({ alg: "None" }, aliceClaims(), () => "")}`],
      ["alg NONE", async () => `Bearer ${handMadeJwt({ alg: "NONE" }, aliceClaims(), () => "")}`],
      [
        "alg none with the real signature kept",
        async () => {
          const sig = (await signHs256(aliceClaims())).split(".")[2]!;
          return `Bearer ${handMadeJwt({ alg: "none" }, aliceClaims(), () => sig)}`;
        },
      ],
      [
        "HS256 header with the signature stripped",
        async () => `Bearer ${(await signHs256(aliceClaims())).split(".").slice(0, 2).join(".")}.`,
      ],
      [
        "HS512 with the right secret (algorithm not accepted)",
        async () =>
          `Bearer ${await new SignJWT(aliceClaims())
            .setProtectedHeader({ alg: "HS512" })
            .sign(new TextEncoder().encode(stack.hs256Secret))}`,
      ],
    ];

    it.each(cases)("%s → GetSession", async (_name, header) => {
      const h = await header();
      const c = stack.rawClient(SessionService, h === undefined ? {} : { authorization: h });
      const err = await errorOf(c.getSession({ cloudAgentSessionId: aliceSession }));
      expect(err.code).toBe(Code.Unauthenticated);
    });

    it.each(cases)("%s → PrepareSession (even with the internal API key)", async (_name, header) => {
      const h = await header();
      const headers: Record<string, string> = { "x-internal-api-key": INTERNAL_API_KEY };
      if (h !== undefined) headers.authorization = h;
      const before = await stack.db.query("SELECT count(*)::int AS n FROM session.sessions");
      const c = stack.rawClient(SessionService, headers);
      expect(await codeOf(c.prepareSession(prepareRequest()))).toBe(Code.Unauthenticated);
      // …and without it: authentication is checked before authorization.
      const noKey = stack.rawClient(SessionService, h === undefined ? {} : { authorization: h });
      expect(await codeOf(noKey.prepareSession(prepareRequest()))).toBe(Code.Unauthenticated);
      const after = await stack.db.query("SELECT count(*)::int AS n FROM session.sessions");
      expect(after.rows[0].n).toBe(before.rows[0].n);
    });

    it("the error message names no token or key material", async () => {
      const token = await signHs256(aliceClaims({ iss: "https://evil.test" }));
      const err = await errorOf(
        stack.rawClient(SessionService, { authorization: `Bearer ${token}` }).getSession({
          cloudAgentSessionId: aliceSession,
        }),
      );
      expect(err.rawMessage).not.toContain(token);
      expect(err.rawMessage).not.toContain(token.split(".")[2]!);
      expect(err.rawMessage).not.toContain(stack.hs256Secret);
      expect(stack.logs.join("\n")).not.toContain(token.split(".")[2]!);
    });

    it("refusals are logged as JSON lines that keep the code and the message", async () => {
      await errorOf(stack.rawClient(SessionService, {}).getSession({ cloudAgentSessionId: aliceSession }));
      const refused = stack.logs
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((l) => l.msg === "rpc refused" && l.rpc === `${SessionService.typeName}/GetSession`);
      expect(refused.at(-1)).toMatchObject({
        service: "gateway",
        code: "Unauthenticated",
        error: "missing bearer token (Authorization: Bearer <token>)",
      });
    });

    it("a well-formed token is accepted (control)", async () => {
      const c = stack.rawClient(SessionService, {
        authorization: `Bearer ${await signHs256(aliceClaims())}`,
      });
      const got = await c.getSession({ cloudAgentSessionId: aliceSession });
      expect(got.session?.userId).toBe("alice");
    });
  });

  describe("algorithm confusion against a JWKS-configured gateway", () => {
    let gateway: GatewayApp;
    let server: RunningServer;
    let rsaPrivate: Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];
    let publicPem: string;
    let publicJwk: Record<string, unknown>;
    const logs: string[] = [];

    beforeAll(async () => {
      const pair = await generateKeyPair("RS256", { extractable: true });
      rsaPrivate = pair.privateKey;
      publicPem = await exportSPKI(pair.publicKey);
      // No "alg" in the JWK, as many identity providers publish it: the gateway alone must
      // decide which algorithms a key may verify.
      publicJwk = { ...(await exportJWK(pair.publicKey)), kid: "rsa-1", use: "sig" };
      gateway = await createGateway({
        logger: createLogger({
          service: "gateway-jwks",
          level: "debug",
          destination: { write: (line: string) => void logs.push(line) },
        }),
        userTokens: { jwks: { keys: [publicJwk] }, issuer: TEST_ISSUER, audience: TEST_AUDIENCE },
        internalApiKey: INTERNAL_API_KEY,
        serviceTokenPrivateKey: stack.serviceKeys.privateKeyPem,
        streamTicketSecret: randomBytes(32).toString("hex"),
        sessionServiceUrl: stack.sessionUrl,
      });
      server = await listen(gateway.handler, { port: 0, host: "127.0.0.1" });
    });
    afterAll(async () => {
      gateway?.close();
      await server?.close(100);
    });

    const client = () =>
      createClient(SessionService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const call = (token: string) => ({
      headers: { authorization: `Bearer ${token}`, "x-internal-api-key": INTERNAL_API_KEY },
    });

    it("accepts an RS256 token signed with the matching private key", async () => {
      const token = await new SignJWT(aliceClaims())
        .setProtectedHeader({ alg: "RS256", kid: "rsa-1" })
        .sign(rsaPrivate);
      // The session alice made through the main gateway is hers through this one too.
      const got = await client().getSession({ cloudAgentSessionId: aliceSession }, call(token));
      expect(got.session?.userId).toBe("alice");
      const prepared = await client().prepareSession(prepareRequest(), call(token));
      const mine = await stack
        .sessions("alice")
        .getSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
      expect(mine.session?.userId).toBe("alice");
    });

    it("refuses RS256 tokens that are expired or signed by another RSA key", async () => {
      const other = await generateKeyPair("RS256");
      const foreign = await new SignJWT(aliceClaims())
        .setProtectedHeader({ alg: "RS256", kid: "rsa-1" })
        .sign(other.privateKey);
      expect(await codeOf(client().getSession({ cloudAgentSessionId: aliceSession }, call(foreign)))).toBe(
        Code.Unauthenticated,
      );
      const expired = await new SignJWT(aliceClaims({ iat: nowSeconds() - 7200, exp: nowSeconds() - 3600 }))
        .setProtectedHeader({ alg: "RS256", kid: "rsa-1" })
        .sign(rsaPrivate);
      expect(await codeOf(client().getSession({ cloudAgentSessionId: aliceSession }, call(expired)))).toBe(
        Code.Unauthenticated,
      );
    });

    it("refuses HS256 tokens whose HMAC key is the public key (PEM, JWK, DER, modulus)", async () => {
      const der = Buffer.from(publicPem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");
      const hmacKeys: [string, Buffer | string][] = [
        ["PEM", publicPem],
        ["PEM without trailing newline", publicPem.trimEnd()],
        ["JWK JSON", JSON.stringify(publicJwk)],
        ["JWKS JSON", JSON.stringify({ keys: [publicJwk] })],
        ["DER", der],
        ["modulus n", Buffer.from(publicJwk.n as string, "base64url")],
      ];
      for (const [what, key] of hmacKeys) {
        for (const header of [
          { alg: "HS256", typ: "JWT" },
          { alg: "HS256", kid: "rsa-1" },
        ]) {
          const token = handMadeJwt(header, aliceClaims(), hs256With(key));
          const got = await codeOf(client().getSession({ cloudAgentSessionId: aliceSession }, call(token)));
          expect(got, `${what} ${JSON.stringify(header)}`).toBe(Code.Unauthenticated);
          expect(await codeOf(client().prepareSession(prepareRequest(), call(token))), what).toBe(
            Code.Unauthenticated,
          );
        }
      }
    });

    it("refuses alg none and the main gateway's HS256 tokens", async () => {
      const none = handMadeJwt({ alg: "none", kid: "rsa-1" }, aliceClaims(), () => "");
      expect(await codeOf(client().getSession({ cloudAgentSessionId: aliceSession }, call(none)))).toBe(
        Code.Unauthenticated,
      );
      const hs = await signHs256(aliceClaims());
      expect(await codeOf(client().getSession({ cloudAgentSessionId: aliceSession }, call(hs)))).toBe(
        Code.Unauthenticated,
      );
    });
  });

  describe("backend-only methods need x-internal-api-key", () => {
    const wrongKeys = [
      `internal-${randomBytes(16).toString("hex")}`,
      INTERNAL_API_KEY.slice(0, -1),
      `${INTERNAL_API_KEY}x`,
      INTERNAL_API_KEY.toUpperCase(),
      "",
    ];

    const calls = (c: ReturnType<Stack["sessions"]>) => ({
      PrepareSession: () => c.prepareSession(prepareRequest()),
      PrepareLegacySession: () =>
        c.prepareLegacySession({
          cloudAgentSessionId: `agent_${randomUUID()}`,
          kiloSessionId: randomUUID(),
          session: prepareRequest(),
        }),
      UpdateSession: () => c.updateSession({ cloudAgentSessionId: aliceSession, model: "mock/other" }),
      ListCallbackDeliveries: () => c.listCallbackDeliveries({ cloudAgentSessionId: aliceSession }),
      RedeliverCallback: () =>
        c.redeliverCallback({ cloudAgentSessionId: aliceSession, executionId: "exec_none" }),
    });

    it("is PERMISSION_DENIED without the key, and nothing changes", async () => {
      const before = await stack.db.query("SELECT t::text AS row FROM session.sessions t ORDER BY id");
      for (const [name, run] of Object.entries(calls(stack.sessions("alice", { internal: false })))) {
        const err = await errorOf(run());
        expect(err.code, name).toBe(Code.PermissionDenied);
        expect(err.rawMessage).toContain("x-internal-api-key");
      }
      const after = await stack.db.query("SELECT t::text AS row FROM session.sessions t ORDER BY id");
      expect(after.rows).toEqual(before.rows);
    });

    it("is PERMISSION_DENIED with a wrong key", async () => {
      for (const key of wrongKeys) {
        const c = stack.sessions("alice", { internal: false, headers: { "x-internal-api-key": key } });
        for (const [name, run] of Object.entries(calls(c))) {
          expect(await codeOf(run()), `${name} with ${JSON.stringify(key)}`).toBe(Code.PermissionDenied);
        }
      }
    });

    it("the key is no substitute for a bearer token", async () => {
      const c = stack.rawClient(SessionService, { "x-internal-api-key": INTERNAL_API_KEY });
      for (const [name, run] of Object.entries(calls(c))) {
        expect(await codeOf(run()), name).toBe(Code.Unauthenticated);
      }
    });

    it("GetSession (and the other user methods) work without it", async () => {
      const c = stack.sessions("alice", { internal: false });
      const got = await c.getSession({ cloudAgentSessionId: aliceSession });
      expect(got.session?.cloudAgentSessionId).toBe(aliceSession);
      const ticket = await c.createStreamTicket({ cloudAgentSessionId: aliceSession });
      expect(ticket.ticket).not.toBe("");
    });

    it("with the right key the methods work (control)", async () => {
      for (const [name, run] of Object.entries(calls(stack.sessions("alice")))) {
        // The session has no callback of that execution: past the key check, the handler answers.
        expect(await codeOf(run()), name).toBe(name === "RedeliverCallback" ? Code.NotFound : "ok");
      }
    });
  });

  describe("the session service trusts no caller because of where it is", () => {
    const direct = () =>
      createClient(SessionService, createConnectTransport({ baseUrl: stack.sessionUrl, httpVersion: "1.1" }));
    const withHeaders = (headers: Record<string, string>) => ({ headers });

    /** Both a user method and a backend method, called directly on the session service. */
    const both = async (headers: Record<string, string>) => [
      await codeOf(direct().getSession({ cloudAgentSessionId: aliceSession }, withHeaders(headers))),
      await codeOf(direct().prepareSession(prepareRequest(), withHeaders(headers))),
    ];

    it("no token → UNAUTHENTICATED (even with the internal API key)", async () => {
      expect(await both({})).toEqual([Code.Unauthenticated, Code.Unauthenticated]);
      expect(await both({ "x-internal-api-key": INTERNAL_API_KEY })).toEqual([
        Code.Unauthenticated,
        Code.Unauthenticated,
      ]);
    });

    it("a user's bearer token → UNAUTHENTICATED", async () => {
      const bearer = await stack.tokenFor("alice");
      expect(
        await both({ authorization: `Bearer ${bearer}`, "x-internal-api-key": INTERNAL_API_KEY }),
      ).toEqual([Code.Unauthenticated, Code.Unauthenticated]);
    });

    it("a service token signed by another key → UNAUTHENTICATED", async () => {
      const other = await generateServiceKeyPair();
      const sign = await createServiceTokenSigner(other.privateKeyPem);
      const token = await sign(SESSION_AUDIENCE, { userId: "alice", internal: true });
      expect(await both({ authorization: `Bearer ${token}` })).toEqual([
        Code.Unauthenticated,
        Code.Unauthenticated,
      ]);
    });

    it("a service token of the right key but the wrong audience, issuer, type or age → UNAUTHENTICATED", async () => {
      const key = await importPKCS8(stack.serviceKeys.privateKeyPem, "EdDSA");
      const base = () =>
        new SignJWT({ internal: true })
          .setSubject("alice")
          .setIssuer("kilo-cloud-gateway")
          .setAudience(SESSION_AUDIENCE)
          .setIssuedAt()
          .setExpirationTime("60s");
      const tokens = {
        audience: await base()
          .setAudience("kilo-cloud-sandbox")
          .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
          .sign(key),
        issuer: await base()
          .setIssuer("someone-else")
          .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
          .sign(key),
        type: await base().setProtectedHeader({ alg: "EdDSA", typ: "JWT" }).sign(key),
        expired: await base()
          .setIssuedAt(nowSeconds() - 3600)
          .setExpirationTime(nowSeconds() - 3540)
          .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
          .sign(key),
        "too old (long-lived)": await base()
          .setIssuedAt(nowSeconds() - 600)
          .setExpirationTime(nowSeconds() + 3600)
          .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
          .sign(key),
        "no subject": await new SignJWT({ internal: true })
          .setIssuer("kilo-cloud-gateway")
          .setAudience(SESSION_AUDIENCE)
          .setIssuedAt()
          .setExpirationTime("60s")
          .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
          .sign(key),
        "alg none": handMadeJwt(
          { alg: "none", typ: "kilo-service+jwt" },
          {
            sub: "alice",
            internal: true,
            iss: "kilo-cloud-gateway",
            aud: SESSION_AUDIENCE,
            iat: nowSeconds(),
          },
          () => "",
        ),
      };
      for (const [what, token] of Object.entries(tokens)) {
        expect(await both({ authorization: `Bearer ${token}` }), what).toEqual([
          Code.Unauthenticated,
          Code.Unauthenticated,
        ]);
      }
    });

    it("a forwarded x-kilo-user-token that does not match the service token → UNAUTHENTICATED", async () => {
      const sign = await createServiceTokenSigner(stack.serviceKeys.privateKeyPem);
      const userToken = await stack.tokenFor("alice");
      const otherUserToken = await stack.tokenFor("bob");
      const hash = (t: string) => createHash("sha256").update(t).digest("base64url");
      const bound = await sign(SESSION_AUDIENCE, {
        userId: "alice",
        internal: true,
        userTokenHash: hash(userToken),
      });
      const unbound = await sign(SESSION_AUDIENCE, { userId: "alice", internal: true });
      // Another user's token, a token the service token does not bind, and an empty one.
      for (const [token, forwarded] of [
        [bound, otherUserToken],
        [bound, `${userToken}x`],
        [unbound, userToken],
      ] as const) {
        expect(await both({ authorization: `Bearer ${token}`, "x-kilo-user-token": forwarded })).toEqual([
          Code.Unauthenticated,
          Code.Unauthenticated,
        ]);
      }
      // Control: the matching pair, and a valid service token alone, are accepted.
      expect(await both({ authorization: `Bearer ${bound}`, "x-kilo-user-token": userToken })).toEqual([
        "ok",
        "ok",
      ]);
      expect(
        await codeOf(
          direct().getSession(
            { cloudAgentSessionId: aliceSession },
            withHeaders({ authorization: `Bearer ${unbound}` }),
          ),
        ),
      ).toBe("ok");
    });

    it("a valid service token without the internal flag cannot call backend methods", async () => {
      const sign = await createServiceTokenSigner(stack.serviceKeys.privateKeyPem);
      const token = await sign(SESSION_AUDIENCE, { userId: "alice", internal: false });
      expect(
        await both({ authorization: `Bearer ${token}`, "x-internal-api-key": INTERNAL_API_KEY }),
      ).toEqual(["ok", Code.PermissionDenied]);
    });
  });

  describe("health, readiness and metrics", () => {
    it("answer 200 on the gateway and the session service", async () => {
      // A call through the gateway reaches both, so both count it.
      await stack.sessions("alice").getSession({ cloudAgentSessionId: aliceSession });
      for (const base of [stack.gatewayUrl, stack.sessionUrl]) {
        for (const path of ["/healthz", "/readyz", "/metrics"]) {
          const res = await fetch(new URL(path, base));
          expect(res.status, `${base}${path}`).toBe(200);
          const text = await res.text();
          if (path === "/metrics") {
            expect(text).toContain("rpc_requests_total");
            expect(text).toMatch(
              /rpc_requests_total\{[^}]*rpc_method="GetSession"[^}]*rpc_code="ok"[^}]*\} [1-9]/,
            );
          }
        }
      }
    });

    it("need no token (and hold no identity or secret)", async () => {
      const res = await fetch(new URL("/metrics", stack.gatewayUrl));
      const text = await res.text();
      expect(text).not.toContain(INTERNAL_API_KEY);
      expect(text).not.toContain("alice");
    });
  });

  describe("one port, three protocols, HTTP/1.1 and h2c", () => {
    it.each(PROTOCOLS)("%s: prepare and read a session", async (protocol) => {
      const c = stack.sessions("alice", { protocol });
      const prepared = await c.prepareSession(prepareRequest());
      const got = await c.getSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
      expect(got.session?.githubRepo).toBe("acme/widgets");
      expect(got.session?.version).toBe(prepared.version);
    });

    it.each(PROTOCOLS)("%s: errors keep their codes", async (protocol) => {
      const anon = stack.rawClient(SessionService, {}, protocol);
      expect(await codeOf(anon.getSession({ cloudAgentSessionId: aliceSession }))).toBe(Code.Unauthenticated);
      const noKey = stack.sessions("alice", { protocol, internal: false });
      expect(await codeOf(noKey.prepareSession(prepareRequest()))).toBe(Code.PermissionDenied);
      const bob = stack.sessions("bob", { protocol });
      expect(await codeOf(bob.getSession({ cloudAgentSessionId: aliceSession }))).toBe(Code.NotFound);
      expect(await codeOf(bob.getSession({ cloudAgentSessionId: "nope" }))).toBe(Code.InvalidArgument);
    });

    it("the same port speaks HTTP/1.1 and cleartext HTTP/2", async () => {
      const url = new URL("/healthz", stack.gatewayUrl);
      const h1 = await new Promise<{ status: number; version: string }>((resolve, reject) => {
        const req = http1Request(url, (res) => {
          res.resume();
          res.on("end", () => resolve({ status: res.statusCode ?? 0, version: res.httpVersion }));
        });
        req.on("error", reject);
        req.end();
      });
      expect(h1).toEqual({ status: 200, version: "1.1" });
      const session = http2Connect(stack.gatewayUrl);
      try {
        const status = await new Promise<number>((resolve, reject) => {
          const req = session.request({ ":path": "/healthz", ":method": "GET" });
          req.on("response", (headers) => resolve(Number(headers[":status"])));
          req.on("error", reject);
          req.resume();
          req.end();
        });
        expect(status).toBe(200);
      } finally {
        session.close();
      }
    });
  });

  describe("stream tickets", () => {
    const postTicket = (body: string, authorization?: string) =>
      fetch(new URL("/stream-ticket", stack.gatewayUrl), {
        method: "POST",
        headers: { "content-type": "application/json", ...(authorization ? { authorization } : {}) },
        body,
      });
    const bearer = async (user: string) => `Bearer ${await stack.tokenFor(user)}`;

    it("POST /stream-ticket returns a ticket for the caller's own session", async () => {
      const res = await postTicket(
        JSON.stringify({ cloudAgentSessionId: aliceSession }),
        await bearer("alice"),
      );
      expect(res.status).toBe(200);
      expect(res.headers.get("cache-control")).toBe("no-store");
      const body = (await res.json()) as { ticket: string; expiresAt: string };
      expect(Object.keys(body).sort()).toEqual(["expiresAt", "ticket"]);
      const expiresAt = Date.parse(body.expiresAt);
      expect(expiresAt).toBeGreaterThan(Date.now());
      expect(expiresAt).toBeLessThanOrEqual(Date.now() + 61_000);
      const claims = decodeJwt(body.ticket);
      expect(claims.sub).toBe("alice");
      expect(claims.sid).toBe(aliceSession);
    });

    it("401 without a bearer token, or with a bad one", async () => {
      const body = JSON.stringify({ cloudAgentSessionId: aliceSession });
      for (const auth of [
        undefined,
        "Bearer nope",
        `Bearer ${await signHs256(aliceClaims(), "x".repeat(40))}`,
      ]) {
        const res = await postTicket(body, auth);
        expect(res.status, String(auth)).toBe(401);
        expect(((await res.json()) as { code: string }).code).toBe("unauthenticated");
      }
    });

    it("404 for another user's session, exactly as for a missing one", async () => {
      const foreign = await postTicket(
        JSON.stringify({ cloudAgentSessionId: bobSession }),
        await bearer("alice"),
      );
      expect(foreign.status).toBe(404);
      const missingId = `agent_${randomUUID()}`;
      const missing = await postTicket(
        JSON.stringify({ cloudAgentSessionId: missingId }),
        await bearer("alice"),
      );
      expect(missing.status).toBe(404);
      expect((await foreign.text()).replaceAll(bobSession, "<id>")).toBe(
        (await missing.text()).replaceAll(missingId, "<id>"),
      );
    });

    it("400 for a bad body", async () => {
      const auth = await bearer("alice");
      for (const body of [
        "",
        "not json",
        "null",
        "[]",
        "{}",
        JSON.stringify({ cloudAgentSessionId: 42 }),
        JSON.stringify({ cloudAgentSessionId: "agent_nope" }),
        JSON.stringify({ cloudAgentSessionId: `${aliceSession}\n` }),
        JSON.stringify({ cloudAgentSessionId: aliceSession, pad: "x".repeat(5000) }),
      ]) {
        const res = await postTicket(body, auth);
        expect(res.status, body.slice(0, 40)).toBe(400);
        expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
      }
    });

    it("405 for another method", async () => {
      const res = await fetch(new URL("/stream-ticket", stack.gatewayUrl), {
        headers: { authorization: await bearer("alice") },
      });
      expect(res.status).toBe(405);
      await res.body?.cancel();
    });

    it("CreateStreamTicket over Connect: own session, no bearer, another user's, a bad id", async () => {
      const alice = stack.sessions("alice", { internal: false });
      const res = await alice.createStreamTicket({ cloudAgentSessionId: aliceSession });
      expect(res.expiresAt).toBeDefined();
      const expiresMs = Number(res.expiresAt!.seconds) * 1000;
      expect(expiresMs).toBeGreaterThan(Date.now());
      expect(expiresMs).toBeLessThanOrEqual(Date.now() + 61_000);
      expect(decodeJwt(res.ticket)).toMatchObject({ sub: "alice", sid: aliceSession });

      const anon = stack.rawClient(SessionService, {});
      expect(await codeOf(anon.createStreamTicket({ cloudAgentSessionId: aliceSession }))).toBe(
        Code.Unauthenticated,
      );
      expect(await codeOf(alice.createStreamTicket({ cloudAgentSessionId: bobSession }))).toBe(Code.NotFound);
      expect(await codeOf(alice.createStreamTicket({ cloudAgentSessionId: `agent_${randomUUID()}` }))).toBe(
        Code.NotFound,
      );
      expect(await codeOf(alice.createStreamTicket({ cloudAgentSessionId: "agent_nope" }))).toBe(
        Code.InvalidArgument,
      );
    });
  });
});
