"""The one transition table of the protocol, for both roles (in the spirit of h11's ``_state.py``).

Why one table: every ordering rule of the protocol is readable here, in one place, instead of being
spread over ``if`` statements in the client and the server. Both state machines ask
:func:`next_state` before they change anything; a missing entry means "not allowed now", and the
caller turns it into :class:`UnexpectedMessage` (the peer's fault) or
:class:`LocalProtocolError` (our caller's fault).

Events are the message types (sent or received, depending on the role) plus a few local events:
``CLOSE_STAGE`` (the server's transport decides that everyone still missing has dropped),
``DECLARED_DROPPED`` (the server told a client it is out), ``LOCAL_ABORT`` and ``CLOSE``.

Some edges exist only in one mode (the consistency check is active-mode only); the table maps such
an edge to a per-mode target.
"""

from __future__ import annotations

import enum

from protocols.messages import MessageType


class Role(enum.Enum):
    """Which side of the protocol a state machine plays."""

    CLIENT = "client"
    SERVER = "server"


class Mode(enum.Enum):
    """Adversary model the session runs in."""

    SEMI_HONEST = "semi-honest"
    ACTIVE = "active"


class State(enum.Enum):
    """States of both roles. Terminal: FINISHED, DROPPED, ABORTED."""

    # client
    IDLE = "idle"
    AWAIT_ROSTER = "await-roster"
    AWAIT_FORWARD = "await-forward"
    AWAIT_INPUT = "await-input"
    AWAIT_CONSISTENCY = "await-consistency"
    AWAIT_UNMASK = "await-unmask"
    DROPPED = "dropped"
    # server
    COLLECT_KEYS = "collect-keys"
    COLLECT_SHARES = "collect-shares"
    COLLECT_INPUTS = "collect-inputs"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK = "collect-unmask"
    # both
    FINISHED = "finished"
    ABORTED = "aborted"


class Local(enum.Enum):
    """Events that are not messages."""

    CLOSE_STAGE = "close-stage"
    DECLARED_DROPPED = "declared-dropped"
    LOCAL_ABORT = "local-abort"
    CLOSE = "close"


Event = MessageType | Local
Target = State | dict[Mode, State]

TERMINAL = frozenset({State.FINISHED, State.DROPPED, State.ABORTED})

C, S = Role.CLIENT, Role.SERVER
M = MessageType

#: (role, state, event) -> next state (or per-mode next state; a missing mode = not allowed).
TRANSITIONS: dict[tuple[Role, State, Event], Target] = {
    # ---- client: session set-up (first aggregation) ----
    (C, State.IDLE, M.ADVERTISE_KEYS): State.AWAIT_ROSTER,  # sent
    (C, State.AWAIT_ROSTER, M.ROSTER): State.AWAIT_FORWARD,  # replies ShareKeys
    (C, State.AWAIT_FORWARD, M.FORWARD_SHARES): State.AWAIT_INPUT,
    # ---- client: every aggregation ----
    (C, State.AWAIT_INPUT, M.MASKED_INPUT): {  # sent
        Mode.SEMI_HONEST: State.AWAIT_UNMASK,
        Mode.ACTIVE: State.AWAIT_CONSISTENCY,
    },
    (C, State.AWAIT_CONSISTENCY, M.CONSISTENCY_REQUEST): {Mode.ACTIVE: State.AWAIT_UNMASK},
    (C, State.AWAIT_UNMASK, M.UNMASK_REQUEST): State.AWAIT_INPUT,  # replies UnmaskShares
    # ---- server ----
    (S, State.COLLECT_KEYS, M.ADVERTISE_KEYS): State.COLLECT_KEYS,
    (S, State.COLLECT_KEYS, Local.CLOSE_STAGE): State.COLLECT_SHARES,  # sends Roster
    (S, State.COLLECT_SHARES, M.SHARE_KEYS): State.COLLECT_SHARES,
    (S, State.COLLECT_SHARES, Local.CLOSE_STAGE): State.COLLECT_INPUTS,  # sends ForwardShares
    (S, State.COLLECT_INPUTS, M.MASKED_INPUT): State.COLLECT_INPUTS,
    (S, State.COLLECT_INPUTS, Local.CLOSE_STAGE): {
        Mode.SEMI_HONEST: State.COLLECT_UNMASK,  # sends UnmaskRequest
        Mode.ACTIVE: State.COLLECT_SIGNATURES,  # sends ConsistencyRequest
    },
    (S, State.COLLECT_SIGNATURES, M.CONSISTENCY_SIGNATURE): {Mode.ACTIVE: State.COLLECT_SIGNATURES},
    (S, State.COLLECT_SIGNATURES, Local.CLOSE_STAGE): {Mode.ACTIVE: State.COLLECT_UNMASK},
    (S, State.COLLECT_UNMASK, M.UNMASK_SHARES): State.COLLECT_UNMASK,
    (S, State.COLLECT_UNMASK, Local.CLOSE_STAGE): State.COLLECT_INPUTS,  # result; next step
}

# Leaving the protocol is possible from every live state.
for _state in State:
    if _state in TERMINAL:
        continue
    TRANSITIONS[(C, _state, Local.CLOSE)] = State.FINISHED
    TRANSITIONS[(S, _state, Local.CLOSE)] = State.FINISHED
    TRANSITIONS[(C, _state, Local.LOCAL_ABORT)] = State.ABORTED
    TRANSITIONS[(S, _state, Local.LOCAL_ABORT)] = State.ABORTED
    TRANSITIONS[(C, _state, M.ABORT)] = State.ABORTED
    if _state not in (State.IDLE, State.AWAIT_ROSTER):
        TRANSITIONS[(C, _state, Local.DECLARED_DROPPED)] = State.DROPPED

INITIAL = {Role.CLIENT: State.IDLE, Role.SERVER: State.COLLECT_KEYS}


def next_state(role: Role, mode: Mode, state: State, event: Event) -> State | None:
    """Target of ``event`` in ``state`` for ``role`` in ``mode``; ``None`` if not allowed."""
    target = TRANSITIONS.get((role, state, event))
    if isinstance(target, dict):
        return target.get(mode)
    return target


def allowed_events(role: Role, mode: Mode, state: State) -> list[Event]:
    """Events accepted in ``state`` (used in error messages and tests)."""
    return [
        ev
        for (r, s, ev) in TRANSITIONS
        if r is role and s is state and next_state(role, mode, state, ev) is not None
    ]
