"""``dispatcher report``: one self-contained HTML page of what the ledger says, for people.

:mod:`~dispatcher.report.period` reads the dates asked for, :mod:`~dispatcher.report.queries`,
:mod:`~dispatcher.report.volume` and :mod:`~dispatcher.report.cures` read the figures,
:mod:`~dispatcher.report.charts` draws them (pygal, inline SVG) and :mod:`~dispatcher.report.page`
lays the page out from ``page.html.j2``. The CLI (``dispatcher.cli.report``) and the web route
(``dispatcher.web.report_page``) both call :func:`dispatcher.report.page.build_report`.
"""
