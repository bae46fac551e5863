"""Airflow glue for schema_deploy: connections, task bodies, the window operator, callbacks."""
