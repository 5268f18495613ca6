"""An SMTP stand-in: a real ``aiosmtpd`` server on 127.0.0.1, recording what it accepts.

Scripting: :meth:`SmtpStandin.reject` answers RCPT TO for one address with a
code (450, 550, ...), :meth:`SmtpStandin.fail_next_data` answers the next DATA
with one, :meth:`SmtpStandin.stall_next_data` delays the next DATA reply, and
:meth:`SmtpStandin.drop_connections` closes every client connection from the
server side. :func:`tls_contexts` makes a throwaway certificate for STARTTLS and
implicit-TLS tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import ipaddress
import socket
import ssl
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    """One accepted message: the connection it came on, the envelope and the parsed message."""

    peer: Any
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Handler:
    """aiosmtpd hooks; runs on the controller's event loop thread."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.peers: list[Any] = []
        self.servers: list[Any] = []
        self.rejections: dict[str, str] = {}
        self.reject_every: str | None = None
        self.data_replies: list[str] = []
        self.data_stalls: list[float] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if session.peer not in self.peers:
            self.peers.append(session.peer)
            self.servers.append(server)
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.rejections:
            return self.rejections[address]
        if self.reject_every is not None:
            return self.reject_every.replace("{address}", address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_stalls:
            await asyncio.sleep(self.data_stalls.pop(0))
        if self.data_replies:
            return self.data_replies.pop(0)
        content = envelope.original_content or envelope.content
        self.messages.append(Received(session.peer, envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 2.0.0 Message accepted for delivery"


def free_port() -> int:
    """A port that was free a moment ago (aiosmtpd's Controller cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpStandin:
    """An aiosmtpd Controller on a free loopback port.

    ``starttls`` offers STARTTLS with that server context; ``implicit_tls``
    wraps the socket from the first byte (SMTPS).
    """

    host = "127.0.0.1"

    def __init__(self, *, starttls: ssl.SSLContext | None = None, implicit_tls: ssl.SSLContext | None = None):
        self.port = free_port()
        self.handler = _Handler()
        self.controller = Controller(self.handler, hostname=self.host, port=self.port,
                                     server_hostname="standin.test", ssl_context=implicit_tls,
                                     tls_context=starttls, require_starttls=starttls is not None)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        """How many client connections said EHLO so far."""
        return len(self.handler.peers)

    def reject(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        """Answer ``RCPT TO:<address>`` with ``reply`` (e.g. ``450 4.2.1 Mailbox busy``)."""
        self.handler.rejections[address] = reply

    def reject_all(self, reply: str = "550 5.1.1 <{address}>: Recipient address rejected: User unknown") -> None:
        """Answer every ``RCPT TO`` with ``reply``, ``{address}`` replaced by the address, as Postfix quotes it."""
        self.handler.reject_every = reply

    def fail_next_data(self, reply: str) -> None:
        """Answer the next DATA with ``reply`` instead of accepting it."""
        self.handler.data_replies.append(reply)

    def stall_next_data(self, seconds: float) -> None:
        """Wait ``seconds`` before answering the next DATA."""
        self.handler.data_stalls.append(seconds)

    def drop_connections(self) -> None:
        """Close every client connection from the server side, as an idle timeout would."""
        for server in self.handler.servers:
            self.controller.loop.call_soon_threadsafe(server.transport.close)

    def start(self) -> Self:
        self.controller.start()
        return self

    def close(self) -> None:
        self.controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def tls_contexts(host: str = "127.0.0.1") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A (server, client) pair of TLS contexts around a fresh self-signed certificate for ``host``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client
