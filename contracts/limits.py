"""Size caps on everything that comes from outside, so no input can exhaust memory, time or the bus.

Each cap is checked before the input is decoded, and the error says which cap and how to stay under
it. They are documented in the README ("Input limits").
"""

from __future__ import annotations

# One event on the bus. NATS refuses messages over its max_payload (1 MiB by default); staying well
# under it leaves room for headers and for a dead letter's own fields.
MAX_EVENT_BYTES = 768 * 1024
# JSON nesting of an event. Ours nest a handful of levels; Python's parser recurses per level.
MAX_EVENT_DEPTH = 64

# The requirements document (it travels inside events).
MAX_DOCUMENT_BYTES = 128 * 1024
MAX_DOCUMENT_DEPTH = 16
MAX_DOCUMENT_NODES = 20_000  # values after YAML aliases are expanded ("billion laughs")

# Data files (eval, canary, train, general).
MAX_DATA_FILE_BYTES = 64 * 1024 * 1024
MAX_DATA_LINE_BYTES = 64 * 1024
MAX_DATA_ROWS = 200_000
MAX_TEXT_CHARS = 16 * 1024  # one text field of a row

# A model checkpoint brought by the user.
MAX_CHECKPOINT_FILES = 512
MAX_CONFIG_BYTES = 1024 * 1024

# What a dead letter keeps of the error and of a bad payload (the payload itself goes to the store).
MAX_ERROR_CHARS = 2000
MAX_PREVIEW_BYTES = 512
