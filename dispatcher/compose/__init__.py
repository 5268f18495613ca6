"""Message composition: templates per step, locale and channel rendered into reminder text.

:mod:`~dispatcher.compose.renderer` renders and checks templates,
:mod:`~dispatcher.compose.filters` formats money, dates and account numbers,
:mod:`~dispatcher.compose.segments` counts SMS segments.
"""

from dispatcher.compose.renderer import (
    Composer,
    RenderContext,
    Rendered,
    TemplateProblem,
    check_templates,
    sample_context,
)
from dispatcher.compose.segments import Segments, sms_segments

__all__ = [
    "Composer",
    "RenderContext",
    "Rendered",
    "Segments",
    "TemplateProblem",
    "check_templates",
    "sample_context",
    "sms_segments",
]
