"""The daemon's error hierarchy: everything vaultd (outside vaultd.crypto) raises.

Errors that travel to clients carry a stable ``code`` string; the service
protocol sends that code and the client turns it back into the same class
(see :func:`error_from_code`).
"""

from __future__ import annotations

from typing import Final


class VaultdError(Exception):
    """Base of every error the daemon, its CLI and its admin client raise."""


class ConfigError(VaultdError):
    """A configuration file is missing, unreadable, or holds an unknown key or a bad value.

    ``key`` is the dotted name of the offending setting (``""`` for the file as a
    whole) and ``path`` the file it came from, when known.
    """

    def __init__(self, message: str, *, key: str = "", path: str | None = None) -> None:
        where = f"{path}: " if path else ""
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")
        self.key = key
        self.path = path
        self.reason = message


class InitError(VaultdError):
    """``vaultd init`` (or ``vaultd new-node``) could not create a cluster directory."""


class CommandError(VaultdError):
    """A state-machine command could not be decoded or is not valid."""


class CorruptState(VaultdError):
    """A state-machine snapshot does not parse or violates its invariants."""


class ProtocolError(VaultdError):
    """Bytes on the client port are not a well-formed request or response."""


class FrameTooLarge(ProtocolError):
    """A frame announced more bytes than the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class ServiceError(VaultdError):
    """A typed error answer from a node (or about one).  ``code`` names the kind."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request was malformed or named an unknown operation."""

    code = "bad_request"


class RequestTooLarge(ServiceError):
    """The request frame exceeded the node's limit; the node closed the connection."""

    code = "too_large"


class NotLeader(ServiceError):
    """The node is not the leader.  ``leader_id``/``leader_address`` say who might be
    (``leader_address`` is the leader's *client* address, ``host:port``)."""

    code = "not_leader"

    def __init__(
        self, message: str, leader_id: int | None = None, leader_address: str | None = None
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Timeout(ServiceError):
    """The operation did not complete in time; it may or may not have taken effect."""

    code = "timeout"


class Rejected(ServiceError):
    """The cluster refused the operation (e.g. a membership change that is not allowed now)."""

    code = "rejected"


class Unavailable(ServiceError):
    """The node is shutting down or otherwise cannot serve the request now."""

    code = "unavailable"


class InternalError(ServiceError):
    """The node hit an unexpected error serving the request (its log has the details)."""

    code = "internal"


class ConnectionFailed(VaultdError):
    """The admin client could not reach any node (or lost its connection)."""


_BY_CODE: Final[dict[str, type[ServiceError]]] = {
    cls.code: cls
    for cls in (BadRequest, RequestTooLarge, NotLeader, Timeout, Rejected, Unavailable)
}


def error_from_code(
    code: str,
    message: str,
    *,
    leader_id: int | None = None,
    leader_address: str | None = None,
) -> ServiceError:
    """Rebuild the typed error a node reported; unknown codes become InternalError."""
    if code == NotLeader.code:
        return NotLeader(message, leader_id, leader_address)
    cls = _BY_CODE.get(code, InternalError)
    return cls(message)
