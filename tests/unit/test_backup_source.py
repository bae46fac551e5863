"""Where a backup was taken, as restore.check_source reads it: the manifest first, the key for what an
old manifest lacks, and a refusal when neither says (pure functions, no stack)."""
from __future__ import annotations

import re

import pytest

from schema_deploy.backups.errors import RestoreFromOtherSource
from schema_deploy.backups.restore import check_source, source_of

KEYED = "s3://backups/prefix/production/americano_production/20261101T020000Z_nightly.dump"
LOOSE = "s3://backups/copied-by-hand.dump"
PRODUCTION = {"environment": "production", "database": "americano_production", "host": "db-prod"}


@pytest.mark.parametrize(("uri", "manifest", "target", "other", "recorded_by"), [
    (KEYED, PRODUCTION, ("production", "americano_production"), False, "manifest"),
    (KEYED, PRODUCTION, ("staging", "americano_production"), True, "manifest"),
    (KEYED, PRODUCTION, ("production", "americano_copy"), True, "manifest"),
    # an old manifest without the source: the key's <environment>/<database> segments stand in
    (KEYED, {}, ("production", "americano_production"), False, "key"),
    (KEYED, {"database": "americano_production"}, ("staging", "americano_production"), True, "manifest and key"),
    (KEYED, {"database": "americano_production"}, ("production", "americano_production"), False, "manifest and key"),
    # key segments are sanitized names: a database name with a space is filed as "my-db"
    ("s3://b/p/staging/my-db/20261101T020000Z_x.dump", {}, ("staging", "my db"), False, "key"),
    # neither says: never taken for this database's own
    (LOOSE, {}, ("production", "americano_production"), True, "nothing"),
    # the CLI's backup and restore both default to environment "default"
    (KEYED.replace("production/", "default/", 1), {"environment": "default", "database": "americano_production"},
     (None, "americano_production"), False, "manifest"),
])
def test_the_source_is_the_manifest_s_else_the_key_s_and_differs_from_the_target_when_either_name_does(
        uri: str, manifest: dict, target: tuple, other: bool, recorded_by: str) -> None:
    source = source_of(uri, manifest, *target)
    assert (source.other, source.recorded_by) == (other, recorded_by)


def test_a_backup_nobody_recorded_the_source_of_is_refused_saying_so() -> None:
    with pytest.raises(RestoreFromOtherSource, match=re.escape(
            f"refusing to restore into database 'americano_production': backup {LOOSE} was taken of an environment "
            "and database nobody recorded (its manifest does not name both, and its key is not "
            "<prefix>/<environment>/<database>/<timestamp>_<run id>.dump), but the target is production database "
            "'americano_production'. Nothing was changed.")):
        check_source(LOOSE, {}, "production", "americano_production")


def test_an_old_manifest_is_read_by_its_key_and_the_message_says_so() -> None:
    with pytest.raises(RestoreFromOtherSource, match=re.escape(
            f"backup {KEYED} was taken of production database 'americano_production' (as its key says; its "
            "manifest does not record it), but the target is staging database 'americano_staging'")):
        check_source(KEYED, {}, "staging", "americano_staging")


def test_asked_for_explicitly_the_crossing_is_logged_and_described_from_where_to_where() -> None:
    said: list[str] = []
    source = check_source(KEYED, PRODUCTION, "staging", "americano_staging", allow_other_source=True, log=said.append)
    assert source.fact() == "data from production (americano_production) restored into staging (americano_staging)"
    assert source.as_dict() == {
        "uri": KEYED, "fact": source.fact(),
        "from": {"environment": "production", "database": "americano_production", "host": "db-prod",
                 "recorded_by": "manifest"},
        "to": {"environment": "staging", "database": "americano_staging"}}
    assert said == [f"restoring {KEYED}, taken of production database 'americano_production' (as its manifest "
                    "records), into staging database 'americano_staging': asked for explicitly (allow_other_source), "
                    "recorded and announced"]


def test_the_target_s_own_backup_passes_silently() -> None:
    said: list[str] = []
    assert not check_source(KEYED, PRODUCTION, "production", "americano_production", log=said.append).other
    assert said == []
