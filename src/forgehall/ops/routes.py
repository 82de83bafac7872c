from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from forgehall.core.deps import DatabaseDep
from forgehall.ops.schemas import Liveness, Readiness
from forgehall.ops.service import check_readiness

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Liveness, summary="Liveness: the process answers")
async def read_health() -> Liveness:
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database reachable and schema current",
    responses={503: {"model": Readiness, "description": "A dependency is not ready"}},
)
@router.get("/healthz", response_model=Readiness, include_in_schema=False)
async def read_readiness(db: DatabaseDep) -> JSONResponse:
    readiness = await check_readiness(db)
    return JSONResponse(readiness.model_dump(), status_code=200 if readiness.ready else 503)
