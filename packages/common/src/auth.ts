import { createHash, timingSafeEqual } from "node:crypto";
import { Code, ConnectError, type ContextValues, createContextKey } from "@connectrpc/connect";
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  exportPKCS8,
  exportSPKI,
  generateKeyPair,
  importPKCS8,
  importSPKI,
  type JWTPayload,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
} from "jose";

/** Who is calling, as established by the gateway from the bearer token. */
export interface Identity {
  userId: string;
  /** True when the call also carried a valid `x-internal-api-key` (backend-to-backend). */
  internal: boolean;
}

/** Where handlers find the caller's identity (set by the auth interceptor). */
export const identityKey = createContextKey<Identity | undefined>(undefined, {
  description: "caller identity",
});

export function requireIdentity(values: ContextValues): Identity {
  const id = values.get(identityKey);
  if (!id) throw new ConnectError("missing caller identity", Code.Unauthenticated);
  return id;
}

/** Extracts the token of an `Authorization: Bearer <token>` header, or undefined. */
export function bearerToken(header: string | null): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer[ ]+([^\s]+)\s*$/i.exec(header);
  return m?.[1];
}

/** Constant-time comparison of two secrets (length differences leak nothing useful). */
export function secretEquals(given: string | null | undefined, expected: string): boolean {
  if (!given) return false;
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

export function sha256Base64url(value: string): string {
  return createHash("sha256").update(value).digest("base64url");
}

// ---------------------------------------------------------------------------------------
// User bearer tokens (verified by the gateway)

export interface UserTokenConfig {
  /** HS256 shared secret (exclusive with jwksUrl). */
  hs256Secret?: string;
  /** A JWKS endpoint for asymmetric tokens (RS256/ES256/EdDSA…). */
  jwksUrl?: string;
  /** A JWKS document given inline (mainly for tests and air-gapped installs). */
  jwks?: { keys: object[] };
  issuer?: string;
  audience?: string;
  /** The claim that holds the user id (default `sub`). */
  userIdClaim?: string;
  /** Clock tolerance in seconds (default 5). */
  clockToleranceSeconds?: number;
  /** Longest accepted lifetime, `exp` − `iat` (or − now without `iat`); default 24 h. */
  maxLifetimeSeconds?: number;
}

export const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS = 24 * 60 * 60;

const ASYMMETRIC_ALGS = [
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "ES256",
  "ES384",
  "ES512",
  "EdDSA",
];

export type UserTokenVerifier = (token: string) => Promise<{ userId: string; claims: JWTPayload }>;

/**
 * Verifies users' bearer JWTs. Exactly one key source is used, and it fixes the accepted
 * algorithms: HS256 only for a shared secret, asymmetric only for a JWKS. That refuses
 * `alg: none` and algorithm confusion (an HS256 token "signed" with a public key).
 */
export function createUserTokenVerifier(cfg: UserTokenConfig): UserTokenVerifier {
  const sources = [cfg.hs256Secret, cfg.jwksUrl, cfg.jwks].filter((s) => s !== undefined);
  if (sources.length !== 1) throw new Error("configure exactly one of an HS256 secret, a JWKS URL or a JWKS");
  let key: Uint8Array | JWTVerifyGetKey;
  let algorithms: string[];
  if (cfg.hs256Secret !== undefined) {
    if (Buffer.byteLength(cfg.hs256Secret) < 32)
      throw new Error("the HS256 secret must be at least 32 bytes");
    key = new TextEncoder().encode(cfg.hs256Secret);
    algorithms = ["HS256"];
  } else if (cfg.jwksUrl !== undefined) {
    key = createRemoteJWKSet(new URL(cfg.jwksUrl), { cooldownDuration: 30_000, cacheMaxAge: 600_000 });
    algorithms = ASYMMETRIC_ALGS;
  } else {
    key = createLocalJWKSet(cfg.jwks as { keys: [] });
    algorithms = ASYMMETRIC_ALGS;
  }
  const claim = cfg.userIdClaim ?? "sub";
  const tolerance = cfg.clockToleranceSeconds ?? 5;
  const maxLifetime = cfg.maxLifetimeSeconds ?? DEFAULT_MAX_TOKEN_LIFETIME_SECONDS;
  return async (token) => {
    let payload: JWTPayload;
    try {
      const opts = {
        algorithms,
        requiredClaims: ["exp"],
        clockTolerance: tolerance,
        ...(cfg.issuer ? { issuer: cfg.issuer } : {}),
        ...(cfg.audience ? { audience: cfg.audience } : {}),
      };
      ({ payload } =
        typeof key === "function" ? await jwtVerify(token, key, opts) : await jwtVerify(token, key, opts));
    } catch (err) {
      throw new ConnectError(
        describeJoseError(err, "bearer token"),
        Code.Unauthenticated,
        undefined,
        undefined,
        err,
      );
    }
    const lifetime = (payload.exp ?? 0) - (payload.iat ?? Math.floor(Date.now() / 1000));
    if (lifetime > maxLifetime + tolerance) {
      throw new ConnectError(
        `bearer token lives longer than the ${maxLifetime} s this deployment accepts`,
        Code.Unauthenticated,
      );
    }
    const userId = payload[claim];
    if (typeof userId !== "string" || userId === "" || userId.length > 256) {
      throw new ConnectError(`bearer token has no "${claim}" claim`, Code.Unauthenticated);
    }
    return { userId, claims: payload };
  };
}

/** A short reason that is safe to show (never the token or key material). */
export function describeJoseError(err: unknown, what: string): string {
  if (err instanceof joseErrors.JWTExpired) return `${what} has expired`;
  if (err instanceof joseErrors.JWTClaimValidationFailed)
    return `${what} has an invalid "${err.claim}" claim`;
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return `${what} uses an algorithm that is not accepted`;
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return `${what} signature is invalid`;
  if (err instanceof joseErrors.JWKSNoMatchingKey) return `${what} is signed with an unknown key`;
  if (err instanceof joseErrors.JWKSTimeout) return `${what} could not be checked (key set unavailable)`;
  return `${what} is invalid`;
}

// ---------------------------------------------------------------------------------------
// Internal service tokens: the gateway vouches for the caller's identity to the services
// behind it with a short-lived EdDSA-signed JWT. Services hold only the public key, so a
// service cannot mint identities, and nothing is trusted because of where a call came from.

export interface ServiceTokenClaims {
  /** The user on whose behalf the call is made. */
  userId: string;
  internal: boolean;
  /** sha256 of a user token forwarded beside this one (x-kilo-user-token), binding both. */
  userTokenHash?: string;
}

/** The default issuer: the gateway. The session service signs as `kilo-cloud-session`. */
export const SERVICE_TOKEN_ISSUER = "kilo-cloud-gateway";
const SERVICE_TOKEN_TTL_SECONDS = 60;

export async function generateServiceKeyPair(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  return { privateKeyPem: await exportPKCS8(privateKey), publicKeyPem: await exportSPKI(publicKey) };
}

export type ServiceTokenSigner = (audience: string, claims: ServiceTokenClaims) => Promise<string>;

export async function createServiceTokenSigner(
  privateKeyPem: string,
  issuer: string = SERVICE_TOKEN_ISSUER,
): Promise<ServiceTokenSigner> {
  const key = await importPKCS8(privateKeyPem, "EdDSA");
  return (audience, claims) =>
    new SignJWT({
      internal: claims.internal,
      ...(claims.userTokenHash ? { uth: claims.userTokenHash } : {}),
    })
      .setProtectedHeader({ alg: "EdDSA", typ: "kilo-service+jwt" })
      .setIssuer(issuer)
      .setAudience(audience)
      .setSubject(claims.userId)
      .setIssuedAt()
      .setExpirationTime(`${SERVICE_TOKEN_TTL_SECONDS}s`)
      .sign(key);
}

export type ServiceTokenVerifier = (token: string) => Promise<ServiceTokenClaims>;

export async function createServiceTokenVerifier(
  publicKeyPem: string,
  audience: string,
  issuer: string = SERVICE_TOKEN_ISSUER,
): Promise<ServiceTokenVerifier> {
  const key = await importSPKI(publicKeyPem, "EdDSA");
  return async (token) => {
    try {
      const { payload } = await jwtVerify(token, key, {
        algorithms: ["EdDSA"],
        issuer,
        audience,
        typ: "kilo-service+jwt",
        maxTokenAge: `${SERVICE_TOKEN_TTL_SECONDS + 5}s`,
        clockTolerance: 5,
      });
      if (typeof payload.sub !== "string" || payload.sub === "") throw new Error("no subject");
      return {
        userId: payload.sub,
        internal: payload.internal === true,
        ...(typeof payload.uth === "string" ? { userTokenHash: payload.uth } : {}),
      };
    } catch (err) {
      throw new ConnectError(
        describeJoseError(err, "service token"),
        Code.Unauthenticated,
        undefined,
        undefined,
        err,
      );
    }
  };
}
