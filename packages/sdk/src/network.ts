import { Code, ConnectError } from "@connectrpc/connect";

/**
 * fetch, with a failure to reach the server (refused, reset, DNS) reported as UNAVAILABLE,
 * as gRPC does, instead of Connect-over-fetch's UNKNOWN: it is what retries act on.
 * Aborts stay aborts.
 */
export function unavailableOnNetworkError(fetchImpl: typeof globalThis.fetch): typeof globalThis.fetch {
  return async (input, init) => {
    try {
      return await fetchImpl(input, init);
    } catch (err) {
      if (init?.signal?.aborted || (err instanceof Error && err.name === "AbortError")) throw err;
      throw new ConnectError("the server could not be reached", Code.Unavailable, undefined, undefined, err);
    }
  };
}
