"""The model card: its JSON document (lineage, metrics, fairness, profile histograms,
signature, rollout and drift history of the version only) and its HTML page (every section,
escaped, no script); and the card the operator writes at registration."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from html.parser import HTMLParser
from typing import Any

import pandas as pd
import pytest

from modelops.controllers.trainingrun import write_card
from modelops.drift import build_profile
from modelops.insight.card import SECTIONS, card_document, render_html
from modelops.storage import Location, sha256_hex
from unit.test_trainer import MemoryStore

WHEN = dt.datetime(2025, 10, 9, 9, 30, tzinfo=dt.UTC)
FAIRNESS = {
    "sensitiveFeatures": ["sex"],
    "positiveLabel": "1",
    "metrics": {"demographic_parity_difference": 0.3, "accuracy_group_min": 0.8},
    "features": [
        {
            "name": "sex",
            "metrics": {"demographic_parity_difference": 0.3, "accuracy_group_min": 0.8},
            "groups": [
                {"value": "f", "count": 40, "metrics": {"selection_rate": 0.2, "accuracy": 0.8}},
                {"value": "m", "count": 60, "metrics": {"selection_rate": 0.5, "accuracy": 0.9}},
            ],
        }
    ],
}


def version() -> dict[str, Any]:
    return {
        "metadata": {"name": "credit-v2", "namespace": "shop"},
        "spec": {
            "model": "credit",
            "version": 2,
            "artifact": {"uri": "s3://modelops/shop/credit/u/model.skops", "sha256": "a" * 64},
            "profile": {"uri": "s3://modelops/shop/credit/u/profile.json", "sha256": "b" * 64},
            "probe": {"uri": "s3://modelops/shop/credit/u/probe.json", "sha256": "c" * 64},
            "signature": {
                "task": "classification",
                "inputs": [
                    {"name": "income", "datatype": "FP64"},
                    {"name": "city", "datatype": "BYTES", "categories": ["<b>paris</b>", "lyon"]},
                ],
                "classes": ["0", "1"],
            },
            "metrics": {"accuracy": 0.91, "f1": 0.9, "demographic_parity_difference": 0.3,
                        "accuracy_group_min": 0.8},
            "fairness": FAIRNESS,
            "lineage": {
                "trainingRun": "credit-run", "runUid": "u", "datasetUri": "s3://data/credit.csv",
                "datasetSha256": "d" * 64, "estimator": "LogisticRegression",
                "params": {"C": 0.5}, "seed": 7, "image": "runtime:1", "target": "default",
                "testSize": 0.25,
            },
        },
    }  # fmt: skip


def profile() -> dict[str, Any]:
    frame = pd.DataFrame(
        {"income": [float(i % 37) for i in range(200)], "city": ["<b>paris</b>", "lyon"] * 100}
    )
    return build_profile(frame, predictions=["0", "1", "1", "0"] * 50)


def deployment(name: str, model: str, history: list[dict[str, Any]], **status: Any) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {"model": model},
        "status": {"history": history, **status},
    }


def entry(time: str, version: str, event: str) -> dict[str, Any]:
    return {"time": time, "event": event, "version": version, "reason": event, "message": event}


def monitor(name: str, checked: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"deployment": "credit"},
        "status": {"version": checked, "phase": "Drifted", "firings": 3,
                   "conditions": [{"type": "Drifted", "status": "True"}], **status},
    }  # fmt: skip


def card(**changes: Any) -> dict[str, Any]:
    return card_document(version(), profile(), generated_at=WHEN, **changes)


# -- the document -----------------------------------------------------------------------------


def test_card_carries_the_lineage_as_recorded() -> None:
    lineage = card()["lineage"]
    assert lineage["trainingRun"] == "credit-run"
    assert (lineage["datasetUri"], lineage["datasetSha256"]) == ("s3://data/credit.csv", "d" * 64)
    assert (lineage["estimator"], lineage["params"], lineage["seed"]) == (
        "LogisticRegression", {"C": 0.5}, 7,
    )  # fmt: skip
    assert lineage["image"] == "runtime:1"


def test_card_metrics_leave_the_fairness_scalars_to_the_fairness_table() -> None:
    document = card()
    assert document["metrics"] == {"accuracy": 0.91, "f1": 0.9}
    assert document["fairness"] == FAIRNESS


def test_card_names_the_artifacts_with_their_digests() -> None:
    artifacts = card()["artifacts"]
    assert set(artifacts) == {"model", "profile", "probe"}
    assert artifacts["model"]["sha256"] == "a" * 64


def test_card_profile_histograms_are_shares_of_the_reference() -> None:
    features = {f["name"]: f for f in card()["profile"]["features"]}
    for feature in features.values():
        shares = [bar["share"] for bar in feature["histogram"]["bars"]]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert features["income"]["kind"] == "numeric"
    assert features["income"]["stats"]["n"] == 200
    assert {b["label"] for b in features["city"]["histogram"]["bars"]} == {"<b>paris</b>", "lyon"}


def test_card_of_a_version_never_served_has_empty_history() -> None:
    document = card()
    assert (document["serving"], document["rollout"], document["drift"]) == ([], [], [])


def test_rollout_history_keeps_only_entries_naming_the_version_oldest_first() -> None:
    deployments = [
        deployment("credit", "credit", [
            entry("2025-10-09T09:00:00Z", "credit-v1", "StableSelected"),
            entry("2025-10-09T09:10:00Z", "credit-v2", "CanaryStarted"),
            entry("2025-10-09T09:20:00Z", "credit-v2", "Promoted"),
        ], stableVersion="credit-v2", phase="Promoted"),
        deployment("credit-eu", "credit", [
            entry("2025-10-09T09:15:00Z", "credit-v2", "RolledBack"),
        ], stableVersion="credit-v1", rejectedVersions=["credit-v2"], phase="RolledBack"),
    ]  # fmt: skip
    document = card(deployments=deployments)
    assert [(e["deployment"], e["event"]) for e in document["rollout"]] == [
        ("credit", "CanaryStarted"), ("credit-eu", "RolledBack"), ("credit", "Promoted"),
    ]  # fmt: skip
    assert document["serving"] == [
        {"deployment": "credit", "role": "stable", "phase": "Promoted", "weight": 100},
        {"deployment": "credit-eu", "role": "rejected", "phase": "RolledBack", "weight": None},
    ]


def test_a_canary_is_listed_with_its_weight_and_its_stable_with_the_rest() -> None:
    dep = deployment("credit", "credit", [], stableVersion="credit-v1",
                     canaryVersion="credit-v2", canaryWeight=10, phase="Progressing")  # fmt: skip
    assert card(deployments=[dep])["serving"] == [
        {"deployment": "credit", "role": "canary", "phase": "Progressing", "weight": 10}
    ]
    stable = card_document({**version(), "metadata": {"name": "credit-v1"}}, None,
                           deployments=[dep])  # fmt: skip
    assert stable["serving"][0]["weight"] == 90


def test_drift_history_keeps_monitors_whose_last_check_was_on_the_version() -> None:
    features = [
        {"name": "income", "method": "ks", "score": 0.2, "threshold": 0.05, "drifted": False},
        {"name": "city", "method": "chisquare", "score": 0.001, "threshold": 0.05,
         "drifted": True},
    ]  # fmt: skip
    monitors = [monitor("on-v2", "credit-v2", features=features), monitor("on-v1", "credit-v1")]
    (drift,) = card(monitors=monitors)["drift"]
    assert (drift["monitor"], drift["drifted"], drift["firings"]) == ("on-v2", "True", 3)
    assert [f["name"] for f in drift["features"]] == ["city", "income"]  # drifted first


def test_a_missing_profile_is_named_not_drawn() -> None:
    document = card_document(version(), None, profile_problem="profile.json does not exist")
    assert document["profile"] is None
    assert document["profileProblem"] == "profile.json does not exist"


def test_card_json_is_strict_even_when_a_statistic_is_not_finite() -> None:
    broken = profile()
    broken["features"]["income"]["std"] = math.nan
    document = card_document(version(), broken, generated_at=WHEN)
    json.dumps(document, allow_nan=False)
    income = next(f for f in document["profile"]["features"] if f["name"] == "income")
    assert "std" not in income["stats"]


# -- the page ---------------------------------------------------------------------------------


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = dict(attrs)
        if tag == "section" and found.get("data-section"):
            self.sections.append(str(found["data-section"]))

    def handle_data(self, data: str) -> None:
        self.text += data


def parsed(document: dict[str, Any]) -> Page:
    page = Page()
    page.feed(render_html(document))
    return page


def test_page_has_every_section_in_order() -> None:
    assert parsed(card()).sections == list(SECTIONS)


def test_page_escapes_what_users_wrote_and_has_no_script() -> None:
    page = parsed(card())
    assert "script" not in page.tags
    html = render_html(card())
    assert "&lt;b&gt;paris&lt;/b&gt;" in html and "<b>paris</b>" not in html
    assert "<b>paris</b>" in page.text  # the text a reader sees


def test_page_draws_one_histogram_per_feature_and_the_predictions() -> None:
    assert render_html(card()).count('<svg class="histogram"') == 3


def test_page_shows_the_fairness_groups() -> None:
    text = parsed(card()).text
    assert "selection_rate" in text and "favourable class 1" in text
    assert "demographic_parity_difference" in text


def test_page_of_an_unserved_version_says_so() -> None:
    text = parsed(card()).text
    assert "Not served yet." in text and "No DriftMonitor has checked this version." in text


# -- the card written at registration ---------------------------------------------------------


def test_write_card_puts_json_and_html_beside_the_model() -> None:
    store = MemoryStore()
    prof = json.dumps(profile()).encode()
    mv = copy.deepcopy(version())
    mv["spec"]["profile"] = {"uri": "s3://modelops/shop/credit/u/profile.json",
                             "sha256": sha256_hex(prof)}  # fmt: skip
    store.put(Location.parse(mv["spec"]["profile"]["uri"]), prof)
    refs = write_card(store, mv)
    assert refs["json"]["uri"] == "s3://modelops/shop/credit/u/card.json"
    assert refs["html"]["uri"] == "s3://modelops/shop/credit/u/card.html"
    for ref in refs.values():
        data = store.objects[ref["uri"]]
        assert (sha256_hex(data), len(data)) == (ref["sha256"], ref["size"])
    written = json.loads(store.objects[refs["json"]["uri"]])
    assert written["profile"]["nRows"] == 200


def test_write_card_with_an_altered_profile_names_the_mismatch() -> None:
    store = MemoryStore()
    mv = version()
    store.put(Location.parse(mv["spec"]["profile"]["uri"]), b"{}")  # not the digest recorded
    refs = write_card(store, mv)
    written = json.loads(store.objects[refs["json"]["uri"]])
    assert written["profile"] is None
    assert "expected " + "b" * 64 in written["profileProblem"]
