"""Lint rules by family, one function per rule (its id is the function's name, dashed).

`locks` (statements that block reads or writes, rewrites), `hygiene` (data loss, constraints,
suppressions, files), `prisma` (files Prisma's splitter would cut wrongly). Importing a module
registers its rules in `lint.registry`. May import what `lint` may, and `lint.registry`.
"""

# Importing a rule module registers its rules; locks first: that is the order of --list-rules.
from schema_deploy.lint.rules import locks  # noqa: E402
from schema_deploy.lint.rules import hygiene  # noqa: E402
from schema_deploy.lint.rules import prisma  # noqa: E402

REGISTERED = (locks, hygiene, prisma)
