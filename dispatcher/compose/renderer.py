"""Rendering reminders from templates, and checking that every template renders.

Templates live at ``<templates_dir>/<template>/<locale>/<part>.j2``; the parts of
each channel are listed in :data:`dispatcher.compose.layout.PARTS`. A
:class:`Composer` renders from a :class:`~dispatcher.compose.layout.TemplateSet`
read once (the one a loaded schedule was checked with) and never reads the disk
again. Compiled templates and their versions are built once per (template,
locale, channel) and reused for every message.

Template variables:

==================  ==========================================================
``name``            the borrower's display name
``amount``          the overdue amount (``Decimal``): show it with ``|money``
``currency``        ISO 4217 code of the amount
``locale``          the resolved locale of the template set (``zh-CN``)
``deadline``        the pay-by date (``date``): show it with ``|localdate``
``today``           the borrower's local date of the run (``date``)
``days_overdue``    days since the due date, in the borrower's local date (0 on the due date,
                    negative before it)
``repayment_account`` where to pay (the lender's account): shown in full
``pay_link``        the account's pay link (https URL), or None
``card_last4``      the last 4 digits of the borrower's own card, or None: show it through ``|mask``
``brand``           the :class:`~dispatcher.schedule.models.Brand` of the locale, with the contacts of
                    the borrower's country (``name``, ``hotline``, ``website``, ``help_email`` or None)
``step``            the ladder step's name
``occurrence``      1 for the first reminder of the step, 2 for the next, ...
``unsubscribe_url`` one-click unsubscribe link, or None: templates handle both
``account_id``      the loan account's id
==================  ==========================================================
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Template, TemplateNotFound

from dispatcher.accounts import Account
from dispatcher.channel_kind import ChannelKind
from dispatcher.compose.diagnostics import as_template_error, describe, template_column, template_position
from dispatcher.compose.environment import build_environment
from dispatcher.compose.filters import money
from dispatcher.compose.layout import PARTS, Field, Part, TemplateSet, template_name, template_path
from dispatcher.compose.segments import Segments, sms_segments
from dispatcher.errors import TemplateError
from dispatcher.ladder import pay_by
from dispatcher.pay_links import SIGNATURE_HEX, PayLinks
from dispatcher.records import record
from dispatcher.regions import country_of, locale_of
from dispatcher.schedule.models import Brand, Schedule, Step

PUSH_DATA_KIND = "overdue_reminder"
"""The ``kind`` the app sees in a push message's data."""

SAMPLE_TODAY = date(2026, 11, 28)
"""The fixed local date of sample contexts, so sample renders are reproducible."""

_MAX_RESOLVED = 1024


@record
class RenderContext:
    """Everything one reminder's text depends on."""

    account: Account
    step: Step
    occurrence: int
    days_overdue: int
    deadline: date
    local_today: date
    unsubscribe_url: str | None = None


@record
class Rendered:
    """The rendered text of one reminder on one channel, with what the ledger records about it."""

    channel: ChannelKind
    locale: str
    template: str
    template_version: str
    body: str
    subject: str | None
    html: str | None
    title: str | None
    data: dict[str, str]
    content_hash: str

    @property
    def segments(self) -> Segments | None:
        """SMS encoding and segment count of the body; None for other channels."""
        return sms_segments(self.body) if self.channel is ChannelKind.SMS else None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The compiled parts of one (template, locale, channel) and their version."""

    parts: tuple[tuple[Field, Template], ...]
    version: str


class Composer:
    """Renders reminders; built once per schedule and template snapshot.

    ``templates`` is a :class:`TemplateSet` (a loaded schedule's), or a
    directory, read here once. Raises :class:`~dispatcher.errors.TemplateError`
    (with file and line) when a part is missing, does not compile or fails to render.
    """

    def __init__(self, templates: TemplateSet | Path, schedule: Schedule, pay_links: PayLinks | None = None) -> None:
        self.templates = TemplateSet.of(templates)
        self.templates_dir = self.templates.root
        self.schedule = schedule
        self.env = build_environment(self.templates)
        assert self.env.loader is not None
        self._loader = self.env.loader
        self.available = _available_locales(self.templates, schedule)
        self.pay_links = pay_links
        self._brands: dict[tuple[str, str | None], Brand] = {}
        self._resolved: dict[str | None, str] = {}
        self._compiled: dict[tuple[str, str, ChannelKind], _Compiled] = {}

    def resolve_locale(self, requested: str | None) -> str:
        """The exact locale if available, else one of the same language, else the schedule's default."""
        try:
            return self._resolved[requested]
        except KeyError:
            resolved = _resolve(requested, self.available, self.schedule.locale)
            if len(self._resolved) < _MAX_RESOLVED:
                self._resolved[requested] = resolved
            return resolved

    def render(self, ctx: RenderContext, channel: ChannelKind) -> Rendered:
        """Render the step's template for ``channel`` in the borrower's (resolved) locale."""
        return self.render_in(ctx, channel, self.resolve_locale(locale_of(ctx.account, self.available)))

    def render_in(self, ctx: RenderContext, channel: ChannelKind, locale: str) -> Rendered:
        """Render the step's template for ``channel`` in exactly ``locale``."""
        channel = ChannelKind(channel)
        template = ctx.step.template_for(ctx.account.account_id)  # an experiment's variant for this borrower
        compiled = self._compiled_for(template, locale, channel)
        variables = self.variables(ctx, locale)
        texts = {field: self._render_part(part, variables) for field, part in compiled.parts}
        return Rendered(
            channel=channel,
            locale=locale,
            template=template,
            template_version=compiled.version,
            body=texts["body"],
            subject=texts.get("subject"),
            html=texts.get("html"),
            title=texts.get("title"),
            data=push_data(ctx, locale, variables["pay_link"]) if channel is ChannelKind.PUSH
            else call_data(variables) if channel is ChannelKind.VOICE else {},
            content_hash=_hash(texts.values()),
        )

    def variables(self, ctx: RenderContext, locale: str) -> dict[str, object]:
        """The template variables of ``ctx`` (see the module docstring)."""
        account = ctx.account
        return {
            "name": account.name,
            "amount": account.overdue_amount,
            "currency": account.currency,
            "locale": locale,
            "deadline": ctx.deadline,
            "today": ctx.local_today,
            "days_overdue": ctx.days_overdue,
            "repayment_account": account.repayment_account,
            "pay_link": self.pay_links.link(account) if self.pay_links is not None else account.pay_link,
            "card_last4": account.card_last4,
            "brand": self.brand(locale, country_of(account)),
            "step": ctx.step.step,
            "occurrence": ctx.occurrence,
            "unsubscribe_url": ctx.unsubscribe_url,
            "account_id": account.account_id,
        }

    def brand(self, locale: str, country: str | None = None) -> Brand:
        """The brand shown in ``locale`` (the default locale's when it has none), with the contacts of the
        borrower's ``country`` where the brand names some."""
        key = (locale, country)
        brand = self._brands.get(key)
        if brand is None:
            brand = self.schedule.brand_for(locale).for_country(country)
            if len(self._brands) < _MAX_RESOLVED:
                self._brands[key] = brand
        return brand

    def template_version(self, template: str, locale: str, channel: ChannelKind) -> str:
        """First 12 hex digits of the sha256 of the sources of the channel's parts."""
        return self._compiled_for(template, locale, channel).version

    def compile_all(self) -> int:
        """Compile every part the ladder can render now (each step's templates × locales × channels), instead of
        at its first message; how many parts were compiled. A part that does not compile is left for its first
        message to report, as it would have been.

        A planning helper process does this when it wires a version: its first range then renders at once, as
        the daemon's process does from its second run on.
        """
        compiled = 0
        for step in self.schedule.ladder:
            rendered = [channel for channel in step.channels if channel in PARTS]
            for template, locale, channel in itertools.product(step.templates, self.available, rendered):
                try:
                    compiled += len(self._compiled_for(template, locale, channel).parts)
                except TemplateError:
                    continue
        return compiled

    def _compiled_for(self, template: str, locale: str, channel: ChannelKind) -> _Compiled:
        key = (template, locale, channel)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(template, locale, PARTS[channel])
        return compiled

    def _compile(self, template: str, locale: str, parts: tuple[Part, ...]) -> _Compiled:
        digest = hashlib.sha256()
        compiled: list[tuple[Field, Template]] = []
        for part in parts:
            source, loaded = self._load(template_name(template, locale, part.filename))
            digest.update(f"{part.filename}\0{source}\0".encode())
            compiled.append((part.field, loaded))
        return _Compiled(tuple(compiled), digest.hexdigest()[:12])

    def _load(self, name: str) -> tuple[str, Template]:
        """The source and compiled template of one part."""
        fallback = str(self.templates_dir / name)
        try:
            source, _, _ = self._loader.get_source(self.env, name)
            return source, self.env.get_template(name)
        except TemplateNotFound as exc:
            raise TemplateError("template part is missing", file=fallback) from exc
        except Exception as exc:
            raise as_template_error(exc, fallback) from exc

    @staticmethod
    def _render_part(template: Template, variables: Mapping[str, object]) -> str:
        try:
            return template.render(variables).strip()
        except Exception as exc:
            raise as_template_error(exc, template.filename or template.name or "<template>") from exc


def push_data(ctx: RenderContext, locale: str, pay_link: object = None) -> dict[str, str]:
    """The data of a push message: the reminder's details, shown by the app once opened, and the pay link the app
    opens on a tap (in the data, never in the lock-screen text)."""
    account = ctx.account
    data = {
        "kind": PUSH_DATA_KIND,
        "account_id": account.account_id,
        "step": ctx.step.step,
        "amount": money(account.overdue_amount, account.currency, locale),
        "currency": account.currency,
        "deadline": ctx.deadline.isoformat(),
        "days_overdue": str(ctx.days_overdue),
    }
    if isinstance(pay_link, str) and pay_link:
        data["pay_link"] = pay_link
    return data


def call_data(variables: Mapping[str, object]) -> dict[str, str]:
    """What a call needs besides its text: the hotline its menu connects to (the borrower's country's)."""
    brand = variables["brand"]
    return {"hotline": brand.hotline} if isinstance(brand, Brand) and brand.hotline else {}


def _hash(texts: Iterable[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def _available_locales(templates: TemplateSet, schedule: Schedule) -> tuple[str, ...]:
    """Locales of the schedule that every ladder template (every variant's too) has a directory for, in schedule
    order (a hand-off step has no templates)."""
    names = {name for step in schedule.ladder if step.handoff is None for name in step.templates}
    on_disk = [templates.locales(name) for name in names]
    return tuple(loc for loc in schedule.locales if all(loc in found for found in on_disk))


def _resolve(requested: str | None, available: tuple[str, ...], default: str) -> str:
    if not requested or not requested.strip():
        return default
    tag = requested.strip().replace("_", "-").lower()
    for locale in available:
        if locale.lower() == tag:
            return locale
    language = tag.split("-", 1)[0]
    for locale in available:
        if locale.split("-", 1)[0].lower() == language:
            return locale
    return default


# --- samples and checks -----------------------------------------------------------------------

_SAMPLE_NAMES = {"zh": "张伟", "en": "Alex Morgan"}
_SAMPLE_CURRENCIES = {"zh": "CNY"}


def sample_context(schedule: Schedule, step: Step, locale: str) -> RenderContext:
    """A realistic reminder for ``step`` in ``locale``, for validation, previews and tests."""
    language = locale.split("-", 1)[0]
    days = step.days_overdue.first
    template = schedule.payments.link
    pay_link = template.format(account_id="SAMPLE-0001", amount="1234.50", currency="CNY", due_date="2026-11-01",
                               signature="0" * SIGNATURE_HEX) if template else None
    account = Account(
        account_id="SAMPLE-0001",
        name=_SAMPLE_NAMES.get(language, "Alex Morgan"),
        phone="+8613800138000",
        email="borrower@example.com",
        push_token="sample-push-token",
        locale=locale,
        timezone=schedule.timezone,
        currency=_SAMPLE_CURRENCIES.get(language, "USD"),
        overdue_amount=Decimal("1234.50"),
        due_date=SAMPLE_TODAY - timedelta(days=days),
        deadline=None,
        repayment_account="6222 0212 3456 6789",
        pay_link=pay_link,
    )
    website = urlsplit(schedule.brand_for(locale).website)
    return RenderContext(
        account=account,
        step=step,
        occurrence=1,
        days_overdue=days,
        deadline=pay_by(account, step, SAMPLE_TODAY, days),
        local_today=SAMPLE_TODAY,
        unsubscribe_url=f"{website.scheme or 'https'}://{website.netloc}/unsubscribe?token=sample",
    )


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template part that is missing (``missing``) or fails to compile or render with sample data."""

    step: str
    template: str
    locale: str
    channel: ChannelKind
    file: str | None
    line: int | None
    message: str
    missing: bool = False
    rule: str = "template"
    col: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line or 0}: " if self.file else ""
        return f"{where}{self.message} (step {self.step}, {self.channel}, {self.locale})"


def check_templates(schedule: Schedule, templates: TemplateSet | Path) -> list[TemplateProblem]:
    """Every part of every step × locale × channel exists and renders with sample data.

    Checks the ``templates`` snapshot (or the directory, read once). Each part is
    rendered twice, with and without an unsubscribe link.
    """
    composer = Composer(templates, schedule)
    problems: list[TemplateProblem] = []
    for step in schedule.ladder:
        for locale in schedule.locales:
            sample = sample_context(schedule, step, locale)
            variable_sets = [
                composer.variables(sample, locale),
                composer.variables(replace(sample, unsubscribe_url=None), locale),
            ]
            for channel in step.channels:
                for part in PARTS[channel]:
                    problem = _check_part(composer, step, locale, channel, part.filename, variable_sets)
                    if problem is not None:
                        problems.append(problem)
            too_long = _too_many_segments(composer, step, sample, locale)
            if too_long is not None:
                problems.append(too_long)
    return problems


def _too_many_segments(composer: Composer, step: Step, sample: RenderContext, locale: str) -> TemplateProblem | None:
    """The SMS of ``step`` rendered with sample data needs more than its ``max_segments``."""
    if step.max_segments is None or ChannelKind.SMS not in step.channels:
        return None
    try:
        rendered = composer.render_in(sample, ChannelKind.SMS, locale)
    except TemplateError:
        return None  # reported by the part checks
    segments = rendered.segments
    if segments is None or segments.segments <= step.max_segments:
        return None
    file = str(template_path(composer.templates_dir, step.template_name, locale, "sms.txt.j2"))
    message = (f"the SMS needs {segments.segments} segments ({segments.units} {segments.encoding} units with "
               f"sample data), more than max_segments {step.max_segments}")
    return TemplateProblem(step.step, step.template_name, locale, ChannelKind.SMS, file, 1, message,
                           rule="max_segments", col=1)


def _check_part(
    composer: Composer,
    step: Step,
    locale: str,
    channel: ChannelKind,
    filename: str,
    variable_sets: list[dict[str, object]],
) -> TemplateProblem | None:
    """The problem of one part, or None when it exists and renders with every variable set."""
    template = step.template_name
    name = template_name(template, locale, filename)
    expected = str(template_path(composer.templates_dir, template, locale, filename))
    problem = TemplateProblem(step.step, template, locale, channel, expected, None, "", missing=False)
    try:
        compiled = composer.env.get_template(name)
        for variables in variable_sets:
            compiled.render(variables)
    except TemplateNotFound as exc:
        if exc.name == name:
            return replace(problem, message=f"template part {name} is missing", missing=True)
        return replace(problem, message=describe(exc), line=template_position(exc)[1])
    except Exception as exc:
        file, line = template_position(exc)
        return replace(problem, file=file or expected, line=line, col=template_column(exc), message=describe(exc))
    return None
