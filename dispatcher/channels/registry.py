"""Which implementation serves each channel: the provider when configured, else the outbox.

An explicit table, no discovery: SMS → Twilio, email → SMTP, push → FCM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dispatcher.channels.base import Channel, ChannelKind
from dispatcher.channels.fcm_push import FcmPushChannel
from dispatcher.channels.outbox import DEFAULT_EMAIL_FROM, OutboxChannel
from dispatcher.channels.provider_settings import FcmSettings, SmtpSettings, TwilioSettings
from dispatcher.channels.smtp_email import SmtpEmailChannel
from dispatcher.channels.twilio_sms import TwilioSmsChannel


@dataclass(frozen=True)
class Providers:
    """The configured providers; ``None`` means that channel uses the outbox."""

    twilio: TwilioSettings | None
    smtp: SmtpSettings | None
    fcm: FcmSettings | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Providers:
        return cls(TwilioSettings.from_env(env), SmtpSettings.from_env(env), FcmSettings.from_env(env))

    @property
    def email_from(self) -> str:
        return self.smtp.email_from if self.smtp else DEFAULT_EMAIL_FROM

    def build(self, outbox_dir: Path) -> dict[ChannelKind, Channel]:
        """Fresh channel objects: one set per run or batch, as they hold connections."""
        return {
            ChannelKind.SMS: TwilioSmsChannel(self.twilio) if self.twilio
            else OutboxChannel(ChannelKind.SMS, outbox_dir),
            ChannelKind.EMAIL: SmtpEmailChannel(self.smtp) if self.smtp
            else OutboxChannel(ChannelKind.EMAIL, outbox_dir, self.email_from),
            ChannelKind.PUSH: FcmPushChannel(self.fcm) if self.fcm
            else OutboxChannel(ChannelKind.PUSH, outbox_dir),
        }

    def describe(self, outbox_dir: Path) -> dict[ChannelKind, str]:
        """One line per channel for the start-up log: which provider, or why the outbox."""
        def outbox(missing: str) -> str:
            return f"outbox in {outbox_dir} (no provider configured: set {missing})"

        return {
            ChannelKind.SMS: f"twilio at {self.twilio.api_base_url}" if self.twilio
            else outbox("TWILIO_ACCOUNT_SID and friends"),
            ChannelKind.EMAIL: f"smtp at {self.smtp.host}:{self.smtp.port} ({self.smtp.security.value})"
            if self.smtp else outbox("SMTP_HOST and friends"),
            ChannelKind.PUSH: f"fcm at {self.fcm.api_base_url} (project {self.fcm.project_id})" if self.fcm
            else outbox("FCM_PROJECT_ID and FCM_CREDENTIALS_FILE"),
        }
