"""Named errors of the secure-aggregation package.

Every security or protocol check raises one of these (never ``assert``). Protocol errors
carry the stage and, where one is to blame or concerned, the client id, so that a caller
can log them and decide whom to treat as dropped.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error raised by :mod:`secure_agg`."""


class ConfigError(SecAggError, ValueError):
    """A configuration is invalid or unsafe (for example, its sum could wrap modulo 2^k)."""


class EncodingError(SecAggError, ValueError):
    """An input vector cannot be encoded (wrong shape or length, NaN or infinity, bad weight)."""


class InsufficientSharesError(SecAggError, ValueError):
    """Fewer Shamir shares than the threshold were given to reconstruct a secret."""


class ProtocolError(SecAggError):
    """A message broke the protocol. ``stage`` and ``client`` say where and whom it concerns."""

    def __init__(self, message: str, *, stage: str | None = None, client: int | None = None):
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.client = client

    def __str__(self) -> str:
        where = [f"stage {self.stage}"] if self.stage is not None else []
        where += [f"client {self.client}"] if self.client is not None else []
        return f"[{', '.join(where)}] {self.message}" if where else self.message


class MalformedMessageError(ProtocolError):
    """A message could not be parsed, or its fields are inconsistent with the round."""


class ReplayError(ProtocolError):
    """A message was already processed, or belongs to another round."""


class StageError(ProtocolError):
    """A message arrived for a stage other than the current one (reordered, early or late)."""


class ForgedMessageError(ProtocolError):
    """A signature, authentication tag or claimed identity does not verify."""


class ConsistencyError(ProtocolError):
    """The server told this client a story that contradicts what the client saw or signed."""


class DoubleRevealError(ProtocolError):
    """A request would reveal both the self-mask share and the key share of one peer."""


class TooFewSurvivorsError(ProtocolError):
    """Too few clients remain to continue safely; the round is aborted and nothing is revealed."""


class ReconstructionError(ProtocolError):
    """Shares reconstructed a secret that does not match its commitment or public key."""
