export * from "./git-server.js";
export * from "./github-api.js";
export * from "./kilo-replayer.js";
export * from "./model-server.js";
export * from "./nats.js";
export * from "./postgres.js";
export * from "./private-postgres.js";
export * from "./secrets.js";
