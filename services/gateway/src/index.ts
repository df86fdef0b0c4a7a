export { buildGateway, connectGatewayInfra, type GatewayInfra } from "./build.js";
export { type GatewayConfig, loadGatewayConfig } from "./config.js";
export { createStreamTickets, STREAM_TICKET_TTL_SECONDS } from "./handlers/stream-tickets.js";
export { createGateway, type GatewayApp, type GatewayDeps } from "./server.js";
