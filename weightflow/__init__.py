"""weightflow: select, fit, tune, register, ship and watch a model as an event-driven workflow."""

import os

# Several torch processes share the CPU (one per service, plus whatever else runs there). With OpenMP's
# default spin-waiting, a descheduled worker stalls every parallel region: measured on 2 cores beside
# one busy process, per-request p95 latency went from 25 ms to 790 ms. Passive waiting keeps latency
# measurements honest; it must be set before torch loads, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
