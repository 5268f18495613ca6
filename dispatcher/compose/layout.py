"""Where templates live: ``<templates_dir>/<template>/<locale>/<part>.j2``, and the parts of each channel."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from dispatcher.channels.base import ChannelKind

Field = Literal["subject", "title", "body", "html"]


class Part(NamedTuple):
    """One template file of a channel and the ``Rendered`` field it fills."""

    filename: str
    field: Field


PARTS: dict[ChannelKind, tuple[Part, ...]] = {
    ChannelKind.SMS: (Part("sms.txt.j2", "body"),),
    ChannelKind.EMAIL: (
        Part("email_subject.txt.j2", "subject"),
        Part("email.txt.j2", "body"),
        Part("email.html.j2", "html"),
    ),
    ChannelKind.PUSH: (Part("push_title.txt.j2", "title"), Part("push_body.txt.j2", "body")),
}
"""The template parts each channel renders, in a fixed order (used for versions and hashes)."""


def template_name(template: str, locale: str, filename: str) -> str:
    """The loader name of one part, e.g. ``gentle/zh-CN/sms.txt.j2``."""
    return f"{template}/{locale}/{filename}"


def template_path(templates_dir: Path, template: str, locale: str, filename: str) -> Path:
    """The file one part is read from."""
    return templates_dir / template / locale / filename


def locales_on_disk(templates_dir: Path, template: str) -> frozenset[str]:
    """The locale directories that exist for ``template``."""
    root = templates_dir / template
    if not root.is_dir():
        return frozenset()
    return frozenset(p.name for p in root.iterdir() if p.is_dir())
