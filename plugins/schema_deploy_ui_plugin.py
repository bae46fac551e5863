"""schema-deploy's UI plugin: the "Schema deployments" page in the Airflow UI.

The API server mounts the FastAPI app of `schema_deploy_airflow.ui` at `/schema-deploy`
(every route requires an authenticated Airflow user), and the UI's navigation gets a
"Schema deployments" entry under Browse that shows the page inside the UI
(`/plugin/schema-deploy`).

Only the API server serves the page, so only it builds the app: importing Airflow's
FastAPI security module costs every other process that loads plugins (scheduler,
DAG processor, each task) about two seconds. Airflow's own edge3 provider plugin
makes the same test. `SCHEMA_DEPLOY_UI=always` builds it anywhere (`airflow plugins`).
"""
from __future__ import annotations

import os
import sys

from airflow.plugins_manager import AirflowPlugin


def serving_api() -> bool:
    """True in `airflow api-server` (and its workers, which inherit its argv)."""
    return (len(sys.argv) > 1 and sys.argv[1] == "api-server") or os.environ.get("SCHEMA_DEPLOY_UI") == "always"


def ui_extensions() -> tuple[list[dict], list[dict]]:
    """(fastapi_apps, external_views): the page's app and its navigation entry, on the API server."""
    if not serving_api():
        return [], []
    from schema_deploy_airflow.ui import URL_PREFIX, app

    return ([{"app": app, "url_prefix": URL_PREFIX, "name": "Schema deployments"}],
            [{"name": "Schema deployments", "href": f"{URL_PREFIX}/", "url_route": "schema-deploy",
              "destination": "nav", "category": "browse"}])


class SchemaDeployUiPlugin(AirflowPlugin):
    """fastapi_apps: the page and its JSON API; external_views: the navigation link."""

    name = "schema_deploy_ui"
    fastapi_apps, external_views = ui_extensions()
