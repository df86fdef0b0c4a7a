import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { inTransaction, internalError, type Logger, type Pool, requireIdentity } from "@kilo-cloud/common";
import type { TokenService } from "@kilo-cloud/proto/token";
import {
  deleteInstallation,
  findInstallationByLogin,
  type InstallationOwner,
  type InstallationRow,
  upsertInstallation,
} from "../db/installations.js";
import type { RepositoryTokenCache } from "../github/token-cache.js";

export interface TokenHandlerDeps {
  pool: Pool;
  cache: RepositoryTokenCache;
  logger: Logger;
}

/**
 * Who may use an installation: the Kilo organization it belongs to, or, for a personal
 * account, the one Kilo user it belongs to (whichever organization the session is in).
 */
function mayUse(inst: InstallationRow, userId: string, orgId: string | undefined): boolean {
  if (inst.kilo_org_id !== null) return orgId !== undefined && inst.kilo_org_id === orgId;
  return inst.kilo_user_id === userId;
}

export function tokenHandlers(deps: TokenHandlerDeps): ServiceImpl<typeof TokenService> {
  const { pool, cache, logger } = deps;
  return {
    async getRepositoryToken(req, ctx) {
      const caller = requireIdentity(ctx.values);
      if (caller.userId !== req.userId) {
        throw new ConnectError("the service token is for another user than userId", Code.PermissionDenied);
      }
      const slash = req.repo.indexOf("/");
      const owner = req.repo.slice(0, slash);
      const name = req.repo.slice(slash + 1);
      if (name === "." || name === "..") {
        throw new ConnectError(
          `invalid request: repo: "${req.repo}" is not a repository`,
          Code.InvalidArgument,
        );
      }
      let inst: InstallationRow | undefined;
      try {
        inst = await findInstallationByLogin(pool, owner);
      } catch (err) {
        throw internalError("could not look up the installation", err);
      }
      if (!inst) {
        throw new ConnectError(`no GitHub App installation covers ${owner}`, Code.NotFound);
      }
      if (!mayUse(inst, req.userId, req.orgId)) {
        throw new ConnectError(
          inst.kilo_org_id !== null
            ? `the GitHub App installation on ${owner} belongs to another organization`
            : `the GitHub App installation on ${owner} belongs to another user`,
          Code.PermissionDenied,
        );
      }
      const minted = await cache.get(inst.installation_id, name, ctx.signal);
      logger.debug(
        { installationId: inst.installation_id, repo: req.repo, userId: req.userId, source: minted.source },
        "repository token issued",
      );
      return { token: minted.token, expiresAt: timestampFromDate(minted.expiresAt) };
    },

    async registerInstallation(req) {
      if (req.owner.case === undefined) {
        throw new ConnectError("invalid request: owner: exactly one field is required", Code.InvalidArgument);
      }
      const owner: InstallationOwner =
        req.owner.case === "kiloOrgId" ? { orgId: req.owner.value } : { userId: req.owner.value };
      let replaced: string[];
      try {
        replaced = await inTransaction(pool, (client) =>
          upsertInstallation(client, req.installationId, req.accountLogin, owner),
        );
      } catch (err) {
        if ((err as { code?: unknown }).code === "23505") {
          throw new ConnectError(
            `${req.accountLogin} was registered concurrently; try again`,
            Code.Aborted,
            undefined,
            undefined,
            err,
          );
        }
        throw internalError("could not record the installation", err);
      }
      logger.info(
        {
          installationId: req.installationId.toString(),
          accountLogin: req.accountLogin.toLowerCase(),
          owner: req.owner.case === "kiloOrgId" ? "org" : "user",
          replaced,
        },
        "installation registered",
      );
      return {};
    },

    async removeInstallation(req) {
      let removed: boolean;
      try {
        removed = await deleteInstallation(pool, req.installationId);
      } catch (err) {
        throw internalError("could not remove the installation", err);
      }
      if (!removed) {
        throw new ConnectError(`installation ${req.installationId} is not registered`, Code.NotFound);
      }
      logger.info({ installationId: req.installationId.toString() }, "installation removed");
      return {};
    },
  };
}
