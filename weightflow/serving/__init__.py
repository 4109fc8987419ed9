"""`weightflow serve`: the live model of a deployment over HTTP."""
