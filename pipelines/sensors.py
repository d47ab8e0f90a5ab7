"""Keeps the legal_entity partitions in step with the HR database's legal entities."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from pipelines.partitions import legal_entity_partitions
from resources.hr import HRDatabase


def build_entity_sensor(hr: HRDatabase, running: bool = True):
    @sensor(
        name="legal_entities_from_hr",
        minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        description="Adds a legal_entity partition for each legal entity HR knows.",
    )
    def legal_entities_from_hr(context: SensorEvaluationContext) -> SensorResult:
        known = set(context.instance.get_dynamic_partitions(legal_entity_partitions.name))
        new = [k for k in hr.partition_keys() if k not in known]
        if new:
            context.log.info(f"new legal entities: {', '.join(new)}")
        return SensorResult(
            dynamic_partitions_requests=[legal_entity_partitions.build_add_request(new)]
            if new
            else []
        )

    return legal_entities_from_hr
