"""Email through an SMTP relay, with the standard library's ``smtplib`` in a worker thread.

One connection is opened lazily, reused for every send, checked with ``NOOP``
after it has been idle, reopened after a disconnect and closed by
:meth:`SmtpEmailChannel.aclose`. Sends on one channel are serialized by a lock
because an SMTP connection carries one transaction at a time.
(``aiosmtplib`` is not a dependency, hence the thread.)
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import DeliveryResult, Effect, Message
from dispatcher.channels.headers import UNSAFE_HEADER, UnsafeHeaderError, checked_headers
from dispatcher.channels.provider_settings import SmtpSecurity, SmtpSettings

BAD_MAILBOX_CODES = frozenset({550, 551, 553})
"""Replies to RCPT TO that mean the mailbox does not exist or is not accepted."""
DEFAULT_IDLE_CHECK_AFTER = 5.0
"""Seconds of idleness after which a reused connection is checked with NOOP first."""

_POLICY = SMTP_POLICY.clone(cte_type="7bit")
"""CRLF line ends and 7-bit transfer encodings, so any relay accepts the message as is."""
_SHORT_LINE = 78
"""Text with lines up to this long goes as it is (7bit) when ASCII, as the email package itself decides."""


def message_id(message: Message, sender: str) -> str:
    """A ``Message-ID`` stable for one attempt: the attempt id and a digest, at the sender's domain."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    seed = f"{message.reminder_key}\x00{message.to}\x00{message.attempt_id}".encode()
    return f"<reminder.{message.attempt_id}.{hashlib.sha256(seed).hexdigest()[:16]}@{domain}>"


def build_email(message: Message, sender: str, *, date: datetime | None = None) -> EmailMessage:
    """Build the MIME message: text, plus an HTML alternative when ``message.html`` is set.

    Both parts are UTF-8, 7-bit or quoted-printable (:func:`text_cte`), never base64.

    Every entry of ``message.headers`` (``List-Unsubscribe``, ...) is added,
    replacing a header of the same name. Raises :class:`UnsafeHeaderError` for a
    header holding a line break or another control character, ``ValueError`` for a
    value the email package cannot write.
    """
    mail = EmailMessage(policy=_POLICY)
    fixed = {"From": sender, "To": message.to, "Subject": message.subject or "",
             "Date": format_datetime(date or datetime.now(UTC)), "Message-ID": message_id(message, sender)}
    for name, value in checked_headers(fixed).items():
        mail[name] = value
    for name, value in checked_headers(message.headers).items():
        del mail[name]
        mail[name] = value
    mail.set_content(message.body, charset="utf-8", cte=text_cte(message.body))
    if message.html is not None:
        mail.add_alternative(message.html, subtype="html", charset="utf-8", cte=text_cte(message.html))
    return mail


def text_cte(text: str) -> str:
    """``7bit`` for ASCII text with short lines, else ``quoted-printable``: readable where it can be, never base64.

    The relay may not take 8-bit data (``_POLICY`` keeps messages 7-bit), so non-ASCII text is quoted-printable.
    """
    short = all(len(line) <= _SHORT_LINE for line in text.splitlines())
    return "7bit" if short and text.isascii() else "quoted-printable"


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def classify_smtp_error(exc: Exception) -> DeliveryResult:
    """Map an ``smtplib`` or socket error: 5xx permanent, 4xx and network failures transient."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(exc.recipients.values()), (550, b"recipient refused"))
        effect = Effect.BAD_ADDRESS if code in BAD_MAILBOX_CODES else Effect.NONE
        return _by_code(code, f"recipient refused: {_text(reply)}", effect)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(exc.smtp_code, _text(exc.smtp_error), Effect.NONE)
    if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
        return DeliveryResult.transient("timeout", f"SMTP server timed out: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return DeliveryResult.transient("disconnected", str(exc))
    if isinstance(exc, smtplib.SMTPException):
        return DeliveryResult.transient("smtp", str(exc))
    return DeliveryResult.transient("connection", f"cannot reach SMTP server: {exc!r}")


def _by_code(code: int, text: str, effect: Effect) -> DeliveryResult:
    if 500 <= code < 600:
        return DeliveryResult.permanent(str(code), text, effect)
    return DeliveryResult.transient(str(code), text)


class SmtpEmailChannel:
    """Sends each message over one shared, lazily opened SMTP connection."""

    kind = ChannelKind.EMAIL
    provider = "smtp"

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_check_after: float = DEFAULT_IDLE_CHECK_AFTER,
    ) -> None:
        self.settings = settings
        self._ssl_context = ssl_context
        self._idle_check_after = idle_check_after
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        self._lock = asyncio.Lock()

    async def send(self, message: Message) -> DeliveryResult:
        """Hand one message to the relay; never raises for a refusal or a network failure."""
        try:
            mail = build_email(message, self.settings.email_from)
        except UnsafeHeaderError as exc:
            return DeliveryResult.permanent(UNSAFE_HEADER, str(exc))
        except ValueError as exc:
            return DeliveryResult.permanent("invalid_message", str(exc)).about(message.to)
        async with self._lock:
            result = await asyncio.to_thread(self._send_blocking, mail, message.to)
        return result.about(message.to)

    async def aclose(self) -> None:
        """Say QUIT and close the connection, if one is open."""
        async with self._lock:
            await asyncio.to_thread(self._drop, polite=True)

    def _send_blocking(self, mail: EmailMessage, to: str) -> DeliveryResult:
        try:
            smtp = self._connection()
            smtp.send_message(mail, from_addr=parseaddr(self.settings.email_from)[1], to_addrs=[to])
        except (smtplib.SMTPException, OSError) as exc:
            if not isinstance(exc, smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused):
                self._drop()  # the connection is in an unknown state: never reuse it
            return classify_smtp_error(exc)
        self._last_used = time.monotonic()
        return DeliveryResult.sent(str(mail["Message-ID"]))

    def _connection(self) -> smtplib.SMTP:
        smtp = self._smtp
        if smtp is not None and smtp.sock is not None and self._alive(smtp):
            return smtp
        self._drop()
        self._smtp = self._open()
        self._last_used = time.monotonic()
        return self._smtp

    def _alive(self, smtp: smtplib.SMTP) -> bool:
        if time.monotonic() - self._last_used < self._idle_check_after:
            return True
        try:
            return smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        if s.security is SmtpSecurity.SSL:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._tls())
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        try:
            smtp.ehlo()
            if s.security is SmtpSecurity.STARTTLS:
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            if s.username is not None:
                smtp.login(s.username, s.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _drop(self, *, polite: bool = False) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if polite and smtp.sock is not None:
                smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()
