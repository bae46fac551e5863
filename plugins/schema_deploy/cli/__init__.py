"""`python -m schema_deploy <verb>`: the command line, a thin layer over the pipeline and the engine.

Owns: `main` (the parser and `main`), one module per verb family (`database`, `checks`, `backups`,
`audit`, `deploy`) and `common` (what they share). May import: every layer. Heavy modules (psycopg,
boto3, the planner) are imported by the verbs that need them, so `lint` on one file starts fast.
"""
