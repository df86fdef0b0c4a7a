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

/**
 * Counts and times every RPC, and logs failures: the code and message at info/warn (they
 * are meant for callers), the cause only for internal errors. Never logs request bodies.
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
    const end = duration.startTimer(labels);
    try {
      const res = await next(req);
      requests.inc({ ...labels, rpc_code: "ok" });
      return res;
    } catch (err) {
      const ce = ConnectError.from(err);
      requests.inc({ ...labels, rpc_code: Code[ce.code] ?? String(ce.code) });
      const serverFault = ce.code === Code.Internal || ce.code === Code.Unknown || ce.code === Code.DataLoss;
      const fields = {
        rpc: `${req.service.typeName}/${req.method.name}`,
        code: Code[ce.code],
        // Not `msg`: pino writes its own `msg` after the fields, and JSON parsers keep the last.
        error: ce.rawMessage,
        ...(serverFault
          ? { cause: ce.cause instanceof Error ? ce.cause.message : String(ce.cause ?? "") }
          : {}),
      };
      if (serverFault) logger.error(fields, "rpc failed");
      else logger.info(fields, "rpc refused");
      throw ce;
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
