"""The static HTML report of a run directory.

`write_report` writes ``report.html`` (one self-contained page: no network, no external
fonts or scripts, readable with JavaScript off) and ``figures/*.svg`` into the run
directory; `build_report` returns the page. Every table is optional: the report shows
what exists and names the stages still missing. The prompts shown are shaded by the
neuron's activation at each token and by each kept head's attention from the last token,
read from the ``views`` table that the report stage writes with the model
(`build_views`, `stored_scope`), so a run directory renders without its model.
"""

from lookuplens.report.build import Report, build_report, render_report, write_report
from lookuplens.report.config import ReportConfig
from lookuplens.report.views import StoredViews, build_views, stored_scope

__all__ = [
    "Report",
    "ReportConfig",
    "StoredViews",
    "build_report",
    "build_views",
    "render_report",
    "stored_scope",
    "write_report",
]
