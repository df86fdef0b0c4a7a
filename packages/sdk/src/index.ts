/**
 * @kilo-cloud/sdk: the public contract kilocode.cloudagent.v1 (messages, enums, services,
 * generated from proto/) and a typed client for it.
 */

export { create, fromJson, toJson } from "@bufbuild/protobuf";
export { timestampDate } from "@bufbuild/protobuf/wkt";
// What callers need to handle errors and timestamps without depending on Connect directly.
export { Code, ConnectError } from "@connectrpc/connect";
export * from "../../proto/src/gen/kilocode/cloudagent/v1/config_pb.js";
export * from "../../proto/src/gen/kilocode/cloudagent/v1/session_pb.js";
export * from "../../proto/src/gen/kilocode/cloudagent/v1/stream_pb.js";
export type { AuthOptions } from "./auth.js";
export { createKiloCloudClient, type KiloCloudClient, type KiloCloudClientOptions } from "./client.js";
export type { RetryOptions } from "./retry.js";
export type { SubscribeOptions } from "./subscribe.js";
