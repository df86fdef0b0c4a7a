import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
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
 * The gateway's authentication: a bearer JWT on every call (UNAUTHENTICATED without a valid
 * one) and, for backend-only methods, also the internal API key (PERMISSION_DENIED
 * without it), compared in constant time.
 */
export function createUserAuthInterceptor(opts: {
  verify: UserTokenVerifier;
  internalApiKey: string;
  /** Methods (`Service/Method` type names) that also need the internal API key. */
  internalMethods: ReadonlySet<string>;
  /** Methods that authenticate in their handler (e.g. with a stream ticket). */
  publicMethods?: ReadonlySet<string>;
}): Interceptor {
  return (next) => async (req) => {
    const name = `${req.service.typeName}/${req.method.name}`;
    if (opts.publicMethods?.has(name)) return next(req);
    const token = bearerToken(req.header.get("authorization"));
    if (!token)
      throw new ConnectError("missing bearer token (Authorization: Bearer <token>)", Code.Unauthenticated);
    const { userId } = await opts.verify(token);
    const internal = secretEquals(req.header.get(INTERNAL_API_KEY_HEADER), opts.internalApiKey);
    if (opts.internalMethods.has(name) && !internal) {
      throw new ConnectError(
        `${req.method.name} needs a valid ${INTERNAL_API_KEY_HEADER} header`,
        Code.PermissionDenied,
      );
    }
    req.contextValues.set(identityKey, { userId, internal } satisfies Identity);
    req.contextValues.set(userTokenKey, token);
    return next(req);
  };
}

/**
 * A service's authentication of calls from the gateway: a service token (EdDSA JWT) for
 * this service's audience. A forwarded user token must match the hash the gateway signed.
 */
export function createServiceAuthInterceptor(opts: {
  verify: ServiceTokenVerifier;
  internalMethods?: ReadonlySet<string>;
}): Interceptor {
  return (next) => async (req) => {
    const token = bearerToken(req.header.get("authorization"));
    if (!token) throw new ConnectError("missing service token", Code.Unauthenticated);
    const claims = await opts.verify(token);
    const forwarded = req.header.get(USER_TOKEN_HEADER) ?? undefined;
    if (forwarded !== undefined && claims.userTokenHash !== sha256Base64url(forwarded)) {
      throw new ConnectError("forwarded user token does not match the service token", Code.Unauthenticated);
    }
    const name = `${req.service.typeName}/${req.method.name}`;
    if (opts.internalMethods?.has(name) && !claims.internal) {
      throw new ConnectError(`${req.method.name} is for backends only`, Code.PermissionDenied);
    }
    req.contextValues.set(identityKey, {
      userId: claims.userId,
      internal: claims.internal,
    } satisfies Identity);
    if (forwarded !== undefined) req.contextValues.set(userTokenKey, forwarded);
    return next(req);
  };
}
