"""Stage 5: every artifact pinned by checksum in a manifest, with a runbook; promotion and rollback."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from weightflow.contracts.base import Contract, Event, register
from weightflow.contracts.fitting import MemoryBudget
from weightflow.contracts.measurement import Measurement
from weightflow.contracts.requirements import DataRefs, Requirements


@register
class ModelRegistered(Event):
    STAGE = "registry"
    NAME = "model_registered"
    SCHEMA_VERSION = 3
    manifest_id: str = Field(description="sha256 of the manifest JSON in the artifact store")
    deployment: str
    requirements_version: int
    checksums: dict[str, str] = Field(description="role -> sha256 of every file the deployment needs")
    runbook_digest: str
    canary_baseline: Measurement = Field(description="the canary set, measured once at registration")


@register
class DeploymentPromoted(Event):
    STAGE = "registry"
    NAME = "deployment_promoted"
    SCHEMA_VERSION = 2
    deployment: str
    manifest_id: str
    requirements_version: int
    previous_manifest_id: str | None = None


@register
class PromotionSkipped(Event):
    """A registered manifest that must not go live (its requirements were superseded meanwhile)."""

    STAGE = "registry"
    NAME = "promotion_skipped"
    deployment: str
    manifest_id: str
    reason: str


@register
class PromotionAwaitingApproval(Event):
    """A registered release that would go live (its baseline passed the canary's rule, its requirements are the
    newest) under `deployment.promotion: manual`: it waits for `weightflow approve` or `reject`, with the evidence
    a person decides on. The live release keeps serving meanwhile."""

    STAGE = "registry"
    NAME = "promotion_awaiting_approval"
    deployment: str
    manifest_id: str
    requirements_version: int
    measurement: Measurement = Field(description="the eval measurement it was selected on, with its interval")
    canary_baseline: Measurement = Field(description="the canary set on this exact model, at registration")
    live_manifest_id: str | None = Field(description="the release it would replace (None: nothing is live)")


class _PromotionDecision(Event):
    """A person's decision on a release awaiting approval, published by the CLI's (admin) NATS user only."""

    STAGE = "registry"
    deployment: str
    manifest_id: str
    decided_by: str = Field(min_length=1, description="who decided: the OS user and the NATS user, as 'os@nats'")
    reason: str = Field(min_length=1, max_length=2000, description="why, in the decider's words")


@register
class PromotionApproved(_PromotionDecision):
    """Approve: the registry promotes the release exactly as the automatic path would."""

    NAME = "promotion_approved"


@register
class PromotionRejected(_PromotionDecision):
    """Reject: the registry records it and the live release keeps serving."""

    NAME = "promotion_rejected"


@register
class PromotionDecided(Event):
    """The registry's record of a decision it carried out (a refused decision gets `RequestRefused` instead)."""

    STAGE = "registry"
    NAME = "promotion_decided"
    deployment: str
    manifest_id: str
    decision: Literal["approved", "rejected"]
    decided_by: str
    reason: str
    decision_event_id: str = Field(description="the PromotionApproved / PromotionRejected it answers")


@register
class RollbackRequested(Event):
    STAGE = "registry"
    NAME = "rollback_requested"
    deployment: str
    to_manifest_id: str | None = Field(default=None, description="default: the release before the live one")


@register
class RolledBack(Event):
    STAGE = "registry"
    NAME = "rolled_back"
    SCHEMA_VERSION = 2
    deployment: str
    from_manifest_id: str
    to_manifest_id: str
    automatic: bool = Field(default=False, description="true when a failed canary triggered it")
    reason: str = ""
    to_requirements_version: int
    live_requirements_version: int = Field(description="the newest requirements version of the deployment")

    @property
    def to_older_requirements(self) -> bool:
        return self.to_requirements_version < self.live_requirements_version


@register
class RollbackCommanded(Event):
    """The loop-back's command (its process manager decides; the registry carries it out): the live release
    failed its canary, so go back to the newest earlier release that passed its canary under
    `requirements_version`, checking their files first when the failure was `integrity`."""

    STAGE = "registry"
    NAME = "rollback_commanded"
    deployment: str
    failed_manifest_id: str = Field(description="the release that failed; nothing happens when it is no longer live")
    requirements_version: int = Field(description="the failed release's requirements version")
    kind: Literal["quality", "latency", "cost", "integrity"]
    reason: str


class ManifestEntry(Contract):
    tree_digest: str
    files: dict[str, str] = Field(description="file name -> sha256, as stored")


class Manifest(Contract):
    """The registered deployment, stored content-addressed: its sha256 is the manifest id.

    Everything needed to stand the deployment up again is pinned here by checksum.
    """

    kind: Literal["weightflow.manifest/v2"] = "weightflow.manifest/v2"
    deployment: str
    run_id: str
    created_at: str
    requirements_digest: str
    requirements_version: int
    requirements: Requirements
    data: DataRefs
    candidate: str
    source: str = "builtin"
    params: int
    base: ManifestEntry
    variant: str
    quantization: str | None = Field(description="scheme name, or None for the unquantized checkpoint")
    model: ManifestEntry
    adapter: ManifestEntry | None = None
    adapter_train_data_digest: str | None = None
    adapter_settings: dict[str, float | int | str | list[str]] | None = None
    sharding: str = Field(default="single-device", description=(
        "'single-device', or how an offloaded variant's weights are placed (its placement file is in the model's "
        "tree, so the model checksum pins it and every loader applies it)"))
    measurement: Measurement
    canary_baseline: Measurement
    budget: MemoryBudget
    previous_manifest_id: str | None = None

    def checksums(self) -> dict[str, str]:
        """role/file -> sha256 for every file the deployment loads."""
        out = {f"base/{k}": v for k, v in self.base.files.items()}
        out |= {f"model/{k}": v for k, v in self.model.files.items()}
        if self.adapter:
            out |= {f"adapter/{k}": v for k, v in self.adapter.files.items()}
        for split in ("eval", "canary", "train", "general"):
            digest = getattr(self.data, split)
            if digest:
                out[f"data/{split}"] = digest
        return out
