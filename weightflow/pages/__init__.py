"""Pages: one self-contained HTML page per run or deployment, built from the event stream alone.

`weightflow report --html` writes one to a file (plotly.js embedded: it opens offline); `weightflow ui` serves the
same pages live. Nothing here writes to the bus or a store: a page is a view of what the services announced.
"""

from weightflow.pages.page import PageOptions, render_deployment_page, render_run_page
from weightflow.pages.scope import deployment_scope, run_scope

__all__ = ["PageOptions", "deployment_scope", "render_deployment_page", "render_run_page", "run_scope"]
