"""The model layer: candidate sources, tasks, quantizers and tuners behind small protocols.

Services use `registry` (lookup by name), `protocols` (what each seam does) and `stored` (verified
loading from the artifact store). Importing this package imports no torch; the modules that run models
import it themselves.
"""

import os

# Several torch processes share the CPU (one per service, plus whatever else runs there); with OpenMP's
# default spin-waiting a descheduled worker stalls every parallel region: measured on 2 cores beside one
# busy process, per-request p95 latency went from 25 ms to 790 ms. Set here, before any torch import
# of the model layer.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
