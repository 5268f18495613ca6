"""Where templates live: ``<templates_dir>/<template>/<locale>/<part>.j2``, and the parts of each channel.

:class:`TemplateSet` is the templates directory read into memory once: loading a
schedule snapshots it, and checks, rendering and the version all use that
snapshot, so a file edited on disk changes nothing until it is loaded again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

from dispatcher.channel_kind import ChannelKind

Field = Literal["subject", "title", "body", "html"]

TEMPLATE_SUFFIX = ".j2"
"""Files under the templates directory with this suffix are templates."""


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
    # a call: the limited-content greeting anyone may hear (a voicemail), then the message itself
    ChannelKind.VOICE: (Part("voice_greeting.txt.j2", "title"), Part("voice.txt.j2", "body")),
}
"""The template parts each channel renders, in a fixed order (used for versions and hashes)."""


def template_name(template: str, locale: str, filename: str) -> str:
    """The loader name of one part, e.g. ``gentle/zh-CN/sms.txt.j2``."""
    return f"{template}/{locale}/{filename}"


def template_path(templates_dir: Path, template: str, locale: str, filename: str) -> Path:
    """The file one part is read from."""
    return templates_dir / template / locale / filename


def _walk(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``(relative dir, subdirs, files)`` under ``root``, following links but never a directory twice."""
    seen: set[str] = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        relative = Path(current).relative_to(root).as_posix()
        yield ("" if relative == "." else relative), dirs, sorted(files)


def _joined(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def template_files(root: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of every ``*.j2`` file under ``root``, by name (``gentle/zh-CN/sms.txt.j2``)."""
    found = [
        (_joined(directory, file), root / directory / file)
        for directory, _dirs, files in _walk(root)
        for file in files
        if file.endswith(TEMPLATE_SUFFIX)
    ]
    return sorted(found)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # gone or unreadable since it was listed: treated as missing


@dataclass(frozen=True, slots=True, eq=False)
class TemplateSet:
    """Every template file under ``root``, read once: ``files`` maps a name to its bytes.

    ``dirs`` holds the directory names found (``gentle``, ``gentle/zh-CN``), so an
    empty locale directory still counts as present, as it did on disk.
    """

    root: Path
    files: Mapping[str, bytes]
    dirs: frozenset[str] = frozenset()

    @classmethod
    def read(cls, root: Path) -> TemplateSet:
        """Read every ``*.j2`` file under ``root`` (none when it does not exist)."""
        files: dict[str, bytes] = {}
        dirs: set[str] = set()
        for directory, subdirs, names in _walk(root):
            dirs.update(_joined(directory, sub) for sub in subdirs)
            for name in names:
                data = _read(root / directory / name) if name.endswith(TEMPLATE_SUFFIX) else None
                if data is not None:
                    files[_joined(directory, name)] = data
        return cls(root, MappingProxyType(dict(sorted(files.items()))), frozenset(dirs))

    @classmethod
    def of(cls, templates: TemplateSet | Path) -> TemplateSet:
        """``templates`` itself, or the directory it names read now."""
        return templates if isinstance(templates, TemplateSet) else cls.read(templates)

    def source(self, name: str) -> str | None:
        """The text of ``name`` with newlines as ``\\n`` (as a text-mode read gives), or None when absent.

        Raises :class:`UnicodeDecodeError` when the file is not UTF-8.
        """
        data = self.files.get(name)
        if data is None:
            return None
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")

    def path(self, name: str) -> Path:
        """The file ``name`` was read from."""
        return self.root / name

    def has_dir(self, name: str) -> bool:
        """Whether the directory ``name`` (``gentle`` or ``gentle/zh-CN``) existed."""
        return name in self.dirs

    def locales(self, template: str) -> frozenset[str]:
        """The locale directories that existed for ``template``."""
        prefix = f"{template}/"
        return frozenset(d[len(prefix):] for d in self.dirs if d.startswith(prefix) and "/" not in d[len(prefix):])
