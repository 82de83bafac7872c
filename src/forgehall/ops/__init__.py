"""Operations surface: liveness, readiness and internal maintenance jobs."""
