/** The hosted README imports `AppRouter` from './router': here it is our router's type. */
export type { CloudAgentRouter as AppRouter } from "../../../src/trpc/router.js";
