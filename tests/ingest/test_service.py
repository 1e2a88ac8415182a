"""Receiving messages on each of the three databases: accept, duplicate, conflict, malformed,
end of run, lists, and two processes registering the same file at once."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from runwatch.catalogue.models import File, Run, RunStatus
from runwatch.db import Database, utcnow
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from runwatch.ingest.service import Receipt, receive, receive_in_parts, receive_many

NOW = dt.datetime(2025, 8, 26, 13, 0, tzinfo=dt.UTC)


def message(run: int = 1234, seq: int = 1, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"RUN.{run}.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.{seq:03d}_J25.rtraw",
        "url": f"root://eos//raw/{run}/{seq}.rtraw",
        "run": run,
        "stream": "Physics",
        "sequence": seq,
        "size": 100 * seq,
        "adler32": f"{seq:08x}",
        "created": f"2025-08-26T12:00:{seq:02d}Z",
    }
    body.update(changes)
    return body


def send(db: Database, body: dict[str, Any] | str) -> Receipt:
    text = body if isinstance(body, str) else json.dumps(body)
    with db.session() as session:
        return receive(session, text, "test", "here", NOW)


def stored(db: Database, message_id: int) -> ReceivedMessage:
    with db.session() as session:
        row = session.get(ReceivedMessage, message_id)
        assert row is not None
        return row


def the_run(db: Database, number: int = 1234) -> Run:
    with db.session() as session:
        run = session.scalar(sa.select(Run).where(Run.number == number))
        assert run is not None
        return run


def test_a_message_registers_its_file_and_run(any_db: Database) -> None:
    text = json.dumps(message(seq=2))
    receipt = send(any_db, text)
    assert (receipt.status, receipt.reason) == (MessageStatus.ACCEPTED, None)
    row = stored(any_db, receipt.message_id)
    assert (row.body, row.source, row.origin) == (text, "test", "here")
    assert (row.file_name, row.run_number, row.file_id) == (
        message(seq=2)["name"],
        1234,
        receipt.file_id,
    )
    with any_db.session() as session:
        file = session.get(File, receipt.file_id)
        assert file is not None
        assert (file.size, file.adler32, file.sequence, file.planned_at) == (
            200,
            "00000002",
            2,
            None,
        )
        assert file.created_at == dt.datetime(2025, 8, 26, 12, 0, 2, tzinfo=dt.UTC)
        assert file.registered_at == NOW
    run = the_run(any_db)
    assert (run.stream, run.status, run.n_files, run.n_bytes) == (
        "Physics",
        RunStatus.DATA_TAKING,
        1,
        200,
    )


def test_run_counters_and_time_span_follow_its_files(any_db: Database) -> None:
    for seq in (3, 1, 2):
        assert send(any_db, message(seq=seq)).status is MessageStatus.ACCEPTED
    run = the_run(any_db)
    assert (run.n_files, run.n_bytes) == (3, 600)
    assert run.started_at == dt.datetime(2025, 8, 26, 12, 0, 1, tzinfo=dt.UTC)
    assert run.ended_at == dt.datetime(2025, 8, 26, 12, 0, 3, tzinfo=dt.UTC)


def test_the_same_message_again_is_a_duplicate_that_changes_nothing(any_db: Database) -> None:
    first = send(any_db, message())
    again = send(any_db, message())
    assert again.status is MessageStatus.DUPLICATE
    assert again.file_id == first.file_id
    assert again.message_id != first.message_id
    assert the_run(any_db).n_files == 1
    with any_db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(File)) == 1


def test_a_different_checksum_for_a_known_name_is_rejected_and_kept(any_db: Database) -> None:
    send(any_db, message())
    receipt = send(any_db, message(adler32="deadbeef", size=999))
    assert receipt.status is MessageStatus.REJECTED
    assert receipt.file_id is None
    assert receipt.reason is not None
    assert "size 999 differs from the registered 100" in receipt.reason
    assert "adler32 deadbeef differs from the registered 00000001" in receipt.reason
    row = stored(any_db, receipt.message_id)
    assert row.status is MessageStatus.REJECTED
    assert json.loads(row.body)["adler32"] == "deadbeef"
    with any_db.session() as session:
        assert session.scalar(sa.select(File.adler32)) == "00000001"


def test_a_known_name_in_another_run_is_rejected(any_db: Database) -> None:
    send(any_db, message())
    receipt = send(any_db, message(run=99, name=message()["name"]))
    assert receipt.status is MessageStatus.REJECTED
    assert "run 99 differs from the registered 1234" in (receipt.reason or "")


def test_a_malformed_message_is_kept_with_its_reason(any_db: Database) -> None:
    receipt = send(any_db, message(run=-5, colour="blue", name="r.rtraw"))
    assert receipt.status is MessageStatus.REJECTED
    assert receipt.reason == (
        "field 'run': must be a positive integer; unknown field 'colour' "
        "(known: name, url, run, stream, sequence, size, adler32, created, end_of_run, metadata)"
    )
    row = stored(any_db, receipt.message_id)
    assert (row.reason, row.file_name, row.run_number) == (
        receipt.reason,
        "r.rtraw",
        None,
    )
    not_json = send(any_db, "{oops")
    assert stored(any_db, not_json.message_id).body == "{oops"
    assert not_json.reason == (
        "not JSON: Expecting property name enclosed in double quotes at line 1 column 2"
    )


def test_undecodable_bytes_are_stored_escaped(any_db: Database) -> None:
    with any_db.session() as session:
        receipt = receive(session, b'{"name": "\xff"}', "test", None, NOW)
    assert receipt.reason == "not UTF-8: byte 10 cannot be decoded"
    assert stored(any_db, receipt.message_id).body == '{"name": "\\xff"}'


def test_end_of_run_sets_the_expected_files(any_db: Database) -> None:
    send(any_db, message(seq=1))
    receipt = send(any_db, message(seq=2, end_of_run=True))
    assert receipt.status is MessageStatus.ACCEPTED
    run = the_run(any_db)
    assert (run.n_files, run.expected_files, run.end_of_run_at) == (2, 2, NOW)


def test_end_of_run_for_a_finished_run_reopens_it_when_files_are_missing(
    any_db: Database,
) -> None:
    send(any_db, message(seq=1, end_of_run=True))
    with any_db.session() as session:  # what the scheduler does once the tasks are done
        session.execute(sa.update(Run).values(status=RunStatus.ALL_COMPLETED, completed_at=NOW))
    late = send(any_db, message(seq=1, end_of_run=True, sequence=3))
    assert late.status is MessageStatus.REJECTED  # a different sequence: not the same file
    fresh = send(any_db, message(seq=3, end_of_run=True))
    assert fresh.status is MessageStatus.ACCEPTED
    run = the_run(any_db)
    assert (run.expected_files, run.status, run.completed_at) == (3, RunStatus.REC_RUNNING, None)
    assert run.end_of_run_at == NOW


def test_a_resent_file_that_now_carries_end_of_run_records_it(any_db: Database) -> None:
    send(any_db, message(seq=1))
    receipt = send(any_db, message(seq=1, end_of_run=True))
    assert receipt.status is MessageStatus.ACCEPTED
    assert receipt.reason == "file already registered; end of run recorded"
    assert the_run(any_db).expected_files == 1
    assert send(any_db, message(seq=1, end_of_run=True)).status is MessageStatus.DUPLICATE


def test_a_list_body_stores_each_element_with_its_exact_text(any_db: Database) -> None:
    one, two = json.dumps(message(seq=1)), json.dumps(message(seq=2), indent=2)
    body = f" [ {one} ,\n{two}, 17, {one}]"
    with any_db.session() as session:
        receipts = receive_many(session, body, "test", None, NOW)
    assert [r.status for r in receipts] == [
        MessageStatus.ACCEPTED,
        MessageStatus.ACCEPTED,
        MessageStatus.REJECTED,
        MessageStatus.DUPLICATE,
    ]
    assert receipts[2].reason == "a message must be a JSON object, not a number"
    assert [stored(any_db, r.message_id).body for r in receipts] == [one, two, "17", one]


def test_a_single_object_and_broken_or_empty_bodies(any_db: Database) -> None:
    with any_db.session() as session:
        (single,) = receive_many(session, json.dumps(message()), "test", None, NOW)
        (broken,) = receive_many(session, "[{", "test", None, NOW)
        (empty,) = receive_many(session, "[]", "test", None, NOW)
    assert single.status is MessageStatus.ACCEPTED
    assert broken.status is MessageStatus.REJECTED
    assert (broken.reason or "").startswith("not JSON: Expecting property name")
    assert stored(any_db, broken.message_id).body == "[{"
    assert (empty.status, empty.reason) == (MessageStatus.REJECTED, "an empty list of messages")


def test_an_oversized_body_is_rejected_and_stored_cut_short(any_db: Database) -> None:
    receipt = send(any_db, message(metadata={"padding": "x" * 70_000}))
    assert receipt.status is MessageStatus.REJECTED
    assert (receipt.reason or "").startswith("message too long: ")
    assert len(stored(any_db, receipt.message_id).body) < 65_535


def _at_once(bodies: list[str], receive_body: Callable[[str], list[Receipt]]) -> list[Receipt]:
    """Receive each body in its own thread, all starting together."""
    start = threading.Barrier(len(bodies))
    receipts: list[Receipt] = []
    errors: list[BaseException] = []

    def one(body: str) -> None:
        try:
            start.wait()
            receipts.extend(receive_body(body))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return receipts


def _race(db: Database, bodies: list[str]) -> list[Receipt]:
    """Receive each body in its own session, all starting together."""

    def one(body: str) -> list[Receipt]:
        with db.session() as session:
            return [receive(session, body, "test", None, utcnow())]

    return _at_once(bodies, one)


def test_two_sessions_registering_the_same_file_at_once(any_db: Database) -> None:
    for attempt in range(3):
        receipts = _race(any_db, [json.dumps(message(run=10 + attempt))] * 4)
        statuses = sorted(r.status.value for r in receipts)
        assert statuses == ["accepted", "duplicate", "duplicate", "duplicate"]
        assert len({r.file_id for r in receipts}) == 1
        assert the_run(any_db, 10 + attempt).n_files == 1


def test_files_of_one_new_run_registered_at_once_are_all_counted(any_db: Database) -> None:
    receipts = _race(any_db, [json.dumps(message(run=77, seq=s)) for s in range(1, 6)])
    assert {r.status for r in receipts} == {MessageStatus.ACCEPTED}
    run = the_run(any_db, 77)
    assert (run.n_files, run.n_bytes) == (5, 1500)
    with any_db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1


def receive_list(db: Database, bodies: list[dict[str, Any]]) -> list[Receipt]:
    with db.session() as session:
        return receive_many(session, json.dumps(bodies), "test", None, NOW)


def test_a_file_named_twice_in_one_list_is_registered_once(any_db: Database) -> None:
    receipts = receive_list(any_db, [message(seq=1), message(seq=2), message(seq=1)])
    assert [r.status for r in receipts] == [
        MessageStatus.ACCEPTED,
        MessageStatus.ACCEPTED,
        MessageStatus.DUPLICATE,
    ]
    assert receipts[2].file_id == receipts[0].file_id
    assert len({r.message_id for r in receipts}) == 3
    run = the_run(any_db)
    assert (run.n_files, run.n_bytes) == (2, 300)


def test_a_conflicting_checksum_in_the_same_list_is_rejected_and_kept(any_db: Database) -> None:
    bodies = [message(seq=1), message(seq=1, adler32="deadbeef"), message(seq=1, size=7)]
    receipts = receive_list(any_db, bodies)
    assert [r.status for r in receipts] == [
        MessageStatus.ACCEPTED,
        MessageStatus.REJECTED,
        MessageStatus.REJECTED,
    ]
    assert receipts[1].reason == (
        f"file {message()['name']} is already registered (file id {receipts[0].file_id}): "
        "adler32 deadbeef differs from the registered 00000001"
    )
    assert "size 7 differs from the registered 100" in (receipts[2].reason or "")
    assert [json.loads(stored(any_db, r.message_id).body) for r in receipts] == bodies
    assert (stored(any_db, receipts[1].message_id).file_name, receipts[1].file_id) == (
        message()["name"],
        None,
    )
    with any_db.session() as session:
        assert session.scalars(sa.select(File.adler32)).all() == ["00000001"]
    assert the_run(any_db).n_files == 1


def test_one_list_of_several_runs_creates_and_counts_each(any_db: Database) -> None:
    bodies = [message(run=run, seq=seq) for seq in (2, 1, 3) for run in (30, 10, 20)]
    bodies.append(message(run=40, seq=1, created=None))
    receipts = receive_list(any_db, bodies)
    assert {r.status for r in receipts} == {MessageStatus.ACCEPTED}
    for number in (10, 20, 30):
        run = the_run(any_db, number)
        assert (run.n_files, run.n_bytes, run.stream) == (3, 600, "Physics")
        assert run.started_at == dt.datetime(2025, 8, 26, 12, 0, 1, tzinfo=dt.UTC)
        assert run.ended_at == dt.datetime(2025, 8, 26, 12, 0, 3, tzinfo=dt.UTC)
    run = the_run(any_db, 40)
    assert (run.n_files, run.n_bytes, run.started_at, run.ended_at) == (1, 100, None, None)
    with any_db.session() as session:
        files = session.execute(sa.select(File.name, File.run_id, File.id)).all()
        runs = dict(session.execute(sa.select(Run.id, Run.number)).all())
    by_name = {name: (runs[run_id], id_) for name, run_id, id_ in files}
    assert [by_name[b["name"]] for b in bodies] == [
        (b["run"], r.file_id) for b, r in zip(bodies, receipts, strict=True)
    ]


def test_end_of_run_in_the_list_that_registers_the_run(any_db: Database) -> None:
    bodies = [
        message(seq=1),
        message(seq=2, end_of_run=True),
        message(seq=2, end_of_run=True),
        message(seq=1, end_of_run=True),  # a file known by now, that says it ends the run
    ]
    receipts = receive_list(any_db, bodies)
    assert [(r.status, r.reason) for r in receipts] == [
        (MessageStatus.ACCEPTED, None),
        (MessageStatus.ACCEPTED, None),
        (MessageStatus.DUPLICATE, None),
        (MessageStatus.ACCEPTED, "file already registered; end of run recorded"),
    ]
    run = the_run(any_db)
    assert (run.n_files, run.expected_files, run.end_of_run_at) == (2, 1, NOW)


def test_a_file_registered_by_another_session_after_the_probe(
    any_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe misses a file another session has just committed (as in a race, made
    certain here): the insert skips or fails on it, and its row is read back."""
    from runwatch.catalogue import service

    first = send(any_db, message(seq=1))
    real_files_named = service.files_named
    probes: list[list[str]] = []

    def late(conn: sa.Connection, names: Any) -> dict[str, service.CataloguedFile]:
        probes.append(list(names))
        return {} if len(probes) == 1 else real_files_named(conn, probes[-1])

    monkeypatch.setattr(service, "files_named", late)
    receipts = receive_list(
        any_db, [message(seq=2), message(seq=1), message(seq=1, adler32="deadbeef")]
    )
    assert [r.status for r in receipts] == [
        MessageStatus.ACCEPTED,
        MessageStatus.DUPLICATE,
        MessageStatus.REJECTED,
    ]
    assert receipts[1].file_id == first.file_id
    assert len(probes) >= 2  # read back after the insert
    run = the_run(any_db)
    assert (run.n_files, run.n_bytes) == (2, 300)


def test_two_intakes_of_overlapping_lists_at_once(any_db: Database) -> None:
    """Four lists of the same files of three runs, each in its own order, received in
    parts at the same moment: every file registered and counted once, every message kept."""
    rng = random.Random(7)
    files = [message(run=run, seq=seq) for run in (61, 62, 63) for seq in range(1, 9)]
    files[-1]["end_of_run"] = True
    lists = [json.dumps(rng.sample(files, k=len(files))) for _ in range(4)]
    receipts = _at_once(
        lists, lambda body: receive_in_parts(any_db, body, "test", None, utcnow(), 5, lambda: None)
    )
    assert len(receipts) == len(lists) * len(files)
    accepted = [r.file_id for r in receipts if r.status is MessageStatus.ACCEPTED]
    assert len(accepted) == len(set(accepted)) == len(files)
    assert {r.status for r in receipts} <= {MessageStatus.ACCEPTED, MessageStatus.DUPLICATE}
    with any_db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(File)) == len(files)
        assert session.scalar(sa.select(sa.func.count()).select_from(ReceivedMessage)) == len(
            receipts
        )
    for number in (61, 62, 63):
        assert (the_run(any_db, number).n_files, the_run(any_db, number).n_bytes) == (8, 3600)
    assert the_run(any_db, 63).expected_files == 8
