"""GET /v1/providers: the chain in the order the router uses it, with live state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter

from api.deps import OwnerDep, RuntimeDep
from api.schemas import BucketPublic, ProviderList, ProviderPublic
from masterplan.db.models import utcnow
from masterplan.settings import provider_chain

router = APIRouter(prefix="/v1/providers", tags=["providers"])


@router.get("", response_model=ProviderList)
def providers(_: OwnerDep, rt: RuntimeDep) -> ProviderList:
    chain = provider_chain(rt.settings)
    router_ = rt.router
    states = router_.cooldowns.snapshot(chain)
    now = utcnow()
    out = []
    for i, name in enumerate(chain):
        cfg = rt.settings.provider(name)
        st = states[name]
        bucket = None
        if router_.limiter.limits_for(name) is not None:
            b = router_.limiter.status(name)
            resets = b.day_resets_at_ms
            bucket = BucketPublic(
                tokens=b.tokens, token_capacity=b.token_capacity, requests=b.requests,
                request_capacity=b.request_capacity, wait_ms=b.wait_ms,
                tokens_today=b.tokens_today, token_day_capacity=b.token_day_capacity,
                requests_today=b.requests_today, request_day_capacity=b.request_day_capacity,
                day_resets_at=None if resets is None else datetime.fromtimestamp(resets / 1000, UTC),
            )
        out.append(ProviderPublic(
            position=i, name=name, kind=cfg.kind, model=cfg.model,
            configured=cfg.kind == "stub" or cfg.has_key or cfg.base_url is not None,
            cooldown_until=now + timedelta(milliseconds=st.cooling_ms) if st.cooling_ms else None,
            cooldown_reason=f"{st.kind}: {st.reason}" if st.kind else None,
            circuit=st.circuit,
            consecutive_failures=st.failures, bucket=bucket, tpm=cfg.tpm, rpm=cfg.rpm,
        ))
    return ProviderList(chain=chain, providers=out)
