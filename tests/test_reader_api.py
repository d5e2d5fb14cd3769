"""Reading station over HTTP (FastAPI TestClient): sign-in, queues, answers, timing, pause, refusals."""

from __future__ import annotations

import re
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from bonescan.reader.app import COOKIE, create_app
from bonescan.reader.auth import hash_password, verify_password
from bonescan.reader.store import ReaderStore
from bonescan.reader.study import create_study
from bonescan.synth.case import generate_case


class FakeClock:
    """A settable clock so that server-measured times can be checked exactly."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_cases(folder: Path, n: int, readers_column: dict[str, str] | None = None) -> Path:
    """n synthetic studies as .npy anterior/posterior pairs plus a case list with labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        case = generate_case(f"c{i}", seed=100 + i)
        np.save(folder / f"c{i}_ant.npy", case.anterior.astype(np.float32))
        np.save(folder / f"c{i}_post.npy", case.posterior.astype(np.float32))
        row = {"case_id": f"c{i}", "anterior": f"c{i}_ant.npy", "posterior": f"c{i}_post.npy", "label": i % 2}
        if readers_column is not None:
            row["readers"] = readers_column.get(f"c{i}", "")
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "cases.csv", index=False)
    return folder / "cases.csv"


def write_predictions(folder: Path, n: int) -> Path:
    probabilities = [0.9 if i % 2 else 0.2 for i in range(n)]
    probabilities[0] = 0.7  # the AI gets case c0 (label 0) wrong
    np.save(folder / "heat.npy", np.random.default_rng(0).random((2, 64, 16)))
    frame = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "probability": probabilities,
                          "heatmap": ["heat.npy"] * n})
    frame.to_csv(folder / "predictions.csv", index=False)
    return folder / "predictions.csv"


@pytest.fixture(scope="module")
def case_list(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cases(tmp_path_factory.mktemp("cases"), 4, {"c3": "alice"})


@pytest.fixture(scope="module")
def blinded_template(case_list: Path):
    return create_study(case_list.parent / "template", mode="blinded", cases_csv=case_list,
                        readers=["alice", "bob"], seed=3)


@pytest.fixture()
def blinded(tmp_path: Path, blinded_template):
    """A fresh copy of a two-reader blinded study (alice reads c0-c3, bob c0-c2)."""
    shutil.copytree(blinded_template.study_dir, tmp_path / "study")
    return replace(blinded_template, study_dir=tmp_path / "study")


def sign_in(client: TestClient, reader: str, password: str) -> None:
    response = client.post("/login", data={"reader": reader, "password": password}, follow_redirects=False)
    assert response.status_code == 303, response.text


def current_key(client: TestClient) -> str | None:
    response = client.get("/read", follow_redirects=False)
    if response.status_code != 303:
        return None
    return response.headers["location"].rsplit("/", 1)[1]


def answer(client: TestClient, key: str, value: str = "metastasis", confidence: str = "", stage: str = "answer"):
    return client.post(f"/read/{key}/{stage}", data={"answer": value, "confidence": confidence},
                       follow_redirects=False)


def test_passwords_are_stored_hashed_and_verify():
    stored = hash_password("abcd-efgh")
    assert "abcd-efgh" not in stored and stored.startswith("scrypt$")
    assert verify_password("abcd-efgh", stored)
    assert not verify_password("abcd-efgX", stored)
    assert hash_password("same") != hash_password("same")  # salted


def test_study_database_keeps_no_plain_password(blinded):
    raw = (blinded.study_dir / "study.sqlite").read_bytes()
    for password in blinded.passwords.values():
        assert password.encode() not in raw


def test_sign_in_failures_are_401_and_do_not_say_which_part_was_wrong(blinded):
    client = TestClient(create_app(blinded.study_dir))
    wrong_password = client.post("/login", data={"reader": "alice", "password": "nope"})
    unknown_reader = client.post("/login", data={"reader": "mallory", "password": blinded.passwords["alice"]})
    assert wrong_password.status_code == unknown_reader.status_code == 401
    message = re.compile(r'<p class="error"[^>]*>(.*?)</p>')
    assert message.search(wrong_password.text).group(1) == message.search(unknown_reader.text).group(1)
    assert COOKIE not in client.cookies
    assert client.get("/read", follow_redirects=False).headers["location"] == "/login"


def test_reader_sees_only_own_queue_and_gets_403_for_other_cases(blinded):
    app = create_app(blinded.study_dir)
    alice, bob = TestClient(app), TestClient(app)
    sign_in(alice, "alice", blinded.passwords["alice"])
    sign_in(bob, "bob", blinded.passwords["bob"])
    store = ReaderStore.open(blinded.study_dir)
    assert sorted(store.queue("blinded", "alice")) == ["c0", "c1", "c2", "c3"]
    assert sorted(store.queue("blinded", "bob")) == ["c0", "c1", "c2"]  # c3 is assigned to alice only

    alice_key = current_key(alice)
    page = alice.get(f"/read/{alice_key}")
    assert page.status_code == 200 and "Case 1 of 4" in page.text
    visible = page.text.replace(alice_key, "")  # the random read key could contain "c0" by chance
    assert not any(case_id in visible for case_id in ("c0", "c1", "c2", "c3"))  # case ids never reach the reader
    assert alice.get(f"/image/{alice_key}/anterior").headers["content-type"] == "image/png"

    assert bob.get(f"/read/{alice_key}").status_code == 403
    assert bob.get(f"/image/{alice_key}/posterior").status_code == 403
    assert answer(bob, alice_key).status_code == 403
    assert bob.get("/read/not-a-key").status_code == 403
    assert store.reads_frame()["own_answer"].notna().sum() == 0


def test_answers_follow_the_seeded_queue_and_first_answer_stands(blinded):
    client = TestClient(create_app(blinded.study_dir))
    sign_in(client, "alice", blinded.passwords["alice"])
    store = ReaderStore.open(blinded.study_dir)
    order = store.queue("blinded", "alice")
    key = current_key(client)
    assert store.get_read(key).case_id == order[0]
    response = answer(client, key, "no-metastasis", "4")
    assert response.status_code == 303 and response.headers["location"] == "/read"
    again = answer(client, key, "metastasis", "1")  # a repeated post changes nothing
    assert again.status_code == 303
    read = store.get_read(key)
    assert (read.own_answer, read.own_confidence) == (0, 4)
    assert store.get_read(current_key(client)).case_id == order[1]


def test_an_answer_the_disk_cannot_take_is_a_503_that_says_so_and_the_station_goes_on(blinded, monkeypatch):
    client = TestClient(create_app(blinded.study_dir))
    sign_in(client, "alice", blinded.passwords["alice"])
    key = current_key(client)

    def disk_full(self, *args):
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(ReaderStore, "record_own", disk_full)
        response = answer(client, key, "no-metastasis", "4")
    assert response.status_code == 503
    assert "could not save this step (database or disk is full)" in response.text
    assert "nothing of it was recorded" in response.text
    assert ReaderStore.open(blinded.study_dir).get_read(key).own_answer is None
    assert answer(client, key, "no-metastasis", "4").status_code == 303  # sent again once there is room
    assert ReaderStore.open(blinded.study_dir).get_read(key).own_answer == 0


def test_same_seed_same_queues_and_readers_differ(tmp_path: Path, case_list: Path):
    one = create_study(tmp_path / "a", mode="blinded", cases_csv=case_list, readers=["alice", "bob"], seed=7)
    two = create_study(tmp_path / "b", mode="blinded", cases_csv=case_list, readers=["bob", "alice"], seed=7)
    assert one.queues["alice"] == two.queues["alice"] and one.queues["bob"] == two.queues["bob"]
    other = create_study(tmp_path / "c", mode="blinded", cases_csv=case_list, readers=["alice"], seed=8)
    assert sorted(other.queues["alice"]) == sorted(one.queues["alice"])


@pytest.mark.parametrize(
    "form, field",
    [
        ({"confidence": "3"}, "answer"),
        ({"answer": "maybe"}, "answer"),
        ({"answer": "metastasis", "confidence": "7"}, "confidence"),
        ({"answer": "metastasis", "confidence": "high"}, "confidence"),
    ],
)
def test_malformed_answer_is_422_naming_the_field(blinded, form, field):
    client = TestClient(create_app(blinded.study_dir))
    sign_in(client, "bob", blinded.passwords["bob"])
    key = current_key(client)
    response = client.post(f"/read/{key}/answer", data=form, follow_redirects=False)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert ReaderStore.open(blinded.study_dir).get_read(key).own_answer is None


def test_login_form_missing_field_is_422(blinded):
    response = TestClient(create_app(blinded.study_dir)).post("/login", data={"reader": "alice"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "password"]


def test_unauthenticated_answer_is_401(blinded):
    store = ReaderStore.open(blinded.study_dir)
    key = sqlite3.connect(store.db_path).execute("SELECT read_key FROM reads LIMIT 1").fetchone()[0]
    response = answer(TestClient(create_app(blinded.study_dir)), key)
    assert response.status_code == 401
    assert store.get_read(key).own_answer is None


def test_time_is_measured_on_the_server_and_pause_stops_the_clock(blinded):
    clock = FakeClock()
    client = TestClient(create_app(blinded.study_dir, clock=clock))
    sign_in(client, "alice", blinded.passwords["alice"])
    key = current_key(client)
    client.get(f"/read/{key}")  # served: the clock starts
    clock.now += 30
    client.get(f"/read/{key}")  # a reload does not restart it
    clock.now += 10
    assert client.post("/pause", follow_redirects=False).headers["location"] == "/paused"
    clock.now += 3600  # an hour away is not reading time
    assert current_key(client) == key  # resume continues where the reader left
    client.get(f"/read/{key}")
    clock.now += 5
    answer(client, key, "metastasis")
    store = ReaderStore.open(blinded.study_dir)
    row = store.reads_frame().set_index("case_id").loc[store.get_read(key).case_id]
    row = row[row["reader"] == "alice"] if isinstance(row, pd.DataFrame) else row
    assert float(np.asarray(row["own_seconds"]).ravel()[0]) == pytest.approx(45.0)


def test_sessions_survive_a_new_app_instance(blinded):
    first = TestClient(create_app(blinded.study_dir))
    sign_in(first, "alice", blinded.passwords["alice"])
    key = current_key(first)
    second = TestClient(create_app(blinded.study_dir))  # a restarted server
    second.cookies.set(COOKIE, first.cookies[COOKIE])
    assert current_key(second) == key
    first.post("/logout")
    assert second.get("/read", follow_redirects=False).headers["location"] == "/login"


def test_ai_consulted_phase_reveals_ai_after_own_answer_and_final_answer_can_be_revised(blinded, case_list):
    predictions = write_predictions(case_list.parent, 4)
    with pytest.raises(Exception, match="unfinished"):
        create_study(blinded.study_dir, mode="ai-consulted", predictions_csv=predictions)
    added = create_study(blinded.study_dir, mode="ai-consulted", predictions_csv=predictions, seed=3,
                         close_open_reads=True)
    assert added.passwords == {}  # readers keep their passwords
    store = ReaderStore.open(blinded.study_dir)
    assert store.phases() == ["blinded", "ai-consulted"]
    assert sorted(added.queues["bob"]) == ["c0", "c1", "c2"]
    assert added.queues["alice"] != store.queue("blinded", "alice")  # reshuffled

    clock = FakeClock()
    client = TestClient(create_app(blinded.study_dir, clock=clock))
    sign_in(client, "alice", blinded.passwords["alice"])
    key = current_key(client)
    read = store.get_read(key)
    page = client.get(f"/read/{key}")
    assert "AI-consulted reading" in page.text and "Probability of metastasis" not in page.text
    assert client.get(f"/image/{key}/heatmap").status_code == 403  # not before the own answer
    final_early = answer(client, key, "metastasis", stage="final")
    assert final_early.status_code == 409
    clock.now += 20
    assert answer(client, key, "no-metastasis", "2").headers["location"] == f"/read/{key}"
    revealed = client.get(f"/read/{key}")
    assert "Probability of metastasis" in revealed.text
    assert f"{read.ai.probability * 100:.1f}%" in revealed.text
    assert client.get(f"/image/{key}/heatmap").status_code == 200
    clock.now += 7
    assert answer(client, key, "metastasis", "5", stage="final").headers["location"] == "/read"
    clock.now += 100
    answer(client, key, "no-metastasis", "3", stage="final")  # the final answer may be revised
    answer(client, key, "metastasis", "1")  # the own answer may not
    frame = store.reads_frame()
    row = frame[(frame["phase"] == "ai-consulted") & (frame["reader"] == "alice") & (frame["case_id"] == read.case_id)]
    row = row.iloc[0]
    assert (row["own_answer"], row["own_confidence"], row["own_seconds"]) == (0, 2, 20.0)
    assert (row["final_answer"], row["final_confidence"], row["final_seconds"], row["final_revisions"]) == (0, 3, 7.0, 1)
    # The blinded phase is closed: its read keys no longer open.
    blinded_key = sqlite3.connect(store.db_path).execute(
        "SELECT read_key FROM reads WHERE phase = 'blinded' AND reader = 'alice' LIMIT 1").fetchone()[0]
    assert client.get(f"/read/{blinded_key}").status_code == 403


def test_finishing_the_queue_shows_done(blinded):
    client = TestClient(create_app(blinded.study_dir))
    sign_in(client, "bob", blinded.passwords["bob"])
    for _ in range(3):
        answer(client, current_key(client), "no-metastasis")
    done = client.get("/read", follow_redirects=False)
    assert done.status_code == 200 and "finished all 3 cases" in done.text
    assert ReaderStore.open(blinded.study_dir).progress("bob") == (3, 3)


def test_ai_consulted_phase_shows_hotspots_when_predictions_name_lesion_results(blinded, case_list):
    from PIL import Image

    predictions = write_predictions(case_list.parent, 4)
    frame = pd.read_csv(predictions)
    lesions = case_list.parent / "lesions"
    lesions.mkdir(exist_ok=True)
    for case_id in frame["case_id"][:3]:  # c3 has no lesion result
        (lesions / f"{case_id}.json").write_text("{}")
        Image.new("RGB", (20, 40), (200, 0, 0)).save(lesions / f"{case_id}.png")
    frame["lesions"] = [f"lesions/{c}.json" for c in frame["case_id"][:3]] + [""]
    frame.to_csv(predictions, index=False)
    create_study(blinded.study_dir, mode="ai-consulted", predictions_csv=predictions, seed=3, close_open_reads=True)
    store = ReaderStore.open(blinded.study_dir)
    client = TestClient(create_app(blinded.study_dir, clock=FakeClock()))
    sign_in(client, "bob", blinded.passwords["bob"])  # bob reads c0-c2: every case has hotspots
    key = current_key(client)
    assert "Show hotspots" not in client.get(f"/read/{key}").text
    assert client.get(f"/image/{key}/hotspots").status_code == 403  # hidden until the own answer
    answer(client, key, "no-metastasis", "2")
    assert "Show hotspots" in client.get(f"/read/{key}").text
    image = client.get(f"/image/{key}/hotspots")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert store.get_read(key).case_id != "c3"
    # A lesion JSON whose overlay is missing is one error naming the line.
    (lesions / "c1.png").unlink()
    with pytest.raises(Exception, match="hotspot overlay not found"):
        create_study(case_list.parent / "again", mode="ai-consulted", cases_csv=case_list, readers=["alice", "bob"],
                     predictions_csv=predictions)
