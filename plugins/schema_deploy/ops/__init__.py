"""What surrounds a deployment: frozen releases, maintenance-window slots, the test gate, Slack.

Owns: `release` (a bundle frozen with its plans in S3, verified before use), `window` (the next slot
in a maintenance window, the scheduled run before it), `gate` (the staging test commands and their
JUnit results), `notify` (Slack messages), `errors`.
May import: every layer up to `backups`.
"""
