import type { Interceptor } from "@connectrpc/connect";

/** Where the client's credentials come from. */
export interface AuthOptions {
  /** A bearer token for every call. */
  token?: string;
  /** Called before each call (for tokens that expire); wins over `token`. */
  getToken?: () => string | Promise<string>;
  /** The operator's backend key (x-internal-api-key), for backends that prepare sessions. */
  internalApiKey?: string;
}

/** Sets `authorization: Bearer …` (and the internal key when given) on every request. */
export function authInterceptor(options: AuthOptions): Interceptor {
  return (next) => async (req) => {
    const token = options.getToken ? await options.getToken() : options.token;
    if (token) req.header.set("authorization", `Bearer ${token}`);
    if (options.internalApiKey) req.header.set("x-internal-api-key", options.internalApiKey);
    return next(req);
  };
}
