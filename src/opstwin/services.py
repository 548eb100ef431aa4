"""The components of one running OpsTwin, built by the app factory and handed to endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opstwin.actions.actuators.registry import ActuatorRegistry
from opstwin.actions.executor import ActionExecutor
from opstwin.actions.service import ProposalService
from opstwin.aiw.changelog import ChangeLog
from opstwin.aiw.feed import LogFeed
from opstwin.aiw.schema_registry import SchemaRegistry
from opstwin.audit.store import AuditLog
from opstwin.config import Settings
from opstwin.kit.clock import Clock
from opstwin.kit.db import Database
from opstwin.kit.idempotency import IdempotencyStore
from opstwin.kit.ids import IdSource
from opstwin.ops.metrics import Metrics
from opstwin.policy.principals import ApiKeyService
from opstwin.policy.store import PolicyStore
from opstwin.telemetry.ingest import TelemetryIngestor
from opstwin.telemetry.query import TelemetryQueries
from opstwin.twins.registry import TwinRegistry

if TYPE_CHECKING:
    from opstwin.actions.automation import AutomationLoop
    from opstwin.aiw.consumers import LogConsumer
    from opstwin.aiw.manifest import ManifestBuilder
    from opstwin.demo import DemoPlant
    from opstwin.simulation.service import SimulationService
    from opstwin.telemetry.detection import AnomalyDetection
    from opstwin.telemetry.mqtt import MQTTSensorAdapter


@dataclass(slots=True)
class Services:
    """Everything an endpoint may need; one instance per app."""

    settings: Settings
    clock: Clock
    ids: IdSource
    db: Database
    metrics: Metrics
    schemas: SchemaRegistry
    changelog: ChangeLog
    feed: LogFeed
    keys: ApiKeyService
    idempotency: IdempotencyStore
    manifest: ManifestBuilder
    #: POST /sim/run: runs, their storage and the background workers (one HybridCoupler).
    simulation: SimulationService
    #: Twin models per tenant (versioned); reported state lives in opstwin.twins.state.
    twins: TwinRegistry
    #: Telemetry ingest (normalise, dedupe, store, log); HTTP and MQTT both call it.
    ingestor: TelemetryIngestor
    #: GET /telemetry/query and /telemetry/aggregate.
    telemetry_queries: TelemetryQueries
    #: The anomaly detector (a change-log consumer); None when detection is disabled.
    detection: LogConsumer | None = None
    anomaly_detection: AnomalyDetection | None = None
    #: The MQTT telemetry source; None unless OPSTWIN_MQTT_URL is set.
    mqtt: MQTTSensorAdapter | None = None
    #: The tamper-evident audit chain of every tenant (audit.v1; GET /audit, /audit/verify).
    audit: AuditLog = field(kw_only=True)
    #: Versioned action policies (policy.v1); ``active(conn, tenant)`` is the one in force.
    policies: PolicyStore = field(kw_only=True)
    #: Actuator adapters by the names twin models use (the demo registers its simulated plant).
    actuators: ActuatorRegistry = field(kw_only=True)
    #: Proposals: evidence, confidence, decision, votes, approvals (POST /proposals…).
    proposals: ProposalService = field(kw_only=True)
    #: Executes approved proposals, verifies, rolls back; None when OPSTWIN_ACTIONS_ENABLED=false.
    executor: ActionExecutor | None = field(default=None, kw_only=True)
    #: Anomaly → simulation → proposal by the playbooks; None when disabled (or no detection).
    automation: AutomationLoop | None = field(default=None, kw_only=True)
    #: The simulated plant (OPSTWIN_PLANT_ENABLED; the demo's).
    plant: DemoPlant | None = field(default=None, kw_only=True)


def build_services(settings: Settings, clock: Clock, ids: IdSource) -> Services:
    """Construct (but do not start) every component for ``settings``."""
    from opstwin.aiw.manifest import ManifestBuilder

    db = Database(
        settings.database_url,
        pool_size=settings.database.pool_size,
        busy_timeout_s=settings.database.busy_timeout_s,
        echo=settings.database.echo,
        schema_name=settings.database.schema_name,
    )
    metrics = Metrics()
    schemas = SchemaRegistry.from_package()
    changelog = ChangeLog(db, schemas, clock, ids)
    audit = AuditLog(schemas, clock)
    twins = TwinRegistry(changelog, schemas, clock)
    detection, anomaly_detection = _detection(settings, db, changelog, schemas, clock, ids, twins)
    policies = PolicyStore(changelog, audit, schemas, clock, ids)
    simulation = _simulation(settings, db, changelog, schemas, clock, ids, twins)
    actuators = ActuatorRegistry()
    proposals = ProposalService(
        settings=settings.actions,
        db=db,
        changelog=changelog,
        audit=audit,
        policies=policies,
        twins=twins,
        simulation=simulation,
        idempotency=IdempotencyStore(clock),
        clock=clock,
        ids=ids,
    )
    services = Services(
        settings=settings,
        clock=clock,
        ids=ids,
        db=db,
        metrics=metrics,
        schemas=schemas,
        changelog=changelog,
        feed=LogFeed(db, changelog, settings.feed, metrics),
        keys=ApiKeyService(db, clock),
        idempotency=IdempotencyStore(clock),
        manifest=ManifestBuilder(settings, schemas),
        simulation=simulation,
        twins=twins,
        ingestor=TelemetryIngestor(twins, changelog, clock, ids, settings.telemetry),
        telemetry_queries=TelemetryQueries(twins, settings.telemetry),
        detection=detection,
        anomaly_detection=anomaly_detection,
        audit=audit,
        policies=policies,
        actuators=actuators,
        proposals=proposals,
    )
    if settings.automation.enabled and settings.detection.enabled:
        from opstwin.actions.automation import AutomationLoop

        services.automation = AutomationLoop(
            db=db,
            changelog=changelog,
            clock=clock,
            proposals=proposals,
            simulation=simulation,
            twins=twins,
            samples=settings.actions.sim_samples,
            poll_interval_s=settings.automation.poll_interval_s,
            recheck_s=settings.automation.recheck_s,
            min_p_improvement=settings.automation.min_p_improvement,
        )
    if settings.plant.enabled:
        from opstwin.demo import DemoPlant

        services.plant = DemoPlant(settings, services)
    if settings.actions.enabled:
        services.executor = ActionExecutor(
            service=proposals,
            db=db,
            twins=twins,
            actuators=actuators,
            clock=clock,
            settings=settings.actions,
        )
    if settings.mqtt.url is not None:
        from opstwin.telemetry.mqtt import MQTTSensorAdapter

        services.mqtt = MQTTSensorAdapter(
            settings.mqtt, db=db, ingestor=services.ingestor, clock=clock
        )
    return services


def _detection(
    settings: Settings,
    db: Database,
    changelog: ChangeLog,
    schemas: SchemaRegistry,
    clock: Clock,
    ids: IdSource,
    twins: TwinRegistry,
) -> tuple[LogConsumer | None, AnomalyDetection | None]:
    if not settings.detection.enabled:
        return None, None
    from opstwin.aiw.consumers import ConsumerSettings
    from opstwin.telemetry.detection import RegistryModels, detection_consumer

    return detection_consumer(
        db=db,
        changelog=changelog,
        schemas=schemas,
        clock=clock,
        ids=ids,
        models=RegistryModels(twins),
        settings=ConsumerSettings(
            page_size=settings.detection.page_size,
            poll_interval_s=settings.feed.poll_interval_s,
            batch_window_s=settings.detection.batch_window_s,
        ),
    )


def _simulation(
    settings: Settings,
    db: Database,
    changelog: ChangeLog,
    schemas: SchemaRegistry,
    clock: Clock,
    ids: IdSource,
    twins: TwinRegistry,
) -> SimulationService:
    """One HybridCoupler per app (its quantum backend imports qiskit and times circuits once)."""
    from opstwin.simulation import HybridCoupler
    from opstwin.simulation.quantum import StatevectorAmplitudeEstimator
    from opstwin.simulation.service import SimulationService, TwinModelSource

    quantum = StatevectorAmplitudeEstimator()
    return SimulationService(
        settings=settings.simulation,
        db=db,
        changelog=changelog,
        schemas=schemas,
        idempotency=IdempotencyStore(clock),
        clock=clock,
        ids=ids,
        coupler=HybridCoupler(quantum=quantum),
        quantum=quantum,
        models=TwinModelSource(twins, TelemetryQueries(twins, settings.telemetry)),
    )
