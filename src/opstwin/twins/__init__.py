"""Twin model (``twin.v1``): declarative twins → assets → metrics and setpoints, PPR links,
process models and playbooks. Reported and desired state live with the services that keep them."""

from opstwin.twins.loader import check_twin_document, load_twin_file, parse_twin_document
from opstwin.twins.model import (
    AnomalyThresholds,
    AssetSpec,
    MetricSpec,
    Playbook,
    ProcessModel,
    SetpointSpec,
    TwinDocument,
    TwinSpec,
    twin_json_schema,
)

__all__ = [
    "AnomalyThresholds",
    "AssetSpec",
    "MetricSpec",
    "Playbook",
    "ProcessModel",
    "SetpointSpec",
    "TwinDocument",
    "TwinSpec",
    "check_twin_document",
    "load_twin_file",
    "parse_twin_document",
    "twin_json_schema",
]
