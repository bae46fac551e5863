"""The audit trail's canonical JSON, hash chain and chain walk, without a database."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from schema_deploy.audit.chain import (GENESIS, AuditRow, _payload_text, canonical_json, chain_hash, check_rows,
                                       document, iso_utc)
from schema_deploy.audit.errors import AuditPayloadInvalid

T0 = datetime(2026, 11, 26, 3, 20, 1, 123456, tzinfo=timezone.utc)


def chain(n: int) -> list[AuditRow]:
    """n rows with ids 1..n, each hashed onto the one before, as append writes them."""
    rows, prev = [], GENESIS
    for i in range(1, n + 1):
        payload = {"step": i, "sql": ["CREATE INDEX CONCURRENTLY x ON t (a)"], "note": "größe"}
        at = T0 + timedelta(seconds=i)
        digest = chain_hash(prev, canonical_json("deploy", f"run-{i}", "production", at, payload))
        rows.append(AuditRow(i, at, "deploy", f"run-{i}", "production", payload, prev, digest))
        prev = digest
    return rows


def rehash(row: AuditRow, **changes: object) -> AuditRow:
    """The row with `changes`, its row_hash recomputed (a forger who knows the scheme)."""
    edited = dataclasses.replace(row, **changes)
    return dataclasses.replace(edited, row_hash=edited.computed_hash())


# --- canonical JSON and the hash ------------------------------------------------------

def test_canonical_json_is_sorted_compact_utf8_and_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    text = canonical_json("deploy", "manual__2026", "production", T0.astimezone(cet),
                          {"b": 1, "a": {"z": "größe", "y": [1.5, None, True]}})
    assert text == ('{"environment":"production","kind":"deploy","payload":{"a":{"y":[1.5,null,true],'
                    '"z":"größe"},"b":1},"recorded_at":"2026-11-26T03:20:01.123456+00:00","run_id":"manual__2026"}')


def test_recorded_at_always_carries_microseconds() -> None:
    assert iso_utc(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "2026-01-02T03:04:05.000000+00:00"


def test_row_hash_is_sha256_of_prev_hash_then_canonical_json() -> None:
    canonical = canonical_json("rollback", None, "staging", T0, {"backup": "s3://b/x.dump"})
    expected = hashlib.sha256((GENESIS + canonical).encode("utf-8")).hexdigest()
    assert chain_hash(GENESIS, canonical) == expected
    # Pinned, so that a change to the format (which would orphan every stored chain) cannot pass unnoticed.
    assert expected == "84f28009e630e65adbd8a99117cb2b498f5b6acb5f35e64c9371da78282c1d8c"


@pytest.mark.parametrize("field, value", [
    ("kind", "rollback"), ("run_id", "other-run"), ("environment", "staging"),
    ("recorded_at", T0 + timedelta(microseconds=1)), ("payload", {"step": 1, "sql": [], "note": "größe"}),
])
def test_changing_any_part_of_the_content_changes_the_hash(field: str, value: object) -> None:
    row = chain(1)[0]
    assert dataclasses.replace(row, **{field: value}).computed_hash() != row.row_hash


# --- walking the chain ------------------------------------------------------------------

def test_an_untouched_chain_holds() -> None:
    report = check_rows(chain(5))
    assert report.ok and report.broken is None
    assert (report.count, report.first_id, report.last_id, report.head) == (5, 1, 5, chain(5)[-1].row_hash)
    assert report.message.startswith("audit chain ok: 5 rows (ids 1–5, last recorded 2026-11-26T03:20:06.123456")


def test_an_empty_chain_holds() -> None:
    report = check_rows([])
    assert report.ok and report.count == 0 and report.head == GENESIS
    assert report.message == "audit chain ok: no rows yet"


def test_an_edited_payload_is_reported_at_that_row() -> None:
    rows = chain(5)
    rows[2] = dataclasses.replace(rows[2], payload={**rows[2].payload, "step": 99})
    report = check_rows(rows)
    assert not report.ok and report.broken.id == 3 and report.count == 2
    assert report.broken.problems == ["row_hash does not match its content — the row was edited after it was written"]
    assert report.broken.computed_row_hash != report.broken.row_hash
    assert report.message.startswith(
        "audit chain broken at row 3 (recorded 2026-11-26T03:20:04.123456+00:00, deploy of run 'run-3'): "
        "row_hash does not match its content — the row was edited after it was written. Rows 1–2 before it hold.")


def test_a_deleted_row_in_the_middle_is_reported_at_the_row_after_it() -> None:
    rows = chain(5)
    del rows[2]
    report = check_rows(rows)
    assert report.broken.id == 4 and report.last_id == 2
    assert report.broken.problems == ["prev_hash does not match the row_hash of row 2, the row before it — "
                                      "row 3 is missing: deleted after it was written"]
    assert report.broken.expected_prev_hash == rows[1].row_hash


def test_several_deleted_rows_are_named_as_a_range() -> None:
    rows = chain(6)
    del rows[1:4]
    assert "rows 2–4 are missing" in check_rows(rows).broken.problems[0]


def test_deleting_the_first_rows_is_reported_at_the_new_first_row() -> None:
    report = check_rows(chain(3)[1:])
    assert report.broken.id == 2 and report.count == 0
    assert report.broken.problems[0].startswith("prev_hash is not 64 zeros although this is the first row")
    assert "No row before it." in report.message


def test_one_row_that_holds_is_named_in_the_singular() -> None:
    rows = chain(3)
    assert "— row 2 is missing: deleted after it was written. Row 1 before it holds." in check_rows(
        [rows[0], rows[2]]).message


def test_an_edit_covered_up_by_rehashing_is_caught_by_the_next_row() -> None:
    rows = chain(4)
    rows[1] = rehash(rows[1], payload={"forged": True})
    report = check_rows(rows)
    assert report.broken.id == 3
    assert report.broken.problems[0].startswith("prev_hash does not match the row_hash of row 2, the row before "
                                                "it — one of the two hashes was rewritten")


def test_a_row_with_both_problems_lists_both() -> None:
    rows = chain(4)
    del rows[1]
    rows[1] = dataclasses.replace(rows[1], kind="edited")
    assert len(check_rows(rows).broken.problems) == 2


# --- the document kept beside the backup ---------------------------------------------

def test_the_document_is_deterministic_and_its_sha256_is_of_its_bytes() -> None:
    data, sha = document(chain(3))
    again, sha_again = document(chain(3))
    assert (data, sha) == (again, sha_again)
    assert sha == hashlib.sha256(data).hexdigest()
    body = json.loads(data)
    assert body["format"] == "schema_deploy.audit/1" and body["count"] == 3 and body["head"] == chain(3)[-1].row_hash
    assert "größe" in data.decode("utf-8")


def test_rows_from_a_document_can_be_checked_offline() -> None:
    data, _ = document(chain(3))
    rows = [AuditRow.from_dict(r) for r in json.loads(data)["rows"]]
    assert check_rows(rows).ok and rows == chain(3)


# --- what append accepts ----------------------------------------------------------------

def test_payload_dates_become_iso_strings_and_passwords_are_masked() -> None:
    text = _payload_text("deploy", "r1", {"at": T0, "target": "postgresql://migrator:s3cret@db/app",
                                          "nested": [{"dsn": "host=db password=s3cret"}]})
    assert json.loads(text) == {"at": "2026-11-26T03:20:01.123456+00:00",
                                "target": "postgresql://migrator:****@db/app",
                                "nested": [{"dsn": "host=db password=****"}]}


@pytest.mark.parametrize("kind, payload, problem", [
    ("deploy", {"seconds": float("nan")}, "Out of range float values are not JSON compliant"),
    ("deploy", ["not", "an", "object"], "the payload is a list, not a JSON object"),
    ("", {}, "kind must be a non-empty string"),
], ids=["nan", "list", "empty-kind"])
def test_records_jsonb_cannot_hold_are_refused_with_the_reason(kind: str, payload: object, problem: str) -> None:
    with pytest.raises(AuditPayloadInvalid, match=f"cannot be stored: {problem}"):
        _payload_text(kind, "r1", payload)  # type: ignore[arg-type]
