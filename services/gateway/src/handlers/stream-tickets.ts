import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { describeJoseError } from "@kilo-cloud/common";
import { jwtVerify, SignJWT } from "jose";

/** Stream tickets live one minute: long enough to open a stream, too short to be worth stealing. */
export const STREAM_TICKET_TTL_SECONDS = 60;
const TICKET_TYPE = "stream-ticket";
const ISSUER = "kilo-cloud-gateway";
const AUDIENCE = "kilo-cloud-stream";

export interface StreamTicketClaims {
  userId: string;
  cloudAgentSessionId: string;
}

/**
 * Stream tickets: HS256 JWTs that only the gateway issues and checks, bound to one user
 * and one session, typed (so no other token of ours passes as one) and with a nonce.
 */
export function createStreamTickets(secret: string, now: () => number = Date.now) {
  const key = new TextEncoder().encode(secret);
  return {
    async issue(claims: StreamTicketClaims): Promise<{ ticket: string; expiresAt: Date }> {
      const iat = Math.floor(now() / 1000);
      const exp = iat + STREAM_TICKET_TTL_SECONDS;
      const ticket = await new SignJWT({ typ: TICKET_TYPE, sid: claims.cloudAgentSessionId })
        .setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setSubject(claims.userId)
        .setJti(randomUUID())
        .setIssuedAt(iat)
        .setExpirationTime(exp)
        .sign(key);
      return { ticket, expiresAt: new Date(exp * 1000) };
    },

    /** Checks a ticket for a session; UNAUTHENTICATED when it is not valid for it. */
    async verify(
      ticket: string,
      cloudAgentSessionId: string,
      _signal?: AbortSignal,
    ): Promise<StreamTicketClaims> {
      let payload: Record<string, unknown>;
      try {
        ({ payload } = await jwtVerify(ticket, key, {
          algorithms: ["HS256"],
          issuer: ISSUER,
          audience: AUDIENCE,
          currentDate: new Date(now()),
          requiredClaims: ["exp", "iat", "jti", "sub"],
        }));
      } catch (err) {
        throw new ConnectError(describeJoseError(err, "stream ticket"), Code.Unauthenticated);
      }
      if (payload.typ !== TICKET_TYPE || typeof payload.sub !== "string") {
        throw new ConnectError("stream ticket is invalid", Code.Unauthenticated);
      }
      if (payload.sid !== cloudAgentSessionId) {
        throw new ConnectError("stream ticket is for another session", Code.PermissionDenied);
      }
      return { userId: payload.sub, cloudAgentSessionId };
    },
  };
}

export type StreamTickets = ReturnType<typeof createStreamTickets>;
