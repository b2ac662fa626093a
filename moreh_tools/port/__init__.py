"""The one way into the state: :func:`open_port` reads the environment once and returns the port every tool uses.

* ``MOREH_SDA_MANAGER_ADDRESS`` set: a remote master's HTTP API (:class:`RemotePort`).
* otherwise this host's state (:class:`LocalPort`): through the local ``sdamanager``'s Unix socket
  (``$MOREH_HOME/sdamanager.sock``) while one runs, else in this process on the state file under its
  lock. The choice is made per call, so a tool outlives a daemon that stops or starts: a stale socket
  falls back to the file, and a tool waiting for the file's lock switches to a daemon that took it.

Both speak the same operations (:mod:`moreh_tools.port.ops`); the daemon's socket and the master's
API speak the same protocol (``POST /api/v1/op/<name>``, JSON) through the same client. Nothing else
looks at ``MOREH_SDA_MANAGER_ADDRESS`` or asks which way in is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from moreh_tools.port.ops import OP_PATH, PROTOCOL, Op

if TYPE_CHECKING:
    from moreh_tools.port.http import Connection
    from moreh_tools.services.context import ServiceContext

T = TypeVar("T")

ADDRESS_ENV = "MOREH_SDA_MANAGER_ADDRESS"
SOCKET_NAME = "sdamanager.sock"
DEFAULT_API_PORT = 8737
#: A long poll asks for at most this long; the connection waits this much longer for the answer.
LONG_POLL_S = 30.0
_ANSWER_SLACK_S = 15.0
_CALL_TIMEOUT_S = 60.0
#: How many times one call follows the state from a daemon to the file or back before it gives up.
_HANDOVERS = 5


class Port(Protocol):
    """How a tool reaches the state."""

    kind: str  # "local" or "remote"

    def call(self, op: Op[T], /, **kwargs: Any) -> T:
        """Run ``op`` with ``kwargs`` as the port's caller; the service's result, or a state error."""
        ...

    def describe(self) -> str:
        """Where the state is, for banners (``/path/state.duckdb``, ``host:port``)."""
        ...

    def daemon_running(self) -> bool:
        """Whether a daemon serves the state (locally: ``sdamanager``; remotely: always)."""
        ...

    def has_state(self) -> bool:
        """Whether there is a state to look at already (a call on a state file that does not exist makes one)."""
        ...

    def close(self) -> None:
        """Drop any connection."""
        ...


def master_address() -> str | None:
    """The remote master's ``host:port`` when the tools should work against one."""
    return os.environ.get(ADDRESS_ENV, "").strip() or None


def socket_path(home: Path) -> Path:
    """The local daemon's socket in the state directory."""
    return home / SOCKET_NAME


def open_port(token: str | None = None, *, tool: str = "moreh-tools") -> Port:
    """The way into the state for this process, with ``token`` as the caller's token (None: none)."""
    where = master_address()
    if where is not None:
        return RemotePort(where, token, tool)
    from state.paths import state_home

    return LocalPort(state_home(), token, tool)


# -- the RPC client shared by the daemon's socket and a master's API ------------------------------------------


class RpcClient:
    """Calls ops on a server (a daemon's socket or a master's API) over one kept-alive connection."""

    def __init__(self, connection: Connection, token: str | None, tool: str, shown: str) -> None:
        """Use ``connection``; send ``token`` (if any); name the tool and the server in errors."""
        self.connection = connection
        self.token = token
        self.tool = tool
        self.shown = shown

    def call(self, op: Op[T], kwargs: dict[str, Any]) -> T:
        """Send one op; TransportError when the server cannot be reached or stops answering."""
        from moreh_tools.port.codec import CodecError, decode, encode

        headers = {"Content-Type": "application/json", "X-Moreh-Protocol": str(PROTOCOL), "X-Moreh-Client": self.tool}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            body = json.dumps(encode(kwargs), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            from state.errors import BadRequestError

            raise BadRequestError(
                "A value given is not valid UTF-8 text (it holds undecodable bytes); type it again as UTF-8, or set "
                "the terminal's and LANG's encoding to UTF-8."
            ) from None
        wait = float(kwargs.get("timeout", 0.0)) if op.long_poll else 0.0
        from moreh_tools.port.http import UnsendableError

        try:
            response = self.connection.request(
                "POST",
                OP_PATH + op.name,
                body,
                headers,
                timeout=max(_CALL_TIMEOUT_S, wait + _ANSWER_SLACK_S),
                retry_idle=op.idempotent,
            )
        except UnsendableError as exc:
            from state.errors import BadRequestError

            raise BadRequestError(str(exc)) from None
        try:
            payload = json.loads(response.body) if response.body.strip() else None
        except ValueError:
            payload = None
        if response.status != 200 or not isinstance(payload, dict) or "result" not in payload:
            raise self._refusal(response.status, payload, response.headers)
        try:
            result: T = decode(op.result, payload["result"], op.name)
        except CodecError as exc:
            from state.errors import StateError

            raise StateError(
                f"The SDA Manager at {self.shown} sent a reply this {self.tool} cannot read ({exc}); use the same "
                "moreh-tools version on both sides."
            ) from None
        return result

    def _refusal(self, status: int, payload: Any, headers: dict[str, str]) -> Exception:
        from state import errors

        error = payload.get("error") if isinstance(payload, dict) else None
        kind = str(error.get("type", "")) if isinstance(error, dict) else ""
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        if not message and isinstance(payload, dict):  # the REST API's {"code", "details"} form
            message = str(payload.get("details", ""))
        if status == 429:
            retry = headers.get("retry-after")
            wait = f"; retry in {retry} s" if retry else ""
            return errors.StateBusyError(
                f"The SDA Manager at {self.shown} refused the request: too many requests from this token{wait}."
            )
        if status == 401 or kind == "UnknownTokenError":
            if self.token is None:
                return errors.UnknownTokenError(
                    f"The SDA Manager at {self.shown} needs a token: set MOREH_SDA_TOKEN or write it to the token file."
                )
            return errors.UnknownTokenError(
                f"The SDA Manager at {self.shown} does not know this token; check MOREH_SDA_TOKEN or the token file."
            )
        found = getattr(errors, kind, None) if kind else None
        if isinstance(found, type) and issubclass(found, errors.StateError):
            return found(message)
        return errors.StateError(message or f"The SDA Manager at {self.shown} answered HTTP {status}.")

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


# -- the two ports ----------------------------------------------------------------------------------------------


class RemotePort:
    """A remote master's API (``MOREH_SDA_MANAGER_ADDRESS``): every op goes over HTTP with the user's token."""

    kind = "remote"

    def __init__(self, where: str, token: str | None, tool: str) -> None:
        """A port to the master at ``where`` (``host:port``)."""
        self.where = where
        self.token = token
        self.tool = tool
        self._client: RpcClient | None = None

    def describe(self) -> str:
        """``host:port`` as given."""
        return self.where

    def daemon_running(self) -> bool:
        """A master always runs its daemon."""
        return True

    def has_state(self) -> bool:
        """A master always has its state."""
        return True

    def _rpc(self) -> RpcClient:
        if self._client is None:
            from moreh_tools.port.http import Connection, parse_address
            from state.errors import BadRequestError

            try:
                address = parse_address(self.where, DEFAULT_API_PORT)
            except ValueError as exc:
                raise BadRequestError(f"{ADDRESS_ENV}={self.where!r} is not usable ({exc}); write it as host:port.") from None
            self._client = RpcClient(Connection(address), self.token, self.tool, self.where)
        return self._client

    def call(self, op: Op[T], /, **kwargs: Any) -> T:
        """Run ``op`` on the master."""
        from moreh_tools.port.http import TransportError
        from state.errors import StateUnavailableError

        try:
            return self._rpc().call(op, kwargs)
        except TransportError as exc:
            raise StateUnavailableError(
                f"Cannot reach the SDA Manager at {self.where} ({exc}); check {ADDRESS_ENV} and that "
                "'sdamanager --api' runs there."
            ) from None

    def close(self) -> None:
        """Close the connection."""
        if self._client is not None:
            self._client.close()


class LocalPort:
    """This host's state: through the local daemon's socket while one runs, else in process on the file."""

    kind = "local"

    def __init__(self, home: Path, token: str | None, tool: str) -> None:
        """A port to the state in ``home``."""
        self.home = home
        self.token = token
        self.tool = tool
        self.socket = socket_path(home)
        self._client: RpcClient | None = None
        self._store: Any = None

    def describe(self) -> str:
        """The state file's path."""
        from state.paths import state_file

        return str(state_file(self.home))

    def daemon_running(self) -> bool:
        """Whether the local daemon answers on its socket now."""
        return self._daemon() is not None

    def has_state(self) -> bool:
        """Whether a daemon serves the state or its file exists."""
        from state.paths import state_file

        return state_file(self.home).is_file() or self.daemon_running()

    def _daemon(self) -> RpcClient | None:
        """A client of the local daemon when its socket accepts connections, else None."""
        if self._client is not None:
            return self._client
        from state.safety import check_socket

        if not check_socket(self.home, SOCKET_NAME):
            return None  # none, or one the daemon did not make (planted to collect tokens): not used
        from moreh_tools.port.http import Address, Connection, TransportError

        connection = Connection(Address(unix_path=str(self.socket)))
        try:
            connection.open()
        except TransportError as exc:
            if exc.refused:
                return None  # a stale socket: the daemon is gone, the file is ours again
            from state.errors import StateUnavailableError

            raise StateUnavailableError(
                f"Cannot reach sdamanager at {self.socket} ({exc}); ask its administrator for access to the "
                "socket, or stop it to use the state file directly."
            ) from None
        self._client = RpcClient(connection, self.token, self.tool, f"the local sdamanager ({self.socket})")
        return self._client

    def call(self, op: Op[T], /, **kwargs: Any) -> T:
        """Run ``op`` through the daemon if one runs, else in this process.

        The state may change hands while a call is under way: a daemon killed before it answered (an idempotent
        op is asked again, of a new daemon or of the file; another is not, it may have taken effect), or a
        daemon that took the file's lock while this process waited for it (the op goes to the daemon).
        """
        from moreh_tools.port.http import TransportError
        from state.errors import StateOwnedElsewhere, StateUnavailableError

        for _ in range(_HANDOVERS):
            client = self._daemon()
            if client is not None:
                try:
                    return client.call(op, kwargs)
                except TransportError as exc:
                    client.close()
                    self._client = None
                    if exc.sent and not op.idempotent:
                        raise StateUnavailableError(
                            f"sdamanager stopped while handling the request ({exc}); check whether it took effect "
                            "before trying again."
                        ) from None
                    continue  # gone before it answered: a new daemon, or the file once its lock is free
            try:
                return self._in_process(op, kwargs)
            except StateOwnedElsewhere:
                continue  # a daemon took the state while this process waited for it: ask the daemon
        raise StateUnavailableError(
            f"The state at {self.home} changed hands {_HANDOVERS} times during one request (sdamanager starting "
            "and stopping); try again once it runs or stays stopped."
        )

    def context(self) -> ServiceContext:
        """The services' context for running ops in this process (the caller owns the state file)."""
        from moreh_tools import identity
        from moreh_tools.services.caller import Caller
        from moreh_tools.services.context import FifoNotifier, ServiceContext
        from state.store import StateStore

        if self._store is None:
            origin = f"uid={os.getuid()} file"
            self._store = StateStore(self.home, origin=origin, abandon_when=self._daemon_listening)
        caller = Caller(self.token, owner=True, uid=os.getuid(), via="file")
        return ServiceContext(
            db=self._store,
            caller=caller,
            notifier=FifoNotifier(self.home),
            host=identity.host_name(),
            machine_id=identity.machine_id(),
        )

    def _daemon_listening(self) -> bool:
        try:
            return self._daemon() is not None
        except Exception:
            return False

    def _in_process(self, op: Op[T], kwargs: dict[str, Any]) -> T:
        return op.function()(self.context(), **kwargs)

    def close(self) -> None:
        """Close the daemon connection, if any."""
        if self._client is not None:
            self._client.close()
            self._client = None
