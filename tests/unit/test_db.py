"""db.py without a server: identifiers, the password masker, the URL check before connecting, session texts."""
from __future__ import annotations

from datetime import timedelta

import pytest

from schema_deploy.pg import db
from schema_deploy.pg.errors import DatabaseError


@pytest.mark.parametrize(("parts", "split", "expected"), [
    (("behavioral_events",), True, '"behavioral_events"'),
    (("public.behavioral_events",), True, '"public"."behavioral_events"'),
    (("public", "behavioral_events"), True, '"public"."behavioral_events"'),
    (('we"ird.ta"ble',), True, '"we""ird"."ta""ble"'),
    (("a.b.c",), True, '"a"."b.c"'),  # split at the first dot only, like to_regclass's callers always did
    (("public", "a.b"), True, '"public"."a.b"'),
    (("a.b",), False, '"a.b"'),
    (("userId",), True, '"userId"'),
])
def test_identifiers_are_quoted_and_escaped_by_psycopg(parts: tuple[str, ...], split: bool, expected: str) -> None:
    assert db.quoted(*parts, split=split) == expected


@pytest.mark.parametrize(("text", "url", "expected"), [
    ('FATAL: password authentication failed for user "migrator" (s3cret)', "postgresql://migrator:s3cret@h/db",
     'FATAL: password authentication failed for user "migrator" (****)'),
    ("echo p@ss and p%40ss", "postgresql://migrator:p%40ss@h/db", "echo **** and ****"),
    ("echo k3y", "host=h user=u password=k3y dbname=x", "echo ****"),
    ("see postgresql://u:other@h/x", None, "see postgresql://u:****@h/x"),
    ("nothing secret", "not a url at all", "nothing secret"),
])
def test_the_masker_hides_the_urls_password_as_written_and_decoded_and_every_url_password(
        text: str, url: str | None, expected: str) -> None:
    assert db.mask_password(text, url) == expected


def test_an_unencoded_at_in_the_password_is_refused_before_libpq_can_echo_a_piece_of_it() -> None:
    with pytest.raises(DatabaseError, match=r"^cannot connect to postgresql://migrator:\*\*\*\*@127\.0\.0\.1:1/x: "
                                            r"the user name or password contains '@' or '/'\. Percent-encode them "
                                            r"in the URL \('@' as %40, '/' as %2F\)\.$") as info:
        db.connect("postgresql://migrator:Spl1t@Secret@127.0.0.1:1/x")
    assert "Secret" not in str(info.value) and "Spl1t" not in str(info.value)


SESSION = db.Session(pid=4242, application="report-job", client="10.0.0.5", user="app", state="idle in transaction",
                     xact_age=timedelta(seconds=4), query="SELECT * FROM t WHERE dsn = 'postgresql://u:pw@h/x'")


def test_a_blocker_reads_pid_application_state_age_and_its_query_scrubbed() -> None:
    assert SESSION.as_blocker() == ("pid 4242 application 'report-job' state idle in transaction transaction age "
                                    "0:00:04 query: SELECT * FROM t WHERE dsn = 'postgresql://u:****@h/x'")


def test_a_blockers_query_is_one_line_of_at_most_200_characters() -> None:
    long = db.Session(4242, "psql", "local socket", "app", "active", None, "SELECT\n  " + "x, " * 200)
    text = long.as_blocker()
    assert "\n" not in text and text.endswith("…")
    assert "transaction age none (not in a transaction)" in text
    assert len(text.split("query: ", 1)[1]) == 200


def test_a_session_in_a_roster_reads_pid_application_client_user_and_state() -> None:
    assert db.describe_sessions([SESSION, SESSION]) == "; ".join(
        ["pid 4242 (application 'report-job', client 10.0.0.5, user app, state idle in transaction)"] * 2)
    assert db.describe_sessions([]) == ""


def test_no_blockers_says_the_session_ended_before_it_was_sampled() -> None:
    assert db.describe_blockers([]) == "a session that ended before it could be sampled"
