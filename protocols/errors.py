"""Error hierarchy of the secure-aggregation protocol.

Why a hierarchy: callers must be able to tell *who* broke the protocol (h11 style).

* :class:`ConfigError` -- an impossible configuration value; raised before anything runs.
* :class:`EncodingError` -- an input vector the encoder cannot represent (NaN, inf, wrong shape).
* :class:`ProtocolError` -- everything that can go wrong while messages move. Its subclasses:

  - :class:`RemoteProtocolError` -- *the peer* sent something unacceptable (malformed, oversize,
    replayed, out of order, tampered, inconsistent, or a request that would make an honest client
    reveal too much). The receiving state machine is unchanged.
  - :class:`LocalProtocolError` -- *our caller* used the state machine wrongly (e.g. asked a client
    for a masked input before it has keys).
  - :class:`TooFewSurvivors` -- fewer than ``t`` parties remain where ``t`` are needed; the
    aggregation aborts.

Every byte string fed to the wire decoder either decodes or raises a :class:`ProtocolError`.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Root of every error raised by :mod:`protocols`."""


class ConfigError(SecAggError, ValueError):
    """A configuration value is out of its allowed range; the message names the field."""


class EncodingError(SecAggError, ValueError):
    """An input vector cannot be encoded (NaN/inf values, wrong shape or dtype, weight range)."""


class ProtocolError(SecAggError):
    """Base class for every failure while running the protocol."""


class LocalProtocolError(ProtocolError):
    """The caller drove a state machine wrongly (wrong state, missing input, closed session)."""


class RemoteProtocolError(ProtocolError):
    """A peer sent an unacceptable message; the receiving state machine did not change."""


class MalformedMessage(RemoteProtocolError):
    """The bytes do not decode: bad magic, version, type tag, length, truncation, trailing data."""


class OversizeMessage(MalformedMessage):
    """A message or one of its fields exceeds a configured limit; refused before allocation."""


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message arrived in a state where the transition table does not allow it."""


class ReplayedMessage(RemoteProtocolError):
    """A message repeats one already accepted, or belongs to a step that is already closed."""


class WrongSession(RemoteProtocolError):
    """A message carries another session's identifier."""


class InconsistentMessage(RemoteProtocolError):
    """A decodable message contradicts the protocol state (unknown peer, wrong length, ...)."""


class AuthenticationError(RemoteProtocolError):
    """An AEAD ciphertext or a signature failed to verify: tampered, replayed or misaddressed."""


class InvalidShare(InconsistentMessage):
    """A Shamir share is malformed (index 0, duplicate, out of range, not a field element) or the
    shares of a secret are inconsistent.

    Raised by :meth:`protocols.Server.close_stage` when a reconstructed mask key does not match its
    public key: then the aggregation is over -- the server is ``aborted`` and ``notifications``
    maps client ids to the wire-encoded ``Abort`` messages the transport should deliver (the only
    case where a remote fault changes the receiving machine).
    """

    def __init__(self, message: str, notifications: dict[int, bytes] | None = None) -> None:
        super().__init__(message)
        self.notifications: dict[int, bytes] = dict(notifications or {})


class DoubleRevealRefused(RemoteProtocolError):
    """An unmask request would make an honest client reveal both secrets of the same peer."""


class TooFewSurvivors(ProtocolError):
    """Fewer than ``threshold`` parties remain; the aggregation (and its session) aborts.

    ``notifications`` maps client ids to wire-encoded ``Abort`` messages the transport should
    deliver, when the server raised it.
    """

    def __init__(self, message: str, notifications: dict[int, bytes] | None = None) -> None:
        super().__init__(message)
        self.notifications: dict[int, bytes] = dict(notifications or {})


class InvalidState(LocalProtocolError):
    """Saved client state (``Client.from_bytes``) does not decode, is malformed, or was saved
    under another configuration."""


class ClientDropped(LocalProtocolError):
    """The client was declared dropped (or aborted) and stays out for the rest of the session."""


__all__ = [
    "AuthenticationError",
    "ClientDropped",
    "ConfigError",
    "DoubleRevealRefused",
    "EncodingError",
    "InconsistentMessage",
    "InvalidShare",
    "InvalidState",
    "LocalProtocolError",
    "MalformedMessage",
    "OversizeMessage",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplayedMessage",
    "SecAggError",
    "TooFewSurvivors",
    "UnexpectedMessage",
    "WrongSession",
]
