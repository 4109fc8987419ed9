"""The model layer: candidate sources, tasks, quantizers and tuners behind small protocols.

Services use `registry` (lookup by name), `protocols` (what each seam does) and `stored` (verified
loading from the artifact store). Importing this package imports no torch; the modules that run models
import it themselves.
"""

import logging
import os
import sys

# Several torch processes share the CPU (one per service, plus whatever else runs there); with OpenMP's
# default spin-waiting a descheduled worker stalls every parallel region: measured on 2 cores beside one
# busy process, per-request p95 latency went from 25 ms to 790 ms. Set here, before any torch import
# of the model layer; the second variable tells child processes which policy is ours, not the user's.
DEFAULTED = "WEIGHTFLOW_OMP_WAIT_POLICY_DEFAULTED"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = os.environ[DEFAULTED] = "PASSIVE"


def openmp_spins() -> None:
    """For a process that has its cores to itself (`weightflow serve --dedicated-cores`): OpenMP's own
    default, a worker spins for a few milliseconds before it sleeps, unless the user set OMP_WAIT_POLICY.
    Measured on 2 cores (bench §8): with PASSIVE every parallel region wakes its workers from a futex, and
    the served MiniLM ran 11-21 % fewer requests/s under 16 clients; but beside one busy process, spinning
    took one client's p95 from 25 to 169 ms. libgomp reads the policy once, when torch loads it: call this
    before importing torch."""
    if "torch" in sys.modules:  # too late: leave the environment as the running libgomp read it
        logging.getLogger("weightflow").warning("torch was imported before the OpenMP wait policy was chosen: "
                                                "OMP_WAIT_POLICY=%s applies", os.environ.get("OMP_WAIT_POLICY"))
        return
    ours = os.environ.pop(DEFAULTED, None)
    if ours is not None and os.environ.get("OMP_WAIT_POLICY") == ours:  # a value set since is the user's
        os.environ.pop("OMP_WAIT_POLICY")
