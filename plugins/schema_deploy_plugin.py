"""schema-deploy's Airflow plugin: registers the maintenance-window timetable.

Airflow stores a DAG's timetable by import path and only accepts custom timetables that a plugin
registers, so the scheduler, DAG processor and API server all need this file in their plugins
folder before a DAG may use `MaintenanceWindowTimetable`.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from schema_deploy_airflow.timetable import MaintenanceWindowTimetable


class SchemaDeployPlugin(AirflowPlugin):
    """Timetables: MaintenanceWindowTimetable (run a lead time before each maintenance window)."""

    name = "schema_deploy"
    timetables = [MaintenanceWindowTimetable]
