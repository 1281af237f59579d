"""Secure aggregation for securedream: Bonawitz et al. (2017) double masking with the SecAgg+
sparse graph, as sans-IO state machines over a versioned binary wire format.

Depends on numpy and cryptography only (no torch, no I/O). Main entry points:

* :class:`SecAggConfig` -- validated parameters (n, t, graph, bits, clip, scale, mode, ...);
* :class:`InProcessSession` -- a multi-aggregation session the engine drives step by step;
* :func:`simulate` -- one call: inputs + dropout schedule -> decoded sum and bytes;
* :class:`Client`, :class:`Server` -- the sans-IO state machines for other transports;
* :mod:`protocols.encoding` -- float <-> Z_{2^b} encoding with its error bound;
* :mod:`protocols.testing` -- property-testing kit and transport conformance harness (imports
  hypothesis; not imported here);
* :mod:`protocols.vectors` -- the interoperability test vectors (``python -m protocols.vectors``).
"""

from protocols.client import Client
from protocols.encoding import (
    EncodingParams,
    decode_integer_sum,
    decode_sum,
    encode,
    encode_integers,
    max_safe_scale,
)
from protocols.errors import (
    AuthenticationError,
    ClientDropped,
    ConfigError,
    DoubleRevealRefused,
    EncodingError,
    InconsistentMessage,
    InvalidShare,
    InvalidState,
    LocalProtocolError,
    MalformedMessage,
    OversizeMessage,
    ProtocolError,
    RemoteProtocolError,
    ReplayedMessage,
    SecAggError,
    TooFewSurvivors,
    UnexpectedMessage,
    WrongSession,
)
from protocols.graph import GraphParameters, secagg_plus_parameters
from protocols.params import SecAggConfig
from protocols.server import Server, ServerResult, StageOutput
from protocols.session import AggregateResult, InProcessSession, Stage
from protocols.simulate import SimulationResult, simulate

__version__ = "0.1.0"

__all__ = [
    "AggregateResult",
    "AuthenticationError",
    "Client",
    "ClientDropped",
    "ConfigError",
    "DoubleRevealRefused",
    "EncodingError",
    "EncodingParams",
    "GraphParameters",
    "InProcessSession",
    "InconsistentMessage",
    "InvalidShare",
    "InvalidState",
    "LocalProtocolError",
    "MalformedMessage",
    "OversizeMessage",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplayedMessage",
    "SecAggConfig",
    "SecAggError",
    "Server",
    "ServerResult",
    "SimulationResult",
    "Stage",
    "StageOutput",
    "TooFewSurvivors",
    "UnexpectedMessage",
    "WrongSession",
    "decode_integer_sum",
    "decode_sum",
    "encode",
    "encode_integers",
    "max_safe_scale",
    "secagg_plus_parameters",
    "simulate",
]
