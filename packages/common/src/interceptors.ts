import { randomUUID } from "node:crypto";
import { createRegistry } from "@bufbuild/protobuf";
import { createValidator, type Validator, violationsToProto } from "@bufbuild/protovalidate";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { validationRegistryFiles } from "@kilo-cloud/proto";
import { Counter, Histogram, type Registry } from "prom-client";
import type { Logger } from "./logger.js";
import { isOutage } from "./outage.js";

/** The protovalidate validator with this API's predefined rules registered. */
export function createApiValidator(): Validator {
  return createValidator({ registry: createRegistry(...validationRegistryFiles) });
}

const MAX_VIOLATIONS_IN_MESSAGE = 10;

/**
 * Enforces the `buf.validate` rules of every request message before any handler runs. The
 * error is INVALID_ARGUMENT and its message lists every violation with the field path, e.g.
 * `invalid request: prompt: must be at most 102400 bytes`; the structured violations are
 * attached as a `buf.validate.Violations` detail.
 */
export function createValidationInterceptor(validator: Validator = createApiValidator()): Interceptor {
  const check = (
    desc: Parameters<Validator["validate"]>[0],
    message: Parameters<Validator["validate"]>[1],
  ) => {
    const result = validator.validate(desc, message);
    if (result.kind === "valid") return;
    if (result.kind === "error") {
      throw new ConnectError(
        "request could not be validated",
        Code.Internal,
        undefined,
        undefined,
        result.error,
      );
    }
    const parts = result.violations.slice(0, MAX_VIOLATIONS_IN_MESSAGE).map((v) => v.toString());
    const more = result.violations.length - parts.length;
    const text = `invalid request: ${parts.join("; ")}${more > 0 ? `; and ${more} more` : ""}`;
    const [value, schema] = violationsToProto(result.violations);
    throw new ConnectError(text, Code.InvalidArgument, undefined, [{ desc: schema, value }]);
  };
  return (next) => async (req) => {
    if (!req.stream) {
      check(req.method.input, req.message);
      return next(req);
    }
    const input = req.message;
    return next({
      ...req,
      message: (async function* () {
        for await (const m of input) {
          check(req.method.input, m);
          yield m;
        }
      })(),
    });
  };
}

/** The text clients get for an unexpected error: nothing of the cause (SQL, hosts, stacks). */
export const INTERNAL_ERROR_MESSAGE = "internal error";
/** What a caller sees when a dependency (database, NATS) is down or restarting. */
export const UNAVAILABLE_MESSAGE = "temporarily unavailable, retry";

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/;

/** The request's ids for the log: its `x-request-id` (or a new one) and the session/execution it names. */
function requestIds(req: { header: Headers; stream: boolean; message?: unknown }): Record<string, string> {
  const given = req.header.get("x-request-id");
  const ids: Record<string, string> = { requestId: given && REQUEST_ID.test(given) ? given : randomUUID() };
  if (!req.stream && req.message && typeof req.message === "object") {
    const m = req.message as { cloudAgentSessionId?: unknown; executionId?: unknown };
    if (typeof m.cloudAgentSessionId === "string" && m.cloudAgentSessionId)
      ids.sessionId = m.cloudAgentSessionId;
    if (typeof m.executionId === "string" && m.executionId) ids.executionId = m.executionId;
  }
  return ids;
}

/**
 * The one boundary errors cross. A ConnectError a handler threw on purpose goes to the
 * client as it is (INTERNAL ones carry a fixed text; their cause stays here). Anything else
 * (a plain Error from a driver, pg, NATS…, or an UNKNOWN) becomes INTERNAL with a neutral
 * message naming the request id, and is logged once with its stack.
 */
export function toClientError(err: unknown): { error: ConnectError; unexpected: boolean } {
  if (err instanceof ConnectError && err.code !== Code.Unknown) return { error: err, unexpected: false };
  if (isOutage(err))
    return { error: new ConnectError(UNAVAILABLE_MESSAGE, Code.Unavailable), unexpected: true };
  return { error: new ConnectError(INTERNAL_ERROR_MESSAGE, Code.Internal), unexpected: true };
}

/**
 * Counts and times every RPC, and logs failures: the code and message at info (they are
 * meant for callers), server faults at error with their cause's stack (`err`) and the
 * request's ids. Errors inside server streams are handled the same way. Never logs bodies.
 */
export function createObservabilityInterceptor(logger: Logger, registry: Registry): Interceptor {
  const requests = new Counter({
    name: "rpc_requests_total",
    help: "RPCs handled, by method and code",
    labelNames: ["rpc_service", "rpc_method", "rpc_code"],
    registers: [registry],
  });
  const duration = new Histogram({
    name: "rpc_duration_seconds",
    help: "Time to the response headers of an RPC (streams: to the first message)",
    labelNames: ["rpc_service", "rpc_method"],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  return (next) => async (req) => {
    const labels = { rpc_service: req.service.typeName, rpc_method: req.method.name };
    const rpc = `${req.service.typeName}/${req.method.name}`;
    const ids = requestIds(req);
    const fail = (err: unknown): ConnectError => {
      const { error, unexpected } = toClientError(err);
      requests.inc({ ...labels, rpc_code: Code[error.code] ?? String(error.code) });
      const serverFault = unexpected || error.code === Code.Internal || error.code === Code.DataLoss;
      if (!serverFault) {
        logger.info({ rpc, ...ids, code: Code[error.code], error: error.rawMessage }, "rpc refused");
        return error;
      }
      // The cause: the original error, or the one an internalError() wrapped.
      const cause = unexpected ? err : (error.cause ?? err);
      logger.error(
        { rpc, ...ids, code: Code[error.code], error: error.rawMessage, err: cause },
        "rpc failed",
      );
      return unexpected
        ? new ConnectError(`${error.rawMessage} (request ${ids.requestId})`, error.code)
        : error;
    };
    const end = duration.startTimer(labels);
    try {
      const res = await next(req);
      if (!res.stream) {
        requests.inc({ ...labels, rpc_code: "ok" });
        return res;
      }
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw fail(err);
          }
          requests.inc({ ...labels, rpc_code: "ok" });
        })(),
      };
    } catch (err) {
      throw fail(err);
    } finally {
      end();
    }
  };
}

/**
 * Wraps an infrastructure failure: the caller sees a fixed text, the cause stays inside.
 * A dependency's outage (database or NATS down or restarting) answers the retryable
 * `UNAVAILABLE`; anything else `INTERNAL`.
 */
export function internalError(what: string, cause: unknown): ConnectError {
  if (isOutage(cause)) {
    return new ConnectError(
      `${what}: temporarily unavailable, retry`,
      Code.Unavailable,
      undefined,
      undefined,
      cause,
    );
  }
  return new ConnectError(what, Code.Internal, undefined, undefined, cause);
}

export function unavailable(what: string, cause: unknown): ConnectError {
  return new ConnectError(what, Code.Unavailable, undefined, undefined, cause);
}
