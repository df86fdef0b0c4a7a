import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { ServiceTokenSigner } from "@kilo-cloud/common";
import { TokenService } from "@kilo-cloud/proto/token";
import { TOKEN_SERVICE_AUDIENCE } from "./audience.js";

export { TOKEN_SERVICE_AUDIENCE, TOKEN_SERVICE_CALLER_ISSUER } from "./audience.js";

/** On whose behalf a token is asked for (sandbox-manager's SandboxKey fits). */
export interface RepositoryTokenKey {
  userId: string;
  orgId?: string | undefined;
}

export interface TokenClientOptions {
  /** The token service, e.g. `http://token:8083` (or give `transport`). */
  baseUrl?: string;
  transport?: Transport;
  /**
   * Signs a service token per call: sandbox-manager's signer, made with
   * `createServiceTokenSigner(privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER)`.
   */
  sign: ServiceTokenSigner;
  /** Deadline of one call (default 30 s: a mint may wait for GitHub). */
  timeoutMs?: number;
}

export interface TokenClient {
  /** A token for `owner/name`, valid for at least the service's cache margin. */
  get(repo: string, key: RepositoryTokenKey, signal?: AbortSignal): Promise<string>;
  /** The same, with the token's expiry. */
  getWithExpiry(
    repo: string,
    key: RepositoryTokenKey,
    signal?: AbortSignal,
  ): Promise<{ token: string; expiresAt: Date }>;
}

/**
 * The client sandbox-manager uses for GitHub repository tokens. Errors are ConnectErrors
 * with the service's code (NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE, ...); they never hold
 * a token.
 */
export function createTokenClient(opts: TokenClientOptions): TokenClient {
  if (!opts.transport && !opts.baseUrl) throw new Error("createTokenClient needs a baseUrl or a transport");
  const transport =
    opts.transport ?? createConnectTransport({ baseUrl: opts.baseUrl ?? "", httpVersion: "1.1" });
  const client = createClient(TokenService, transport);
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const getWithExpiry: TokenClient["getWithExpiry"] = async (repo, key, signal) => {
    const serviceToken = await opts.sign(TOKEN_SERVICE_AUDIENCE, { userId: key.userId, internal: false });
    const res = await client.getRepositoryToken(
      { repo, userId: key.userId, ...(key.orgId !== undefined ? { orgId: key.orgId } : {}) },
      { headers: { authorization: `Bearer ${serviceToken}` }, timeoutMs, ...(signal ? { signal } : {}) },
    );
    if (!res.token || !res.expiresAt) throw new Error("the token service answered without a token");
    return { token: res.token, expiresAt: timestampDate(res.expiresAt) };
  };
  return {
    getWithExpiry,
    async get(repo, key, signal) {
      return (await getWithExpiry(repo, key, signal)).token;
    },
  };
}
