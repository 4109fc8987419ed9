"""`weightflow ui`: a small read-only web app over the event stream: runs, deployments, dead letters and halts,
and each run's page (the same page `weightflow report --html` writes), refreshed as events arrive.

It reads the stream like the CLI does and never publishes; it serves GET requests only.
"""

from weightflow.ui.app import create_app
from weightflow.ui.feed import EventFeed

__all__ = ["EventFeed", "create_app"]
