import { Code } from "@connectrpc/connect";
import { TRPCError } from "@trpc/server";
import { upstreamError } from "../handlers/forward.js";

type TRPCCode = TRPCError["code"];

/**
 * The one mapping of our Connect codes to tRPC codes (and so to HTTP statuses). State
 * errors (not prepared, already initiated…) are BAD_REQUEST, as the hosted product answers.
 */
const TRPC_CODES: Record<Code, TRPCCode> = {
  [Code.Canceled]: "CLIENT_CLOSED_REQUEST",
  [Code.Unknown]: "INTERNAL_SERVER_ERROR",
  [Code.InvalidArgument]: "BAD_REQUEST",
  [Code.DeadlineExceeded]: "GATEWAY_TIMEOUT",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "CONFLICT",
  [Code.PermissionDenied]: "FORBIDDEN",
  [Code.ResourceExhausted]: "TOO_MANY_REQUESTS",
  [Code.FailedPrecondition]: "BAD_REQUEST",
  [Code.Aborted]: "CONFLICT",
  [Code.OutOfRange]: "BAD_REQUEST",
  [Code.Unimplemented]: "NOT_IMPLEMENTED",
  [Code.Internal]: "INTERNAL_SERVER_ERROR",
  [Code.Unavailable]: "SERVICE_UNAVAILABLE",
  [Code.DataLoss]: "INTERNAL_SERVER_ERROR",
  [Code.Unauthenticated]: "UNAUTHORIZED",
};

export function trpcCodeOf(code: Code): TRPCCode {
  return TRPC_CODES[code] ?? "INTERNAL_SERVER_ERROR";
}

/** `github_repo` → `githubRepo`: field paths as the hosted product's JSON names them. */
export function camelFieldNames(message: string): string {
  return message.replace(
    /\b([a-z][a-z0-9]*)((?:_[a-z0-9]+)+)\b/g,
    (_, head: string, rest: string) =>
      head + rest.replace(/_([a-z0-9])/g, (__, c: string) => c.toUpperCase()),
  );
}

/**
 * Any error of a call behind the facade, as a TRPCError: caller-facing codes keep their
 * message (field names in the hosted JSON spelling), everything else is neutral and keeps
 * its cause for the log.
 */
export function toTRPCError(err: unknown): TRPCError {
  if (err instanceof TRPCError) return err;
  const ce = upstreamError(err, "session service");
  return new TRPCError({
    code: trpcCodeOf(ce.code),
    message: camelFieldNames(ce.rawMessage),
    cause: ce.cause instanceof Error ? ce.cause : ce,
  });
}

/** A request the facade refuses before calling anything (bad JSON shape for a field). */
export function badRequest(message: string): TRPCError {
  return new TRPCError({ code: "BAD_REQUEST", message });
}
