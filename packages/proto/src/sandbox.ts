export * from "./gen/kilocode/sandbox/v1/sandbox_pb.js";
