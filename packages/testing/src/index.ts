export * from "./git-server.js";
export * from "./model-server.js";
export * from "./nats.js";
export * from "./postgres.js";
export * from "./secrets.js";
