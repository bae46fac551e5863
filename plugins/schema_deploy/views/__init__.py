"""What a person sees: the Schema deployments page's data and the fleet view, built from the layers below.

Owns: `overview` (targets, ledgers, runs, backups, audit chains for the page), `fleet` (a fleet's
members and waves). May import: every layer up to `pipeline`. Rendering lives in the Airflow plugin.
"""
