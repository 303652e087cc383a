"""The generation's refusals, with the codes of API.md."""

from __future__ import annotations

from plasmaart.errors import DomainError, NotFound


class ModelNotInPlan(DomainError):
    code = "model_not_in_plan"
    status = 403
    title = "Model not in your plan"

    def __init__(
        self,
        model: str,
        plan: str,
        required_plan: str | None,
        required_plan_name: str | None = None,
    ) -> None:
        # The detail names the plan as people see it ("Starter includes it");
        # ``required_plan`` keeps the id a program acts on.
        includes = required_plan_name or required_plan
        cheapest = f"; {includes} includes it" if includes else ""
        super().__init__(
            f"{model} is not part of the {plan} plan{cheapest}", required_plan=required_plan
        )


class ConcurrencyLimit(DomainError):
    code = "concurrency_limit"
    status = 429
    title = "Too many queued generations"


class GenerationNotFound(NotFound):
    pass
