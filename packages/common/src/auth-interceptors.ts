import { Code, ConnectError, createContextKey, type HandlerContext } from "@connectrpc/connect";
import {
  bearerToken,
  type Identity,
  identityKey,
  type ServiceTokenVerifier,
  secretEquals,
  sha256Base64url,
  type UserTokenVerifier,
} from "./auth.js";

/** Header carrying the caller's own bearer token from the gateway to a service that keeps it. */
export const USER_TOKEN_HEADER = "x-kilo-user-token";
export const INTERNAL_API_KEY_HEADER = "x-internal-api-key";

/** The caller's bearer token, for the few handlers that must keep it (sealed). */
export const userTokenKey = createContextKey<string | undefined>(undefined, {
  description: "caller bearer token",
});

/**
 * Runs before any byte of the request body is read (Connect's `requestGate`): an
 * unauthenticated caller cannot make a server buffer, decompress or parse anything.
 */
export type RequestGate = (ctx: HandlerContext) => Promise<void>;

/**
 * The gateway's authentication: a bearer JWT on every call (UNAUTHENTICATED without a valid
 * one) and, for backend-only methods, also the internal API key (PERMISSION_DENIED
 * without it), compared in constant time.
 */
export function createUserAuthGate(opts: {
  verify: UserTokenVerifier;
  internalApiKey: string;
  /** Methods (`Service/Method` type names) that also need the internal API key. */
  internalMethods: ReadonlySet<string>;
  /** Methods that authenticate in their handler (e.g. with a stream ticket). */
  publicMethods?: ReadonlySet<string>;
}): RequestGate {
  return async (ctx) => {
    const name = `${ctx.service.typeName}/${ctx.method.name}`;
    if (opts.publicMethods?.has(name)) return;
    const token = bearerToken(ctx.requestHeader.get("authorization"));
    if (!token)
      throw new ConnectError("missing bearer token (Authorization: Bearer <token>)", Code.Unauthenticated);
    const { userId } = await opts.verify(token);
    const internal = secretEquals(ctx.requestHeader.get(INTERNAL_API_KEY_HEADER), opts.internalApiKey);
    if (opts.internalMethods.has(name) && !internal) {
      throw new ConnectError(
        `${ctx.method.name} needs a valid ${INTERNAL_API_KEY_HEADER} header`,
        Code.PermissionDenied,
      );
    }
    ctx.values.set(identityKey, { userId, internal } satisfies Identity);
    ctx.values.set(userTokenKey, token);
  };
}

/**
 * A service's authentication of calls from the gateway: a service token (EdDSA JWT) for
 * this service's audience. A forwarded user token must match the hash the gateway signed.
 */
export function createServiceAuthGate(opts: {
  verify: ServiceTokenVerifier;
  internalMethods?: ReadonlySet<string>;
}): RequestGate {
  return async (ctx) => {
    const token = bearerToken(ctx.requestHeader.get("authorization"));
    if (!token) throw new ConnectError("missing service token", Code.Unauthenticated);
    const claims = await opts.verify(token);
    const forwarded = ctx.requestHeader.get(USER_TOKEN_HEADER) ?? undefined;
    if (forwarded !== undefined && claims.userTokenHash !== sha256Base64url(forwarded)) {
      throw new ConnectError("forwarded user token does not match the service token", Code.Unauthenticated);
    }
    const name = `${ctx.service.typeName}/${ctx.method.name}`;
    if (opts.internalMethods?.has(name) && !claims.internal) {
      throw new ConnectError(`${ctx.method.name} is for backends only`, Code.PermissionDenied);
    }
    ctx.values.set(identityKey, {
      userId: claims.userId,
      internal: claims.internal,
    } satisfies Identity);
    if (forwarded !== undefined) ctx.values.set(userTokenKey, forwarded);
  };
}
