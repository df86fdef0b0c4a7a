import { randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { createServiceTokenSigner, generateServiceKeyPair } from "@kilo-cloud/common";
import { decodeJwt, decodeProtectedHeader, SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { createStreamTickets, STREAM_TICKET_TTL_SECONDS } from "./stream-tickets.js";

/** Stream tickets with a fake clock: lifetime, binding to a session, type, algorithm, nonce. */

const SECRET = randomBytes(32).toString("hex");
const SESSION = "agent_11111111-1111-4111-8111-111111111111";
const OTHER_SESSION = "agent_22222222-2222-4222-8222-222222222222";
const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);

function fakeClock(start = T0) {
  let now = start;
  return {
    now: () => now,
    advance(ms: number) {
      now += ms;
    },
  };
}

async function refusal(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    return { code: ce.code, message: ce.rawMessage };
  }
  throw new Error("expected the ticket to be refused");
}

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** An HS256 token signed with the tickets' own secret, with the given claims. */
function hs256(claims: Record<string, unknown>, header: Record<string, unknown> = {}) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", ...header })
    .sign(new TextEncoder().encode(SECRET));
}

/** The claims a ticket of ours carries at `iat` (seconds). */
const ticketClaims = (iat: number, extra: Record<string, unknown> = {}) => ({
  iss: "kilo-cloud-gateway",
  aud: "kilo-cloud-stream",
  sub: "alice",
  sid: SESSION,
  jti: "a-nonce",
  iat,
  exp: iat + STREAM_TICKET_TTL_SECONDS,
  ...extra,
});

describe("stream tickets", () => {
  it("work within 60 s of issue and are refused after", async () => {
    const clock = fakeClock();
    const tickets = createStreamTickets(SECRET, clock.now);
    const { ticket, expiresAt } = await tickets.issue({ userId: "alice", cloudAgentSessionId: SESSION });
    expect(expiresAt.getTime()).toBe(T0 + 60_000);

    expect(await tickets.verify(ticket, SESSION)).toEqual({ userId: "alice", cloudAgentSessionId: SESSION });
    clock.advance(30_000);
    await expect(tickets.verify(ticket, SESSION)).resolves.toMatchObject({ userId: "alice" });
    clock.advance(29_999); // 59.999 s
    await expect(tickets.verify(ticket, SESSION)).resolves.toMatchObject({ userId: "alice" });

    clock.advance(1); // 60 s: exp is exclusive
    expect(await refusal(tickets.verify(ticket, SESSION))).toEqual({
      code: Code.Unauthenticated,
      message: "stream ticket has expired",
    });
    clock.advance(1_000); // 61 s
    expect(await refusal(tickets.verify(ticket, SESSION))).toEqual({
      code: Code.Unauthenticated,
      message: "stream ticket has expired",
    });
    clock.advance(3_600_000);
    expect((await refusal(tickets.verify(ticket, SESSION))).code).toBe(Code.Unauthenticated);
  });

  it("a ticket for another session is PERMISSION_DENIED", async () => {
    const tickets = createStreamTickets(SECRET, fakeClock().now);
    const { ticket } = await tickets.issue({ userId: "alice", cloudAgentSessionId: SESSION });
    expect(await refusal(tickets.verify(ticket, OTHER_SESSION))).toEqual({
      code: Code.PermissionDenied,
      message: "stream ticket is for another session",
    });
  });

  it("a ticket signed with another secret is refused", async () => {
    const clock = fakeClock();
    const other = createStreamTickets(randomBytes(32).toString("hex"), clock.now);
    const { ticket } = await other.issue({ userId: "alice", cloudAgentSessionId: SESSION });
    expect(await refusal(createStreamTickets(SECRET, clock.now).verify(ticket, SESSION))).toEqual({
      code: Code.Unauthenticated,
      message: "stream ticket signature is invalid",
    });
  });

  it("tokens of other types are refused, even when signed with the same secret", async () => {
    const tickets = createStreamTickets(SECRET, fakeClock().now);
    const iat = Math.floor(T0 / 1000);

    // A real service token (EdDSA, issued by the gateway for the session service).
    const keys = await generateServiceKeyPair();
    const sign = await createServiceTokenSigner(keys.privateKeyPem);
    const serviceToken = await sign("kilo-cloud-session", { userId: "alice", internal: false });
    expect(await refusal(tickets.verify(serviceToken, SESSION))).toEqual({
      code: Code.Unauthenticated,
      message: "stream ticket uses an algorithm that is not accepted",
    });

    // A user bearer token signed with the same secret (HS256, no iss/aud/typ/jti).
    const userToken = await hs256({ sub: "alice", iat, exp: iat + 3600 });
    expect((await refusal(tickets.verify(userToken, SESSION))).code).toBe(Code.Unauthenticated);

    // Everything a ticket has except its type claim, or with another type.
    for (const claims of [
      ticketClaims(iat, { typ: undefined }),
      ticketClaims(iat, { typ: "service" }),
      ticketClaims(iat, { typ: "kilo-service+jwt" }),
    ]) {
      expect(await refusal(tickets.verify(await hs256(claims, { typ: "JWT" }), SESSION))).toEqual({
        code: Code.Unauthenticated,
        message: "stream ticket is invalid",
      });
    }
    // With the type but without a nonce, or for another audience.
    for (const claims of [
      ticketClaims(iat, { typ: "stream-ticket", jti: undefined }),
      ticketClaims(iat, { typ: "stream-ticket", aud: "kilo-cloud-session" }),
      ticketClaims(iat, { typ: "stream-ticket", iss: "someone-else" }),
    ]) {
      expect((await refusal(tickets.verify(await hs256(claims), SESSION))).code).toBe(Code.Unauthenticated);
    }
    // Control: the same construction with every claim right is accepted.
    const good = await hs256(ticketClaims(iat, { typ: "stream-ticket" }));
    expect(await tickets.verify(good, SESSION)).toEqual({ userId: "alice", cloudAgentSessionId: SESSION });
  });

  it("`alg: none` is refused, and so is a re-signed or stripped ticket", async () => {
    const tickets = createStreamTickets(SECRET, fakeClock().now);
    const { ticket } = await tickets.issue({ userId: "alice", cloudAgentSessionId: SESSION });
    const [, payload, signature] = ticket.split(".");
    for (const header of [{ alg: "none" }, { alg: "none", typ: "JWT" }, { alg: "None" }, { alg: "NONE" }]) {
      for (const sig of ["", signature]) {
        const forged = `${b64(header)}.${payload}.${sig}`;
        expect((await refusal(tickets.verify(forged, SESSION))).code).toBe(Code.Unauthenticated);
      }
    }
    // Claims changed under the original signature (another user / session).
    const altered = b64({ ...decodeJwt(ticket), sub: "bob", sid: OTHER_SESSION });
    expect(
      await refusal(tickets.verify(`${ticket.split(".")[0]}.${altered}.${signature}`, OTHER_SESSION)),
    ).toEqual({ code: Code.Unauthenticated, message: "stream ticket signature is invalid" });
    // HS512 with the same secret: not the accepted algorithm.
    const hs512 = await new SignJWT(decodeJwt(ticket))
      .setProtectedHeader({ alg: "HS512" })
      .sign(new TextEncoder().encode(SECRET));
    expect(await refusal(tickets.verify(hs512, SESSION))).toEqual({
      code: Code.Unauthenticated,
      message: "stream ticket uses an algorithm that is not accepted",
    });
    for (const junk of ["", "not-a-jwt", "a.b.c", `${b64({ alg: "HS256" })}..`]) {
      expect((await refusal(tickets.verify(junk, SESSION))).code).toBe(Code.Unauthenticated);
    }
  });

  it("each ticket carries its own jti, and the claims it is documented to", async () => {
    const tickets = createStreamTickets(SECRET, fakeClock().now);
    const issued = await Promise.all(
      Array.from({ length: 200 }, () => tickets.issue({ userId: "alice", cloudAgentSessionId: SESSION })),
    );
    const jtis = issued.map(({ ticket }) => decodeJwt(ticket).jti);
    for (const j of jtis) expect(j).toMatch(/^[0-9a-f-]{36}$/);
    expect(new Set(jtis).size).toBe(200);
    // Same user, session and second: still 200 distinct tickets.
    expect(new Set(issued.map((i) => i.ticket)).size).toBe(200);

    const { ticket } = issued[0]!;
    expect(decodeProtectedHeader(ticket)).toEqual({ alg: "HS256", typ: "JWT" });
    const iat = Math.floor(T0 / 1000);
    expect(decodeJwt(ticket)).toEqual({
      typ: "stream-ticket",
      sid: SESSION,
      iss: "kilo-cloud-gateway",
      aud: "kilo-cloud-stream",
      sub: "alice",
      jti: jtis[0],
      iat,
      exp: iat + 60,
    });
  });
});
