export * from "./egress.js";
export * from "./ip-address.js";
export * from "./safe-fetch.js";
export * from "./ssrf.js";
