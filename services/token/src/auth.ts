import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  bearerToken,
  type Identity,
  INTERNAL_API_KEY_HEADER,
  identityKey,
  type ServiceTokenVerifier,
  secretEquals,
} from "@kilo-cloud/common";
import { TokenService } from "@kilo-cloud/proto/token";

/**
 * How each method authenticates its caller:
 * - `service-token`: sandbox-manager's EdDSA service token (Authorization: Bearer), whose
 *   subject the handler compares with the user the token is asked for;
 * - `internal-key`: the `x-internal-api-key` header (operators and backends, direct).
 */
export type MethodAuth = "service-token" | "internal-key";

/** Every method has an entry (the type makes a new RPC fail to compile until it has one). */
export const METHOD_AUTH: { readonly [M in keyof typeof TokenService.method]: MethodAuth } = {
  getRepositoryToken: "service-token",
  registerInstallation: "internal-key",
  removeInstallation: "internal-key",
};

export function createTokenAuthInterceptor(opts: {
  verify: ServiceTokenVerifier;
  internalApiKey: string;
}): Interceptor {
  return (next) => async (req) => {
    const auth =
      req.service.typeName === TokenService.typeName
        ? (METHOD_AUTH as Record<string, MethodAuth | undefined>)[req.method.localName]
        : undefined;
    if (auth === undefined) {
      // Deny by default: a method nobody declared is not served.
      throw new ConnectError(`${req.method.name} is not served here`, Code.Unimplemented);
    }
    if (auth === "internal-key") {
      if (!secretEquals(req.header.get(INTERNAL_API_KEY_HEADER), opts.internalApiKey)) {
        throw new ConnectError(
          `${req.method.name} needs a valid ${INTERNAL_API_KEY_HEADER} header`,
          Code.Unauthenticated,
        );
      }
      req.contextValues.set(identityKey, { userId: "internal", internal: true } satisfies Identity);
      return next(req);
    }
    const token = bearerToken(req.header.get("authorization"));
    if (!token) throw new ConnectError("missing service token", Code.Unauthenticated);
    const claims = await opts.verify(token);
    req.contextValues.set(identityKey, { userId: claims.userId, internal: false } satisfies Identity);
    return next(req);
  };
}
