"""An alerting system's side of weightflow: subscribe to the alert events and turn each into one alert.

Run it with the `alerting` user that `weightflow nats-config` generates (it may only subscribe to the alert
subjects; it cannot publish or read the stream):

    . nats/alerting.env && python examples/alerting/subscriber.py [--webhook URL]

Each alert is printed as one JSON line and, with `--webhook`, POSTed there as JSON (e.g. to a chat or an
incident tool's incoming webhook). It needs only nats-py and httpx: plain JSON, no weightflow import.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

import httpx
import nats

# The subjects the alerting user may subscribe to (contracts/topology.py ALERTS), and what to page on.
SUBJECTS = {
    "wf.monitoring.drift_detected": "warning",
    "wf.workflow.halted": "page",
    "wf.monitoring.canary_failed": "warning",
    "wf.registry.rolled_back": "info",
    "wf.registry.promotion_awaiting_approval": "warning",  # a release waits for `weightflow approve|reject`
}


def alert_of(subject: str, event: dict[str, Any]) -> dict[str, Any]:
    """One alert: what happened, to which deployment, how bad, and what an operator should read next."""
    kind = event.get("event_type", subject)
    summary = {
        "monitoring.drift_detected": lambda e: f"{e.get('kind')} drift: {e.get('observed')} past {e.get('limit')}",
        "workflow.halted": lambda e: f"halted: {e.get('reason')}; advice: {'; '.join(e.get('advice', []))}",
        "monitoring.canary_failed": lambda e: f"canary failed ({e.get('kind')})",
        "registry.rolled_back": lambda e: f"rolled back to {e.get('to_manifest_id')}: {e.get('reason')}",
        "registry.promotion_awaiting_approval": lambda e: (
            f"release {e.get('manifest_id')} awaits approval: weightflow approve|reject {e.get('deployment')} "
            f"{e.get('manifest_id')} --reason ..."),
    }.get(kind, lambda e: kind)(event)
    return {"alert": kind, "severity": SUBJECTS.get(subject, "info"), "deployment": event.get("deployment"),
            "summary": summary, "run_id": event.get("run_id"), "event_id": event.get("event_id"),
            "at": event.get("occurred_at")}


async def main(url: str, webhook: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(url, max_reconnect_attempts=-1)
    async with httpx.AsyncClient(timeout=10) as http:
        async def on_message(msg: Any) -> None:
            try:
                alert = alert_of(msg.subject, json.loads(msg.data))
            except ValueError:
                return  # not an event: nothing to alert on
            print(json.dumps(alert), flush=True)
            if webhook:
                try:
                    await http.post(webhook, json=alert)
                except httpx.HTTPError as exc:
                    print(json.dumps({"error": f"webhook: {exc}"}), flush=True)

        for subject in SUBJECTS:
            await nc.subscribe(subject, cb=on_message)
        await nc.flush()
        print(json.dumps({"listening": sorted(SUBJECTS)}), flush=True)
        await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("WEIGHTFLOW_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--webhook", default=None, help="POST each alert here as JSON")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.webhook))
