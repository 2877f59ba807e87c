"""Secure aggregation: the server learns only the sum of the clients' vectors.

The double-masking protocol of Bonawitz et al. (CCS 2017), with the sparse neighbour graph of
SecAgg+ (Bell et al., CCS 2020) as an option. Pure: numpy, ``cryptography`` and pydantic only.

Layers (one concept a module): ``crypto`` (Ed25519, X25519 + HKDF, AES-GCM), ``prg`` (seed ->
mask words), ``shamir`` (t-of-n shares), ``config`` (validated parameters), ``encoding``
(fixed point), ``graph`` (who masks with whom), ``messages`` (pydantic wire messages),
``client`` / ``server`` (the two state machines), ``simulate`` (a whole round in one process).
"""

from .client import ClientSession, Progress
from .config import SecAggConfig
from .crypto import KeyPair, generate_identity
from .encoding import decode, encode, error_bound, pack_weighted, unpack_weighted
from .errors import (
    ConfigError,
    ConsistencyError,
    DoubleRevealError,
    EncodingError,
    ForgedMessageError,
    InsufficientSharesError,
    MalformedMessageError,
    ProtocolError,
    ReconstructionError,
    ReplayError,
    SecAggError,
    StageError,
    TooFewSurvivorsError,
)
from .messages import ClientMessage, Message, ServerMessage, Stage, parse
from .server import AggregateResult, ServerSession
from .simulate import SimulationResult, make_identities, simulate_round

__all__ = [
    "AggregateResult",
    "ClientMessage",
    "ClientSession",
    "ConfigError",
    "ConsistencyError",
    "DoubleRevealError",
    "EncodingError",
    "ForgedMessageError",
    "InsufficientSharesError",
    "KeyPair",
    "MalformedMessageError",
    "Message",
    "ProtocolError",
    "Progress",
    "ReconstructionError",
    "ReplayError",
    "SecAggConfig",
    "SecAggError",
    "ServerMessage",
    "ServerSession",
    "SimulationResult",
    "Stage",
    "StageError",
    "TooFewSurvivorsError",
    "decode",
    "encode",
    "error_bound",
    "generate_identity",
    "make_identities",
    "pack_weighted",
    "parse",
    "simulate_round",
    "unpack_weighted",
]
