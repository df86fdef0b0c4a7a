export * from "./gen/kilocode/token/v1/token_pb.js";
