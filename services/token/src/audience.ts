/** The audience of service tokens addressed to the token service. */
export const TOKEN_SERVICE_AUDIENCE = "kilo-cloud-token";

/** The issuer of the service tokens the token service accepts: sandbox-manager. */
export const TOKEN_SERVICE_CALLER_ISSUER = "kilo-cloud-sandbox";
