import type { GenFile } from "@bufbuild/protobuf/codegenv2";
import { file_kilocode_cloudagent_v1_rules } from "./gen/kilocode/cloudagent/v1/rules_pb.js";

export * from "./gen/kilocode/cloudagent/v1/config_pb.js";
export * from "./gen/kilocode/cloudagent/v1/rules_pb.js";
export * from "./gen/kilocode/cloudagent/v1/session_pb.js";
export * from "./gen/kilocode/cloudagent/v1/stream_pb.js";

/** Files whose extensions (predefined validation rules) the validator must know. */
export const validationRegistryFiles: GenFile[] = [file_kilocode_cloudagent_v1_rules];

/**
 * SessionService methods only backends may call (`x-internal-api-key`, checked by the
 * gateway; the session service trusts the gateway's `internal` claim for them). One list:
 * the gateway and the session service both read it.
 */
export const BACKEND_ONLY_SESSION_METHODS: ReadonlySet<string> = new Set(
  [
    "PrepareSession",
    "PrepareLegacySession",
    "UpdateSession",
    "ListCallbackDeliveries",
    "RedeliverCallback",
  ].map((m) => `kilocode.cloudagent.v1.SessionService/${m}`),
);
