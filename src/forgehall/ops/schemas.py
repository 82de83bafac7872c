from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="Each dependency and `ok`, or what is wrong with it.",
        examples=[{"db": "ok", "migrations": "ok"}],
    )

    @property
    def ready(self) -> bool:
        return self.status == "ok"
