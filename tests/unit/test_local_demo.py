"""The demo's pieces that need no cluster: the second act's concept drift, the feedback
client (against a stand-in feedback endpoint on loopback), the client-side tallies and the
summary rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from modelops.local.demo import summary
from modelops.local.scenario import TARGET, Result, SecondAct, iris_frame, relabelled
from modelops.local.traffic import Answer, Feedback, FeedbackCall, TrafficStats
from modelops.local.view import p_value


def answer(
    rid: str,
    *,
    sent: float = 100.0,
    status: int = 200,
    version: str = "iris-v1",
    predicted: str | None = "setosa",
    truth: str | None = "setosa",
) -> Answer:
    return Answer(sent, 0.01, rid, status, version, False, "", predicted, truth)


# -- the concept drift --------------------------------------------------------------------------


def test_relabelled_names_non_setosa_by_sepal_width_and_keeps_the_measurements() -> None:
    old = iris_frame()
    new = relabelled(old)
    features = [c for c in old.columns if c != TARGET]
    assert new[features].equals(old[features])
    setosa = old[TARGET] == "setosa"
    assert (new.loc[setosa, TARGET] == "setosa").all()
    narrow = old["sepal_width"] < 3.0
    assert (new.loc[~setosa & narrow, TARGET] == "virginica").all()
    assert (new.loc[~setosa & ~narrow, TARGET] == "versicolor").all()
    assert int((new[TARGET] != old[TARGET]).sum()) == 63


def test_a_model_of_the_old_names_fails_the_new_ones_and_one_fitted_on_them_does_not() -> None:
    """The second act's premise: stable's accuracy falls far below its held-out accuracy, and
    retraining on the new names (the trainer's split: 25% held out, seed 42) repairs it."""
    old = iris_frame()
    new = relabelled(old)
    x = old.drop(columns=[TARGET])
    stable = LogisticRegression(max_iter=500).fit(x, old[TARGET])
    assert (stable.predict(x) == new[TARGET]).mean() < 0.7
    x_train, x_test, y_train, y_test = train_test_split(
        x, new[TARGET], test_size=0.25, random_state=42
    )
    forest = RandomForestClassifier(n_estimators=30, max_depth=4, random_state=42)
    assert forest.fit(x_train, y_train).score(x_test, y_test) >= 0.95


# -- the client's tallies -----------------------------------------------------------------------


def test_accuracy_counts_only_labelled_answers_of_the_version_since_then() -> None:
    stats = TrafficStats(
        [
            answer("a", predicted="setosa", truth="setosa"),
            answer("b", predicted="setosa", truth="virginica"),
            answer("c", predicted="setosa", truth=None),  # no label
            answer("d", version="iris-v3", truth="virginica"),  # another version
            answer("e", sent=10.0, truth="virginica"),  # before
            answer("f", status=500, predicted=None),  # failed
        ]
    )
    assert stats.accuracy("iris-v1", since=50.0) == (0.5, 2)
    assert stats.accuracy("iris-v2") == (None, 0)


# -- the feedback client ------------------------------------------------------------------------


def test_feedback_sends_labelled_answers_once_they_are_old_enough_in_bounded_batches() -> None:
    stats = TrafficStats()
    feedback = Feedback("http://127.0.0.1:1", "iris", stats, delay=1.0, max_batch=2)
    stats.answers += [
        answer("a"),
        answer("b", truth=None),  # nothing to send
        answer("c", status=503, predicted=None),  # the client got no answer: no label
        answer("d"),
        answer("e"),
        answer("f", sent=200.0),
    ]
    assert feedback.due(100.5) == []  # none a second old yet
    assert [a.request_id for a in feedback.due(101.5)] == ["a", "d"]
    assert [a.request_id for a in feedback.due(101.5)] == ["e"]  # f is not due yet
    assert [a.request_id for a in feedback.due(201.5)] == ["f"]
    assert feedback.due(300.0) == []  # each answer once


def test_feedback_skips_the_answers_that_came_before_it_started() -> None:
    stats = TrafficStats([answer("before")])
    feedback = Feedback("http://127.0.0.1:1", "iris", stats)
    stats.answers.append(answer("after"))
    assert [a.request_id for a in feedback.due(1e9)] == ["after"]


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[Any]]]:
    """A stand-in feedback endpoint: records bodies; answers counts, or 400 for a bad label."""
    bodies: list[Any] = []

    async def feedback(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append((request.match_info["model"], body))
        items = body["feedback"]
        if any(i["label"] == "bad" for i in items):
            return web.json_response({"error": "item 0: bad label"}, status=400)
        return web.json_response({"received": len(items), "joined": len(items), "pending": 0})

    app = web.Application()
    app.router.add_post("/v2/models/{model}/feedback", feedback)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")), bodies
    finally:
        await server.close()


async def test_feedback_posts_labels_by_request_id_and_records_the_counts(
    endpoint: tuple[str, list[Any]],
) -> None:
    url, bodies = endpoint
    stats = TrafficStats()
    feedback = Feedback(url, "iris", stats)
    async with aiohttp.ClientSession() as session:
        call = await feedback.send(session, [answer("r1"), answer("r2", truth="virginica")])
    assert bodies == [
        (
            "iris",
            {"feedback": [{"id": "r1", "label": "setosa"}, {"id": "r2", "label": "virginica"}]},
        )
    ]
    assert (call.status, call.labels, call.counts["joined"], call.error) == (200, 2, 2, "")
    assert stats.feedback == [call]
    assert stats.labels_sent() == 2 and stats.feedback_errors() == []


async def test_a_refused_feedback_call_is_recorded_as_failed_with_the_servers_reason(
    endpoint: tuple[str, list[Any]],
) -> None:
    url, _ = endpoint
    stats = TrafficStats()
    async with aiohttp.ClientSession() as session:
        await Feedback(url, "iris", stats).send(session, [answer("r1", truth="bad")])
    [failed] = stats.feedback_errors()
    assert (failed.status, failed.error) == (400, "item 0: bad label")
    assert stats.labels_sent() == 0


async def test_an_unreachable_feedback_endpoint_is_a_failed_call_not_a_crash() -> None:
    stats = TrafficStats()
    async with aiohttp.ClientSession() as session:
        # Port 1 on loopback: nothing listens there, the connection is refused.
        call = await Feedback("http://127.0.0.1:1", "iris", stats).send(session, [answer("r1")])
    assert call.status == 0 and "Connect" in call.error
    assert stats.feedback_errors() == [call]


# -- the summary --------------------------------------------------------------------------------


def test_the_summary_gives_the_second_acts_numbers() -> None:
    traffic = TrafficStats(
        [answer("a", version="iris-v3")],
        feedback=[FeedbackCall(1.0, 40, 200, {"received": 40, "joined": 30, "pending": 10})],
    )
    act = SecondAct(
        started=1000.0,
        stable="iris-v1",
        dataset_uri="s3://modelops/datasets/iris/season-2.csv",
        fell={"value": 0.55, "labels": 166, "baseline": {"against": 0.9474}},
        fired_at=1007.5,
        client_accuracy=(0.56, 304),
        retrain="iris-quality-retrain-1",
        version="iris-v3",
        promotion={
            "reason": "Promoted",
            "message": "iris-v3 promoted to stable",
            "analysis": {
                "metric": "accuracy",
                "canaryValue": 1.0,
                "canaryLabels": 226,
                "stableValue": 0.561,
                "stableLabels": 1016,
                "margin": 0.05,
                "pNotWorse": 0.0,
            },
        },
        after=[answer("z", version="iris-v3")],
        finished_at=1052.5,
    )
    result = Result("rollback", "iris", 900.0, traffic=traffic, second=act)
    rows = dict(summary(result, 10.0))
    assert rows["feedback"] == "40 labels in 1 calls (at once: joined 30, pending 10), 0 failed"
    assert rows["iris-v1 live accuracy when it fired"] == (
        "0.55 on 166 labels (held-out 0.95; clients' tally 0.56 on 304)"
    )
    assert rows["labels change -> quality fired"] == "7.5s"
    assert rows["labels change -> promotion"] == "52.5s"
    assert rows["iris-v3 analysis at promotion"] == (
        "accuracy 1.00 (226 labels) vs 0.56 (1016), margin 0.05, p(not worse) <1e-16"
    )
    assert rows["answers from iris-v3 after"] == "1/1"


def test_p_values_too_small_for_a_double_are_shown_as_a_bound() -> None:
    assert (p_value(0.0), p_value(3.2e-5), p_value(None)) == ("<1e-16", "3.2e-05", "-")
