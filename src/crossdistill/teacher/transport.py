"""How bytes cross the trust boundary between a student and a teacher: TLS and the bearer token.

Both sides live here so they cannot drift apart. The token travels as ``authorization: Bearer
<token>`` (gRPC metadata on every call, the HTTP header on REST) and is compared in constant time
(``hmac.compare_digest``); it is read from a file, never from a config value, and never logged.
TLS: the server presents ``cert_file``; with ``client_ca_file`` it also demands a client certificate
signed by that CA (mutual TLS). Without a token or TLS the plain channel is used unchanged.
"""

from __future__ import annotations

import hmac
import json
import ssl
from collections import namedtuple
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from pydantic import Field

from crossdistill.config import StrictConfig
from crossdistill.errors import ConfigError
from crossdistill.teacher.serve_config import ServeTLS

AUTH_HEADER = "authorization"
SCHEME = "Bearer "


class ClientTLS(StrictConfig):
    """TLS towards a teacher: the CA to trust and, for mutual TLS, this client's certificate."""

    ca_file: str | None = Field(None, description="PEM CA (or self-signed certificate) that signed the teacher's "
                                                  "certificate; None = the system's trust store")
    cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="PEM private key of cert_file (mutual TLS)")
    server_name: str | None = Field(None, description="name to check the teacher's certificate against, when "
                                                      "the URL's host is not in it (e.g. an IP address)")


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def read_secret(path: str, what: str) -> bytes:
    """The bytes of a token, key or certificate file; ConfigError naming ``what`` and the file if unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"{what} {path} is empty")
    return data


def read_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace dropped)."""
    token = read_secret(path, "token file").decode("utf-8", errors="strict").strip()
    if any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} holds whitespace inside the token: expected one line")
    return token


def token_matches(header: str | bytes | None, token: bytes) -> bool:
    """Whether an ``authorization`` value carries ``token`` (constant-time comparison)."""
    if header is None:
        return False
    if isinstance(header, str):
        header = header.encode("latin-1", errors="replace")
    if header[:len(SCHEME)].lower() != SCHEME.lower().encode():
        return False
    return hmac.compare_digest(header[len(SCHEME):].strip(), token)


# ---------------------------------------------------------------------------------------------- client

_Details = namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"))


class _CallDetails(_Details, grpc.ClientCallDetails):
    """The call's details with the token added to its metadata."""


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every unary call (futures included)."""

    def __init__(self, token: str) -> None:
        self._pair = (AUTH_HEADER, SCHEME + token)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails,
                              request: Any) -> Any:
        metadata = (*(details.metadata or ()), self._pair)
        return continuation(_CallDetails(details.method, details.timeout, metadata, details.credentials,
                                         details.wait_for_ready, details.compression), request)


ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def grpc_target(url: str) -> str:
    """gRPC's target for a teacher URL: ``host:port`` and ``dns:///...`` as they are, a list of replicas
    ``ip:port,ip:port`` as one ``ipv4:`` / ``ipv6:`` target (every address a subchannel)."""
    members = [m.strip() for m in url.split(",")]
    if url.startswith("dns:///") or len(members) == 1:
        return url
    scheme = "ipv6:" if all(m.startswith("[") for m in members) else "ipv4:"
    return scheme + ",".join(members)


def open_channel(url: str, *, token_file: str | None = None, tls: ClientTLS | None = None,
                 options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A gRPC channel to ``url``: TLS when ``tls`` is given, the token on every call when set.

    Every address ``url`` stands for (a list of replicas, or what a DNS name resolves to) gets a
    subchannel and calls go round-robin over the ready ones: a replica that goes away is left out until
    it answers again."""
    options = [*(options or []), ("grpc.service_config", ROUND_ROBIN)]
    url = grpc_target(url)
    if tls is None:
        channel = grpc.insecure_channel(url, options=options)
    else:
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigError("teacher.tls: cert_file and key_file go together (mutual TLS needs both)")
        creds = grpc.ssl_channel_credentials(
            root_certificates=read_secret(tls.ca_file, "teacher.tls.ca_file") if tls.ca_file else None,
            private_key=read_secret(tls.key_file, "teacher.tls.key_file") if tls.key_file else None,
            certificate_chain=read_secret(tls.cert_file, "teacher.tls.cert_file") if tls.cert_file else None)
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.secure_channel(url, creds, options=options)
    if token_file:
        channel = grpc.intercept_channel(channel, _BearerToken(read_token(token_file)))
    return channel


# ---------------------------------------------------------------------------------------------- server

def grpc_server_credentials(tls: ServeTLS) -> grpc.ServerCredentials:
    """TLS credentials of the gRPC port; mutual TLS (client certificate required) with ``client_ca_file``."""
    pair = (read_secret(tls.key_file, "tls.key_file"), read_secret(tls.cert_file, "tls.cert_file"))
    ca = read_secret(tls.client_ca_file, "tls.client_ca_file") if tls.client_ca_file else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def uvicorn_tls(tls: ServeTLS | None) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the REST port (the same certificate, key and client CA)."""
    if tls is None:
        return {}
    for path, what in ((tls.cert_file, "tls.cert_file"), (tls.key_file, "tls.key_file")):
        read_secret(path, what)
    kwargs: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file:
        read_secret(tls.client_ca_file, "tls.client_ca_file")
        kwargs.update(ssl_ca_certs=tls.client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return kwargs


_REFUSED = "missing or wrong bearer token (send 'authorization: Bearer <token>')"


class GrpcTokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every gRPC call without the token with UNAUTHENTICATED, before the request is handled."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSED)

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        header = next((v for k, v in details.invocation_metadata or () if k == AUTH_HEADER), None)
        if token_matches(header, self._token):
            return await continuation(details)
        return self._refusal


class RestTokenCheck:
    """ASGI middleware: 401 for an HTTP request without the token, except on ``open_paths``."""

    def __init__(self, app: Any, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._token = token.encode()
        self._open = open_paths
        self._body = json.dumps({"error": _REFUSED}).encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open:
            header = next((v for k, v in scope.get("headers", ()) if k == AUTH_HEADER.encode()), None)
            if not token_matches(header, self._token):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(self._body)).encode()),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": self._body})
                return
        await self.app(scope, receive, send)
