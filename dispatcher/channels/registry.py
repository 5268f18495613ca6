"""Which implementation serves each channel: the provider when configured, else the outbox.

An explicit table, no discovery: SMS → Twilio, email → SMTP, push → FCM, voice → Twilio (calls); hand-offs →
the ledger's ``handoffs`` table (pushed to the CRM when ``DISPATCHER_CRM_URL`` is set).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from dispatcher.channel_kind import ChannelKind
from dispatcher.channels.base import Channel
from dispatcher.channels.handoff import CrmSettings, HandoffChannel
from dispatcher.channels.outbox import DEFAULT_EMAIL_FROM, OutboxChannel
from dispatcher.channels.provider_settings import FcmSettings, SmtpSettings, TwilioSettings
from dispatcher.channels.twilio_sms import TwilioSmsChannel
from dispatcher.channels.twilio_voice import TwilioVoiceChannel, TwilioVoiceSettings, call_script
from dispatcher.channels.voice_script import CallScript


@dataclass(frozen=True)
class Providers:
    """The configured providers; ``None`` means that channel uses the outbox."""

    twilio: TwilioSettings | None
    smtp: SmtpSettings | None
    fcm: FcmSettings | None
    crm: CrmSettings | None = None
    """Where hand-offs are pushed besides the ledger (``None``: the ledger only)."""
    voice: TwilioVoiceSettings | None = None
    """Calls through Twilio (``None``: the outbox writes ``voice.jsonl``)."""
    calls: CallScript = field(default_factory=CallScript)
    """What the outbox's calls say (the same script a Twilio call would use)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Providers:
        twilio = TwilioSettings.from_env(env)
        voice = TwilioVoiceSettings.from_env(env, twilio)
        calls = voice.script() if voice else call_script(
            (env.get("DISPATCHER_PUBLIC_URL") or "").strip() or None, (env.get("DISPATCHER_SECRET_KEY") or "").encode())
        return cls(twilio, SmtpSettings.from_env(env), FcmSettings.from_env(env), CrmSettings.from_env(env),
                   voice, calls)

    @property
    def email_from(self) -> str:
        return self.smtp.email_from if self.smtp else DEFAULT_EMAIL_FROM

    def build(self, outbox_dir: Path, ledger: Engine | None = None,
              clock: Callable[[], datetime] | None = None) -> dict[ChannelKind, Channel]:
        """Fresh channel objects: one set per run or batch, as they hold connections.

        Hand-offs need the ledger (and the clock): without them there is no hand-off channel.
        """
        handoff: dict[ChannelKind, Channel] = (
            {ChannelKind.HANDOFF: HandoffChannel(ledger, clock, self.crm)} if ledger is not None and clock else {})
        email: Channel = OutboxChannel(ChannelKind.EMAIL, outbox_dir, self.email_from)
        if self.smtp:
            from dispatcher.channels.smtp_email import SmtpEmailChannel  # aiosmtplib: imported when configured

            email = SmtpEmailChannel(self.smtp)
        push: Channel = OutboxChannel(ChannelKind.PUSH, outbox_dir)
        if self.fcm:
            from dispatcher.channels.fcm_push import FcmPushChannel  # PyJWT and cryptography: the same

            push = FcmPushChannel(self.fcm)
        return handoff | {
            ChannelKind.SMS: TwilioSmsChannel(self.twilio) if self.twilio
            else OutboxChannel(ChannelKind.SMS, outbox_dir),
            ChannelKind.EMAIL: email,
            ChannelKind.PUSH: push,
            ChannelKind.VOICE: TwilioVoiceChannel(self.voice) if self.voice
            else OutboxChannel(ChannelKind.VOICE, outbox_dir, script=self.calls),
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
            ChannelKind.VOICE: f"twilio calls at {self.voice.twilio.api_base_url} from {self.voice.from_number}"
            + ("" if self.voice.public_url else " (no DISPATCHER_PUBLIC_URL: calls leave the greeting only)")
            if self.voice else outbox("TWILIO_ACCOUNT_SID and TWILIO_VOICE_FROM or TWILIO_FROM_NUMBER"),
            ChannelKind.HANDOFF: "work items in the ledger (handoffs)"
            + (f", pushed to the CRM at {self.crm.url}" if self.crm else ""),
        }
