"""Message composition: templates per step, locale and channel rendered into reminder text.

:mod:`~dispatcher.compose.renderer` renders and checks templates,
:mod:`~dispatcher.compose.filters` formats money, dates and account numbers,
:mod:`~dispatcher.compose.segments` counts SMS segments, :mod:`~dispatcher.compose.layout` finds the template
files.

Nothing is imported here: ``dispatcher validate`` reads the template layout without loading Jinja and Babel.
"""
