import { Code, ConnectError } from "@connectrpc/connect";
import { describeJoseError, type UserTokenVerifier } from "@kilo-cloud/common";
import { decodeJwt, type JWTPayload, jwtVerify } from "jose";
import type { StreamTickets } from "../handlers/stream-tickets.js";

/**
 * The hosted backend's own credentials, accepted when `HOSTED_AUTH_SECRET` (its
 * NEXTAUTH_SECRET) is configured: its API tokens (HS256, `version: 3`, user in
 * `kiloUserId`) and its stream tickets (HS256, `type: "stream_ticket"`, `userId`,
 * `cloudAgentSessionId`, 60 s).
 */

const HOSTED_TOKEN_VERSION = 3;
const HOSTED_TICKET_TYPE = "stream_ticket";

function unverifiedClaims(token: string): JWTPayload | undefined {
  try {
    return decodeJwt(token);
  } catch {
    return undefined;
  }
}

async function verifyHs256(token: string, key: Uint8Array, what: string): Promise<JWTPayload> {
  try {
    const { payload } = await jwtVerify(token, key, {
      algorithms: ["HS256"],
      requiredClaims: ["exp"],
      clockTolerance: 5,
    });
    return payload;
  } catch (err) {
    throw new ConnectError(describeJoseError(err, what), Code.Unauthenticated, undefined, undefined, err);
  }
}

/** Our bearer tokens, and the hosted backend's API tokens (told apart by `kiloUserId`). */
export function withHostedApiTokens(ours: UserTokenVerifier, secret: string | undefined): UserTokenVerifier {
  if (secret === undefined) return ours;
  const key = new TextEncoder().encode(secret);
  return async (token) => {
    const claims = unverifiedClaims(token);
    if (claims?.kiloUserId === undefined) return ours(token);
    const payload = await verifyHs256(token, key, "bearer token");
    if (payload.version !== HOSTED_TOKEN_VERSION) {
      throw new ConnectError(
        `Invalid token version: ${String(payload.version)}, expected ${HOSTED_TOKEN_VERSION}`,
        Code.Unauthenticated,
      );
    }
    const userId = payload.kiloUserId;
    if (typeof userId !== "string" || userId === "" || userId.length > 256) {
      throw new ConnectError('bearer token has no "kiloUserId" claim', Code.Unauthenticated);
    }
    return { userId, claims: payload };
  };
}

export type OwnerCheck = (userId: string, cloudAgentSessionId: string, signal: AbortSignal) => Promise<void>;

/**
 * Our stream tickets, and the hosted backend's (told apart by `type`). Ours are issued
 * after the session service confirmed ownership; a hosted one names a session of the
 * hosted backend's database, so ownership is checked here (NOT_FOUND otherwise).
 */
export function withHostedTickets(
  ours: StreamTickets,
  secret: string | undefined,
  checkOwner: OwnerCheck,
): StreamTickets {
  if (secret === undefined) return ours;
  const key = new TextEncoder().encode(secret);
  return {
    issue: ours.issue,
    async verify(ticket: string, cloudAgentSessionId: string, signal?: AbortSignal) {
      if (unverifiedClaims(ticket)?.type !== HOSTED_TICKET_TYPE)
        return ours.verify(ticket, cloudAgentSessionId);
      const payload = await verifyHs256(ticket, key, "stream ticket");
      const userId = payload.userId;
      if (typeof userId !== "string" || userId === "") {
        throw new ConnectError("Invalid ticket: missing userId", Code.Unauthenticated);
      }
      if ((payload.cloudAgentSessionId ?? payload.sessionId) !== cloudAgentSessionId) {
        throw new ConnectError("stream ticket is for another session", Code.PermissionDenied);
      }
      await checkOwner(userId, cloudAgentSessionId, signal ?? new AbortController().signal);
      return { userId, cloudAgentSessionId };
    },
  };
}
