"""The AsyncAPI document of every service, generated from the code (faststream), never written by hand.

    python -m weightflow.asyncapi > docs/asyncapi.yaml

Each subscriber's payload schema comes from its handler's typed event, each publisher's from the
topology; `tests/unit/test_docs.py` fails when the committed document drifts from the code.
"""

from __future__ import annotations

import importlib

import yaml
from faststream.specification import AsyncAPI

from weightflow.contracts.topology import SERVICES
from weightflow.shared.bus.runtime import build_app
from weightflow.shared.settings import Settings

VERSION = "2"


def document() -> str:
    settings = Settings(trace_file=False, nats_url="nats://localhost:4222")
    brokers = []
    for name in SERVICES:
        service = importlib.import_module(f"weightflow.services.{name}.app").service
        app = build_app(service, settings)
        assert app.broker is not None
        brokers.append(app.broker)
    spec = AsyncAPI(*brokers, title="weightflow", version=VERSION,
                    description="Every subject of the workflow's stream (WF) and the event each carries; "
                                "contracts/topology.py says which service consumes and emits which.")
    # Sorted: faststream lists channels in registration order, which depends on what was imported first.
    return yaml.safe_dump(spec.to_specification().to_jsonable(), sort_keys=True, allow_unicode=True, width=100)


if __name__ == "__main__":
    print(document(), end="")
