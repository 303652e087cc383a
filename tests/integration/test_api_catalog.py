"""The catalog and operations endpoints, exactly as API.md shows them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import uuid4

from fastapi.testclient import TestClient

from plasmaart.catalog import Catalog
from plasmaart.clock import ManualClock
from plasmaart.db.migrate import head_revision
from plasmaart.generation.errors import ModelNotInPlan
from plasmaart.generation.service import GenerationRequest
from plasmaart.platform import Platform
from tests.support.accounts import make_user

PROBLEM = "application/problem+json"


def test_healthz_and_readyz(client: TestClient, platform: Platform) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "database": platform.db.dialect,
        "migration": head_revision(),
        "degraded": [],
    }


def test_readyz_refuses_an_unmigrated_database(client: TestClient, platform: Platform) -> None:
    with platform.db.write() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'old'")
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["code"] == "not_ready"
    assert "plasmaart migrate" in answer.json()["detail"]


def test_models_list_the_policy_catalog(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["next_cursor"] is None
    models = {m["id"]: m for m in body["data"]}
    assert len(models) == 19
    schnell = models["flux-schnell"]
    assert {k: schnell[k] for k in ("name", "kind", "credits", "max_outputs", "tier")} == {
        "name": "Flux Schnell",
        "kind": "text-to-image",
        "credits": 1,
        "max_outputs": 4,
        "tier": "image",
    }
    # Without authentication, availability is the Free plan's.
    assert schnell["available"] is True
    assert schnell["required_plan"] == "free"
    veo = models["veo3"]
    assert (veo["credits"], veo["available"], veo["required_plan"]) == (800, False, "pro")
    pixverse = models["pixverse-v4.5-i2v"]
    assert (pixverse["kind"], pixverse["inputs"]["image"], pixverse["required_plan"]) == (
        "image-to-video",
        "required",
        "starter",
    )
    for model in models.values():
        assert set(model) >= {
            "id",
            "name",
            "kind",
            "credits",
            "max_outputs",
            "tier",
            "inputs",
            "available",
            "required_plan",
            "early_access",
            "upcoming_change",
        }


def test_models_carry_a_description_and_labelled_params(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    for model in models.values():
        assert model["description"], model["id"]
        for name, param in model["inputs"]["params"].items():
            assert param["label"], (model["id"], name)
            assert param["help"], (model["id"], name)
    # The two Veo 3 listings, same price, each saying what it is.
    google, veo3 = models["google-veo3"], models["veo3"]
    assert google["credits"] == veo3["credits"] == 800
    assert google["description"] != veo3["description"]
    assert "Google Veo3" in veo3["description"]
    steps = models["flux-dev"]["inputs"]["params"]["num_inference_steps"]
    assert steps == {
        "type": "integer",
        "label": "Steps",
        "help": "More steps add detail and take longer.",
        "enum": None,
        "minimum": 1,
        "maximum": 50,
        "max_length": None,
        "default": 28,
    }
    one = client.get("/v1/models/veo3").json()
    assert one["description"] == veo3["description"]
    assert one["inputs"]["params"]["duration_s"]["label"] == "Duration (seconds)"


def test_a_model_by_id_or_by_the_policy_spelling(client: TestClient) -> None:
    assert client.get("/v1/models/kling-video-v2.1").json()["credits"] == 280
    assert client.get("/v1/models/flux-scnell").json()["id"] == "flux-schnell"
    missing = client.get("/v1/models/dall-e")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM
    assert missing.json()["code"] == "not_found"


def test_plans(client: TestClient) -> None:
    plans = {p["id"]: p for p in client.get("/v1/plans").json()["data"]}
    assert list(plans) == ["free", "starter", "pro", "studio"]
    assert [(p["price_cents"], p["monthly_credits"]) for p in plans.values()] == [
        (0, 0),
        (1900, 2000),
        (4900, 5000),
        (9900, 11000),
    ]
    studio = plans["studio"]
    assert studio["currency"] == "usd"
    assert studio["team_seats"] == 5
    assert studio["concurrency"] == {"jobs": 8, "video_jobs": 4}
    assert studio["queue_class"] == "priority_gpu"
    assert "Custom watermark removal option" in studio["features"]
    assert plans["starter"]["model_tiers"] == ["image", "video-medium"]
    assert all(p["rollover_cap"] == 0 for p in plans.values())


def test_credit_packs(client: TestClient) -> None:
    packs = client.get("/v1/credit-packs").json()["data"]
    assert [(p["credits"], p["price_cents"], p["currency"]) for p in packs] == [
        (1000, 1200, "usd"),
        (3000, 3300, "usd"),
        (10000, 10000, "usd"),
    ]


def test_cursor_pagination_walks_every_model_once(client: TestClient) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, str | int] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/models", params=params).json()
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 19


def test_bad_query_is_invalid_input(client: TestClient) -> None:
    answer = client.get("/v1/models", params={"limit": 500})
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "invalid_input"
    assert body["errors"][0]["field"] == "limit"
    assert client.get("/v1/models", params={"cursor": "%%%"}).json()["code"] == "invalid_input"


def test_unknown_path_and_method_are_problems(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["code"] == "not_found"
    wrong = client.post("/v1/models")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == PROBLEM


def test_metrics_count_requests_by_route(client: TestClient) -> None:
    client.get("/v1/models/veo3")
    text = client.get("/metrics").text
    assert (
        'plasmaart_http_requests_total{method="GET",route="/v1/models/{model_id}",status="200"} 1.0'
        in text
    )
    assert "plasmaart_build_info" in text


def test_openapi_documents_the_catalog(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/plans",
        "/v1/credit-packs",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)


def test_availability_follows_the_callers_plan(client: TestClient, platform: Platform) -> None:
    starter = make_user(platform, "s@example.com", plan="starter")
    pro = make_user(platform, "p@example.com", plan="pro")

    def available(headers: dict[str, str]) -> set[str]:
        models = client.get("/v1/models", headers=headers).json()["data"]
        return {m["id"] for m in models if m["available"]}

    free, starter_models, pro_models = available({}), available(starter.auth), available(pro.auth)
    assert "flux-schnell" in free
    assert "pixverse-v4.5" not in free
    assert "pixverse-v4.5" in starter_models
    assert "veo3" not in starter_models
    assert "veo3" in pro_models
    assert len(pro_models) == 19
    assert client.get("/v1/models/veo3", headers=pro.auth).json()["available"] is True
    bad = client.get("/v1/models", headers={"Authorization": "Bearer pa_live_wrong"})
    assert bad.status_code == 401


def test_openapi_documents_problem_responses(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail", "code"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
    me = document["paths"]["/v1/me"]["get"]["responses"]
    assert {"200", "401", "403", "404", "422", "500"} <= set(me)
    ready = document["paths"]["/readyz"]["get"]["responses"]
    assert "503" in ready


# -- plan cards: what a plan lists is what a submission accepts ------------------


def accepted_models(platform: Platform, plan: dict[str, Any], catalog: Catalog) -> list[str]:
    """Every model of ``catalog`` that a submission by a fresh subscriber of
    ``plan`` accepts, in catalog order (a refusal must be ``model_not_in_plan``)."""
    user = make_user(
        platform,
        f"{plan['id']}-{uuid4().hex[:8]}@example.com",
        plan=plan["id"] if plan["price_cents"] else None,
        credits=100_000,
    )
    accepted: list[str] = []
    for model in catalog.models:
        image = "https://example.com/input.png" if model.inputs.image == "required" else None
        request = GenerationRequest(model.id, "a lighthouse at dusk", image_url=image)
        try:
            with platform.db.write() as conn:
                platform.generations.submit(conn, platform.accounts.get(conn, user.id), request)
        except ModelNotInPlan:
            continue
        accepted.append(model.id)
    return accepted


def test_each_plan_lists_exactly_the_models_a_submission_accepts(
    client: TestClient, platform: Platform
) -> None:
    plans = client.get("/v1/plans").json()["data"]
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
    for plan in plans:
        assert plan["models"] == accepted_models(platform, plan, catalog), plan["id"]
    listed = {plan["id"]: plan for plan in plans}
    # Starter's own words promise "All models"; its list says which, and keeps
    # the words beside it.
    starter = listed["starter"]
    assert "Access: All models" in starter["features"]
    assert "pixverse-v4.5" in starter["models"]
    assert {"veo3", "google-veo3", "kling-video-v2.1"}.isdisjoint(starter["models"])
    assert len(listed["free"]["models"]) == 7
    assert len(listed["pro"]["models"]) == len(listed["studio"]["models"]) == 19


def test_plan_lists_follow_the_catalog_in_force(
    client: TestClient, platform: Platform, clock: ManualClock
) -> None:
    admin = make_user(platform, "admin@example.com", admin=True)
    effective = clock.now() + timedelta(days=15)
    for change in (
        {"target": "model", "id": "wan-pro", "field": "available", "value": False},
        {"target": "plan", "id": "starter", "field": "model_tiers", "value": ["image"]},
    ):
        made = client.post(
            "/v1/admin/catalog/changes",
            json={**change, "effective_at": effective.isoformat()},
            headers=admin.auth,
        )
        assert made.status_code == 201, made.text
    before = {p["id"]: p["models"] for p in client.get("/v1/plans").json()["data"]}
    assert "wan-pro" in before["pro"]
    assert "pixverse-v4.5" in before["starter"]

    clock.set(effective + timedelta(hours=1))
    plans = client.get("/v1/plans").json()["data"]
    with platform.db.read() as conn:
        catalog = platform.catalogs.now(conn)
    for plan in plans:
        assert plan["models"] == accepted_models(platform, plan, catalog), plan["id"]
    after = {plan["id"]: plan["models"] for plan in plans}
    assert all("wan-pro" not in models for models in after.values())
    assert after["starter"] == after["free"]
