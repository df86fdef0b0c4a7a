/** The workspace operation a {@link GitError} comes from, for status events. */
export type GitStep = "clone" | "branch" | "pull" | "commit" | "push";

/**
 * A git operation on a session workspace failed. The message is safe to log and to show
 * the user: it never carries credentials (git's output is scrubbed before it is quoted).
 */
export class GitError extends Error {
  override name = "GitError";
  readonly step: GitStep;

  constructor(step: GitStep, message: string, options?: ErrorOptions) {
    super(message, options);
    this.step = step;
  }
}
