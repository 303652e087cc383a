"""The seed catalog holds the policy's numbers; bad catalogs are refused with a
message naming the field; access, pricing and param rules; the table render."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from plasmaart.catalog import (
    DEFAULT_CATALOG_PATH,
    Catalog,
    CatalogError,
    ParamSpec,
    catalog_from_dict,
    load_catalog,
    param_errors,
    plan_allows_model,
    plan_models,
    queue_boost_seconds,
    quote_credits,
    render_catalog,
    required_plan,
)

# DESIGN.md §2, copied by hand: id | name | kind | credits per output | tier | max outputs.
MODEL_TABLE = """
flux-schnell         | Flux Schnell                      | text-to-image  |   1 | image         | 4
flux-pro-kontext     | Flux Pro Kontext                  | text-to-image  |   8 | image         | 4
flux-pro-v1.1        | Flux Pro v1.1                     | text-to-image  |   8 | image         | 4
flux-dev             | Flux Dev                          | text-to-image  |   5 | image         | 4
imagen4-preview      | Imagen4 Preview                   | text-to-image  |   8 | image         | 4
seedream-v3          | Seedream v3                       | text-to-image  |   6 | image         | 4
sd3-medium           | Stable Diffusion v3 Medium        | text-to-image  |   7 | image         | 4
google-veo3          | Google Veo3                       | text-to-video  | 800 | video-premium | 1
veo3                 | Veo3                              | text-to-video  | 800 | video-premium | 1
kling-video-v2.1     | Kling Video v2.1                  | text-to-video  | 280 | video-premium | 1
pixverse-v4.5        | Pixverse v4.5                     | text-to-video  |  80 | video-medium  | 1
hailuo-02-pro        | Hailuo-02 Pro                     | text-to-video  | 100 | video-medium  | 1
seedance-v1-pro      | Seedance v1 Pro                   | text-to-video  | 140 | video-medium  | 1
wan-pro              | Wan Pro                           | text-to-video  |  80 | video-medium  | 1
kling-video-v2.1-i2v | Kling Video v2.1 (Image-to-Video) | image-to-video | 280 | video-premium | 1
pixverse-v4.5-i2v    | Pixverse v4.5 (Image-to-Video)    | image-to-video |  80 | video-medium  | 1
hailuo-02-pro-i2v    | Hailuo-02 Pro (Image-to-Video)    | image-to-video | 100 | video-medium  | 1
seedance-v1-pro-i2v  | Seedance v1 Pro (Image-to-Video)  | image-to-video | 140 | video-medium  | 1
wan-pro-i2v          | Wan Pro (Image-to-Video)          | image-to-video |  80 | video-medium  | 1
"""
EXPECTED_MODELS = [
    (id_, name, kind, int(credits), tier, int(max_outputs))
    for id_, name, kind, credits, tier, max_outputs in (
        [cell.strip() for cell in line.split("|")] for line in MODEL_TABLE.strip().splitlines()
    )
]
IMAGE_MODEL_IDS = {row[0] for row in EXPECTED_MODELS if row[4] == "image"}

ALL_TIERS = ("image", "video-medium", "video-premium")
EXPECTED_PLANS: dict[str, dict[str, Any]] = {
    "free": {
        "name": "Free",
        "price_cents": 0,
        "monthly_credits": 0,
        "model_tiers": ("image",),
        "queue_class": "standard",
        "early_access": False,
        "commercial_license": False,
        "watermark_removable": False,
        "team_seats": 1,
        "concurrency": {"jobs": 1, "video_jobs": 0},
        "max_queued_jobs": 10,
        "requests_per_minute": 10,
        "rollover_cap": 0,
    },
    "starter": {
        "name": "Starter",
        "price_cents": 1900,
        "monthly_credits": 2000,
        "model_tiers": ("image", "video-medium"),
        "queue_class": "priority",
        "early_access": False,
        "commercial_license": False,
        "watermark_removable": False,
        "team_seats": 1,
        "concurrency": {"jobs": 2, "video_jobs": 1},
        "max_queued_jobs": 25,
        "requests_per_minute": 30,
        "rollover_cap": 0,
    },
    "pro": {
        "name": "Pro",
        "price_cents": 4900,
        "monthly_credits": 5000,
        "model_tiers": ALL_TIERS,
        "queue_class": "priority",
        "early_access": True,
        "commercial_license": True,
        "watermark_removable": False,
        "team_seats": 1,
        "concurrency": {"jobs": 4, "video_jobs": 2},
        "max_queued_jobs": 50,
        "requests_per_minute": 60,
        "rollover_cap": 0,
    },
    "studio": {
        "name": "Studio",
        "price_cents": 9900,
        "monthly_credits": 11000,
        "model_tiers": ALL_TIERS,
        "queue_class": "priority_gpu",
        "early_access": True,
        "commercial_license": True,
        "watermark_removable": True,
        "team_seats": 5,
        "concurrency": {"jobs": 8, "video_jobs": 4},
        "max_queued_jobs": 100,
        "requests_per_minute": 120,
        "rollover_cap": 0,
    },
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def seed_data() -> dict[str, Any]:
    """A fresh, mutable copy of the seed catalog's raw data."""
    with DEFAULT_CATALOG_PATH.open("rb") as file:
        return tomllib.load(file)


def rejection(data: dict[str, Any]) -> str:
    with pytest.raises(CatalogError) as caught:
        catalog_from_dict(data, source="test.toml")
    return str(caught.value)


# ---------------------------------------------------------------- seed values


def test_seed_catalog_has_every_model_plan_and_pack(catalog: Catalog) -> None:
    assert catalog.currency == "usd"
    assert [model.id for model in catalog.models] == [row[0] for row in EXPECTED_MODELS]
    assert [plan.id for plan in catalog.plans] == list(EXPECTED_PLANS)
    assert [pack.id for pack in catalog.credit_packs] == ["pack-1000", "pack-3000", "pack-10000"]


@pytest.mark.parametrize(
    ("model_id", "name", "kind", "credits", "tier", "max_outputs"), EXPECTED_MODELS
)
def test_seed_model_matches_the_policy(
    catalog: Catalog,
    model_id: str,
    name: str,
    kind: str,
    credits: int,
    tier: str,
    max_outputs: int,
) -> None:
    model = catalog.model(model_id)
    assert (model.id, model.name, model.kind, model.credits, model.tier, model.max_outputs) == (
        model_id,
        name,
        kind,
        credits,
        tier,
        max_outputs,
    )
    assert model.available
    assert not model.early_access
    assert model.provider_model.startswith("fal-ai/")
    # Kontext edits an input image when one is given.
    expected_image = (
        "required"
        if kind == "image-to-video"
        else "optional"
        if model_id == "flux-pro-kontext"
        else "none"
    )
    assert model.inputs.image == expected_image


@pytest.mark.parametrize("plan_id", EXPECTED_PLANS)
def test_seed_plan_matches_design(catalog: Catalog, plan_id: str) -> None:
    expected = EXPECTED_PLANS[plan_id]
    assert catalog.plan(plan_id).model_dump(include=set(expected)) == expected


def test_plan_features_keep_the_policy_wording(catalog: Catalog) -> None:
    assert catalog.plan("starter").features == (
        "Access: All models",
        "Includes medium-tier video generation models",
        "Priority generation queue",
    )
    assert catalog.plan("pro").features == (
        "All models including veo3 and kling-video",
        "Early access to new features",
        "Commercial license for generated content",
    )
    assert catalog.plan("studio").features == (
        "Full model suite with priority GPU allocation",
        "Extended video generation limits",
        "Team collaboration support",
        "Custom watermark removal option",
    )
    assert catalog.plan("free").features


def test_seed_credit_packs(catalog: Catalog) -> None:
    packs = [(p.id, p.credits, p.price_cents, p.expires_after_days) for p in catalog.credit_packs]
    assert packs == [
        ("pack-1000", 1000, 1200, None),
        ("pack-3000", 3000, 3300, None),
        ("pack-10000", 10000, 10000, None),
    ]
    assert catalog.pack("pack-3000").credits == 3000


def test_seed_queue_boosts(catalog: Catalog) -> None:
    boosts = {plan.id: queue_boost_seconds(catalog, plan) for plan in catalog.plans}
    assert boosts == {"free": 0, "starter": 30, "pro": 30, "studio": 60}
    assert catalog.queue.reserved_gpu_slots == 1


def test_lookups(catalog: Catalog) -> None:
    assert catalog.default_plan.id == "free"
    assert [plan.id for plan in catalog.plans_by_price()] == ["free", "starter", "pro", "studio"]
    with pytest.raises(KeyError):
        catalog.plan("enterprise")
    with pytest.raises(KeyError):
        catalog.pack("pack-5")
    with pytest.raises(KeyError):
        catalog.model("flux")


@pytest.mark.parametrize("name", ["Flux Scnell", "flux-scnell", "flux scnell", " FLUX-SCHNELL "])
def test_policy_spelling_resolves_to_flux_schnell(catalog: Catalog, name: str) -> None:
    assert catalog.model(name).id == "flux-schnell"


# ---------------------------------------------------------------- access


def test_free_plan_allows_image_models_only(catalog: Catalog) -> None:
    free = catalog.plan("free")
    allowed = {model.id for model in catalog.models if plan_allows_model(free, model)}
    assert allowed == IMAGE_MODEL_IDS


def test_starter_cannot_use_premium_video(catalog: Catalog) -> None:
    starter = catalog.plan("starter")
    veo3 = catalog.model("veo3")
    assert not plan_allows_model(starter, veo3)
    assert plan_allows_model(catalog.plan("pro"), veo3)
    assert plan_allows_model(starter, catalog.model("pixverse-v4.5-i2v"))


@pytest.mark.parametrize(
    ("model_id", "plan_id"),
    [
        ("flux-schnell", "free"),
        ("pixverse-v4.5", "starter"),
        ("wan-pro-i2v", "starter"),
        ("veo3", "pro"),
        ("kling-video-v2.1", "pro"),
        ("kling-video-v2.1-i2v", "pro"),
    ],
)
def test_required_plan_is_the_cheapest_that_allows(
    catalog: Catalog, model_id: str, plan_id: str
) -> None:
    plan = required_plan(catalog, catalog.model(model_id))
    assert plan is not None
    assert plan.id == plan_id


def test_plan_order_comes_from_price_not_file_order() -> None:
    data = seed_data()
    data["plans"].reverse()
    reversed_catalog = catalog_from_dict(data)
    by_price = [plan.id for plan in reversed_catalog.plans_by_price()]
    assert by_price == ["free", "starter", "pro", "studio"]
    plan = required_plan(reversed_catalog, reversed_catalog.model("pixverse-v4.5"))
    assert plan is not None
    assert plan.id == "starter"


def test_early_access_model_needs_an_early_access_plan(catalog: Catalog) -> None:
    early = catalog.model("flux-schnell").model_copy(update={"early_access": True})
    assert not plan_allows_model(catalog.plan("free"), early)
    assert not plan_allows_model(catalog.plan("starter"), early)
    assert plan_allows_model(catalog.plan("studio"), early)
    plan = required_plan(catalog, early)
    assert plan is not None
    assert plan.id == "pro"


def test_unavailable_model_is_allowed_by_no_plan(catalog: Catalog) -> None:
    withdrawn = catalog.model("flux-dev").model_copy(update={"available": False})
    assert not any(plan_allows_model(plan, withdrawn) for plan in catalog.plans)
    assert required_plan(catalog, withdrawn) is None


def test_plan_models_are_exactly_what_the_access_rule_allows(catalog: Catalog) -> None:
    # "Access: All models" is Starter's wording; its list is image and medium video.
    starter = [m.id for m in plan_models(catalog, catalog.plan("starter"))]
    assert starter == [m.id for m in catalog.models if m.tier in ("image", "video-medium")]
    assert "veo3" not in starter
    assert "kling-video-v2.1" not in starter
    data = catalog.model_dump()
    for model in data["models"]:
        if model["id"] in ("flux-dev", "wan-pro"):
            model["available"] = False
        if model["id"] == "seedream-v3":
            model["early_access"] = True
    changed = catalog_from_dict(data)
    for plan in changed.plans:
        listed = plan_models(changed, plan)
        assert list(listed) == [m for m in changed.models if plan_allows_model(plan, m)]
        assert {"flux-dev", "wan-pro"}.isdisjoint(m.id for m in listed)
        assert ("seedream-v3" in {m.id for m in listed}) == plan.early_access


# ---------------------------------------------------------------- pricing and params


@pytest.mark.parametrize(
    ("model_id", "outputs", "credits"),
    [("flux-schnell", 4, 4), ("flux-dev", 3, 15), ("seedream-v3", 1, 6), ("veo3", 1, 800)],
)
def test_quote_is_credits_times_outputs(
    catalog: Catalog, model_id: str, outputs: int, credits: int
) -> None:
    assert quote_credits(catalog.model(model_id), outputs) == credits


@pytest.mark.parametrize(("model_id", "outputs"), [("flux-dev", 0), ("flux-dev", 5), ("veo3", 2)])
def test_quote_refuses_outputs_the_model_cannot_make(
    catalog: Catalog, model_id: str, outputs: int
) -> None:
    with pytest.raises(ValueError, match="outputs per request"):
        quote_credits(catalog.model(model_id), outputs)


def test_valid_params_pass(catalog: Catalog) -> None:
    params = {"aspect_ratio": "16:9", "seed": 4294967295, "num_inference_steps": 28}
    assert param_errors(catalog.model("flux-dev"), params) == []
    # An integer is a valid number.
    assert param_errors(catalog.model("flux-dev"), {"guidance_scale": 7}) == []
    assert param_errors(catalog.model("veo3"), {"duration_s": 8, "generate_audio": False}) == []


@pytest.mark.parametrize(
    ("model_id", "params", "expected"),
    [
        ("flux-dev", {"seed": -1}, [("params.seed", "must be at least 0")]),
        ("flux-dev", {"seed": 2**32}, [("params.seed", "must be at most 4294967295")]),
        ("flux-dev", {"seed": 10**400}, [("params.seed", "must be at most 4294967295")]),
        ("flux-dev", {"seed": True}, [("params.seed", "must be an integer")]),
        (
            "flux-dev",
            {"guidance_scale": float("nan")},
            [("params.guidance_scale", "must be a finite number")],
        ),
        ("flux-dev", {"seed": 1.5}, [("params.seed", "must be an integer")]),
        ("flux-dev", {"guidance_scale": "7"}, [("params.guidance_scale", "must be a number")]),
        ("flux-dev", {"duration_s": 5}, [("params.duration_s", "is not a parameter of flux-dev")]),
        ("veo3", {"duration_s": 5}, [("params.duration_s", "must be one of 8")]),
        ("veo3", {"generate_audio": 1}, [("params.generate_audio", "must be true or false")]),
        (
            "flux-schnell",
            {"aspect_ratio": "2:1"},
            [("params.aspect_ratio", "must be one of '1:1', '16:9', '9:16', '4:3', '3:4'")],
        ),
        (
            "sd3-medium",
            {"negative_prompt": "x" * 1001},
            [("params.negative_prompt", "must be at most 1000 characters")],
        ),
    ],
)
def test_invalid_params_are_named(
    catalog: Catalog, model_id: str, params: dict[str, object], expected: list[tuple[str, str]]
) -> None:
    assert param_errors(catalog.model(model_id), params) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"type": "integer", "max_length": 3}, "max_length applies to strings"),
        ({"type": "string", "minimum": 1}, "minimum and maximum apply to numbers"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum 5 is above maximum 1"),
        ({"type": "integer", "enum": [5, "10"]}, "enum value '10' must be an integer"),
        ({"type": "integer", "enum": [5, 10], "default": 8}, "default 8 must be one of 5, 10"),
        ({"type": "boolean", "enum": [True]}, "enum does not apply to boolean"),
    ],
)
def test_inconsistent_param_spec_is_refused(spec: dict[str, Any], reason: str) -> None:
    data = seed_data()
    data["models"][0]["params"]["bad"] = {"label": "Bad", "help": "A bad parameter.", **spec}
    assert f"models[0].params.bad: {reason}" in rejection(data)


def test_param_spec_default_within_bounds_is_accepted() -> None:
    spec = ParamSpec(
        type="integer", label="Steps", help="More steps.", minimum=1, maximum=12, default=4
    )
    assert spec.violation(12) is None
    assert spec.violation(13) == "must be at most 12"


def test_every_param_has_a_human_label_and_help(catalog: Catalog) -> None:
    for model in catalog.models:
        for name, spec in model.params.items():
            # A label is words for people, not the parameter's name.
            assert spec.label, (model.id, name)
            assert "_" not in spec.label, (model.id, name)
            assert spec.help.endswith("."), (model.id, name)
    steps = catalog.model("flux-dev").params["num_inference_steps"]
    assert (steps.label, steps.help) == ("Steps", "More steps add detail and take longer.")
    assert catalog.model("veo3").params["duration_s"].label == "Duration (seconds)"


@pytest.mark.parametrize("missing", ["label", "help"])
def test_a_param_without_label_or_help_is_refused(missing: str) -> None:
    data = seed_data()
    del data["models"][0]["params"]["seed"][missing]
    assert f"models[0].params.seed.{missing}: Field required" in rejection(data)


def test_every_model_has_its_own_description(catalog: Catalog) -> None:
    descriptions = [model.description for model in catalog.models]
    assert all(descriptions)
    assert len(set(descriptions)) == len(descriptions)
    # The policy lists both at 800 credits; each says what it is.
    google, veo3 = catalog.model("google-veo3"), catalog.model("veo3")
    assert "Veo 3" in google.description
    assert "Veo 3" in veo3.description
    assert "Veo3" in google.description
    assert "Google Veo3" in veo3.description


def test_a_model_without_description_is_refused() -> None:
    data = seed_data()
    del data["models"][1]["description"]
    assert "models[1].description: Field required" in rejection(data)


# ---------------------------------------------------------------- bad catalogs


def write_seed_with(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_CATALOG_PATH.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} must occur once in the seed file"
    path = tmp_path / "catalog.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_negative_credits_rejected_with_file_field_and_reason(tmp_path: Path) -> None:
    # flux-dev, the fourth model, is the only one that costs 5 credits.
    path = write_seed_with(tmp_path, "\ncredits = 5\n", "\ncredits = -5\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert str(caught.value) == (
        f"catalog file {path}: models[3].credits: Input should be greater than 0"
    )


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write_seed_with(tmp_path, 'currency = "usd"', "currency = ")
    with pytest.raises(CatalogError, match="TOML syntax error") as caught:
        load_catalog(path)
    assert str(caught.value).startswith(f"catalog file {path}: TOML syntax error: ")
    assert "line 9" in str(caught.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(CatalogError, match="cannot be read") as caught:
        load_catalog(path)
    assert str(path) in str(caught.value)


def test_every_problem_gets_its_own_line() -> None:
    data = seed_data()
    data["models"][0]["credits"] = 0
    data["credit_packs"][2]["price_cents"] = -1
    assert rejection(data).splitlines() == [
        "catalog file test.toml: models[0].credits: Input should be greater than 0",
        "catalog file test.toml: credit_packs[2].price_cents: "
        "Input should be greater than or equal to 0",
    ]


def _set(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("models", 5, "id"),
            "flux-dev",
            "models: id or alias 'flux-dev' is used twice: "
            "by models[3] (flux-dev) and models[5] (flux-dev)",
        ),
        (
            ("models", 1, "aliases"),
            ["FLUX-DEV"],
            "models: id or alias 'flux-dev' is used twice: "
            "by models[1] (flux-pro-kontext) and models[3] (flux-dev)",
        ),
        (
            ("plans", 1, "model_tiers"),
            ["image", "video-mid"],
            "plans[1].model_tiers[1]: Input should be 'image', 'video-medium' or 'video-premium'",
        ),
        (
            ("models", 8, "tier"),
            "premium",
            "models[8].tier: Input should be 'image', 'video-medium' or 'video-premium'",
        ),
        (("models", 0, "colour"), "red", "models[0].colour: Extra inputs are not permitted"),
        (("queue", "rush"), 5, "queue.rush: Extra inputs are not permitted"),
        (("models", 2, "credits"), "8", "models[2].credits: Input should be a valid integer"),
        (("plans", 3, "team_seats"), True, "plans[3].team_seats: Input should be a valid integer"),
        (
            ("plans", 1, "concurrency"),
            {"jobs": 1, "video_jobs": 2},
            "plans[1].concurrency: video_jobs 2 is more than jobs 1",
        ),
        (
            ("models", 14, "inputs"),
            {"image": "none"},
            'models[14]: image-to-video models need inputs.image = "required"',
        ),
        (
            ("models", 0, "tier"),
            "video-medium",
            "models[0]: a text-to-image model cannot be in tier 'video-medium'",
        ),
        (
            ("plans", 1, "concurrency"),
            {"jobs": 2, "video_jobs": 0},
            "plans[1]: a plan with video tiers needs concurrency.video_jobs >= 1",
        ),
        (("models", 0, "max_outputs"), 0, "models[0].max_outputs: Input should be greater than 0"),
        (("plans", 2, "id"), "starter", "plans: duplicate plan id: starter"),
        (
            ("credit_packs", 1, "id"),
            "pack-1000",
            "credit_packs: duplicate credit pack id: pack-1000",
        ),
        (
            ("plans", 0, "id"),
            "basic",
            "plans: exactly one plan must cost 0 and have id 'free'; found: basic",
        ),
        (
            ("plans", 1, "price_cents"),
            0,
            "plans: exactly one plan must cost 0 and have id 'free'; found: free, starter",
        ),
        (
            ("queue", "boost_seconds"),
            {"standard": 0, "priority": 30},
            "queue.boost_seconds: no boost for queue class priority_gpu",
        ),
        (
            ("queue", "boost_seconds"),
            {"standard": 30, "priority": 0, "priority_gpu": 60},
            "queue.boost_seconds: boosts must not decrease from class to class",
        ),
    ],
)
def test_bad_catalog_is_rejected_with_field_and_reason(
    path: tuple[str | int, ...], value: Any, message: str
) -> None:
    data = seed_data()
    _set(data, path, value)
    assert f"catalog file test.toml: {message}" in rejection(data)


def test_missing_free_plan_is_rejected() -> None:
    data = seed_data()
    del data["plans"][0]
    assert rejection(data) == (
        "catalog file test.toml: plans: "
        "exactly one plan must cost 0 and have id 'free'; found: none"
    )


def test_missing_required_field_is_rejected() -> None:
    data = seed_data()
    del data["models"][4]["credits"]
    assert rejection(data) == "catalog file test.toml: models[4].credits: Field required"


# ---------------------------------------------------------------- render


def test_render_lists_every_model_plan_and_pack(catalog: Catalog) -> None:
    text = render_catalog(catalog)
    for model in catalog.models:
        assert f"\n{model.id} " in text
    for plan in catalog.plans:
        assert f" {plan.name} " in text
    for pack in catalog.credit_packs:
        assert f"\n{pack.id} " in text
    assert "$19.00/month" in text
    assert "$100.00" in text
    assert "2 / 1" in text
    assert "11,000" in text


def test_render_aligns_columns(catalog: Catalog) -> None:
    lines = render_catalog(catalog).splitlines()
    header = lines[1]
    tier_column = header.index("tier")
    rows = lines[3 : 3 + len(catalog.models)]
    assert [row[tier_column:].split()[0] for row in rows] == [row[4] for row in EXPECTED_MODELS]
    # Numbers are right-aligned under their header.
    credits_end = header.index("credits") + len("credits")
    assert all(
        row[:credits_end].endswith(f"{expected[3]:,}")
        for row, expected in zip(rows, EXPECTED_MODELS, strict=True)
    )
    plan_column = header.index("required plan")
    assert [row[plan_column:] for row in rows[:2]] == ["free", "free"]
    assert rows[7][plan_column:] == "pro"


# ---------------------------------------------------------------- dependencies


def test_catalog_imports_no_web_or_database_library() -> None:
    code = (
        "import sys, plasmaart.catalog\n"
        "bad = {'fastapi', 'starlette', 'jinja2', 'sqlalchemy'} & set(sys.modules)\n"
        "print(sorted(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
