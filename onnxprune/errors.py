"""One exception type for everything a user can get wrong: the CLI prints its message on one line."""


class OnnxPruneError(Exception):
    """A problem with the user's input or request (not a bug): printed without a traceback."""


class VerificationError(OnnxPruneError):
    """The pruned model does not match the masked original: the rewrite must not be written."""
