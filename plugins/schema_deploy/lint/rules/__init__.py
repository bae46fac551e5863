"""Lint rules by family, one function per rule (its id is the function's name, dashed).

`locks` (statements that block reads or writes, rewrites), `hygiene` (data loss, constraints,
suppressions, files), `prisma` (files Prisma's splitter would cut wrongly). Importing a module
registers its rules in `lint.registry`. May import what `lint` may, and `lint.registry`.
"""
