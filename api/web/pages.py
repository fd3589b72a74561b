"""The page routes: `/`, `/jobs/{id}`, `/interviews/{id}`, the fragments the pages' script
fetches, `/static`.

One renderer serves both ways of seeing a job. When the server can read the job itself
(AUTH_DISABLED=true, as `masterplan dev` runs) the page arrives whole, readable without
JavaScript. Otherwise the browser holds the API key, and the page's script fetches the same
HTML as a fragment, authenticated exactly like the v1 routes (`Authorization: Bearer`), and
fetches it again at each event of the job's stream. A key never goes in a URL. An interview's
page works the same way: whole when the server can read it, else a shell that fetches
`/fragments/interviews/{id}`, again after each turn (the turn's text streams in meanwhile).

The page routes are not part of the API's OpenAPI document: they answer HTML, for people.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from fastapi import APIRouter, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.deps import ANONYMOUS, OwnerDep, RuntimeDep, SessionDep
from api.web import chat, view
from api.web.render import SECURITY_HEADERS, render

STATIC = Path(__file__).parent / "static"
# Flower's default port (`python -m workers.flower`, FLOWER_PORT): linked on the host the page
# was asked from, where it runs beside the API in the Compose file and the Procfile.
FLOWER_PORT = 5555

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _html(body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def _flower_url(request: Request) -> str:
    host = request.url.hostname or "localhost"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{request.url.scheme}://{host}:{FLOWER_PORT}/"


def _page(request: Request, rt: RuntimeDep, template: str, status_code: int = 200,
          **context: object) -> HTMLResponse:
    s = rt.settings
    return _html(render(template, auth_required=not s.auth_disabled,
                        docs_url="/docs" if s.docs_enabled else None,
                        flower_url=_flower_url(request), **context), status_code)


def _uuid(job_id: str) -> str | None:
    try:
        return str(UUID(job_id))
    except ValueError:
        return None


@router.get("/", response_class=HTMLResponse)
def index(request: Request, rt: RuntimeDep) -> HTMLResponse:
    """The form and, when the server can read them, the recent jobs."""
    recent = None
    if rt.settings.auth_disabled:
        with rt.sessions() as s:
            recent = view.recent_jobs(s, owner=ANONYMOUS)
    return _page(request, rt, "index.html", recent=recent)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, rt: RuntimeDep) -> HTMLResponse:
    """The job, whole when the server can read it; else a shell the script fills in."""
    found = _uuid(job_id)
    if found is None:
        return _page(request, rt, "not_found.html", status.HTTP_404_NOT_FOUND, job_id=job_id)
    v = None
    if rt.settings.auth_disabled:
        with rt.sessions() as s:
            v = view.job_view(s, rt.settings, found, owner=ANONYMOUS)
        if v is None:
            return _page(request, rt, "not_found.html", status.HTTP_404_NOT_FOUND, job_id=found)
    return _page(request, rt, "job.html", job_id=found, v=v)


@router.get("/fragments/jobs", response_class=HTMLResponse)
def recent_fragment(owner: OwnerDep, session: SessionDep) -> HTMLResponse:
    """The caller's recent jobs with status, cost and age, as an HTML fragment."""
    return _html(render("_recent.html", recent=view.recent_jobs(session, owner=owner)))


@router.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(job_id: UUID, owner: OwnerDep, session: SessionDep, rt: RuntimeDep) -> HTMLResponse:
    """The job as its page shows it, as an HTML fragment; another key's job is a 404."""
    v = view.job_view(session, rt.settings, str(job_id), owner=owner)
    if v is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    return _html(render("_job.html", v=v))


@router.get("/interviews/{interview_id}", response_class=HTMLResponse)
def interview_page(interview_id: str, request: Request, rt: RuntimeDep) -> HTMLResponse:
    """The interview as a chat, whole when the server can read it; else a shell the script
    fills in."""
    found = _uuid(interview_id)
    if found is None:
        return _page(request, rt, "interview_missing.html", status.HTTP_404_NOT_FOUND,
                     interview_id=interview_id)
    iv = None
    if rt.settings.auth_disabled:
        with rt.sessions() as s:
            iv = chat.interview_view(s, found, owner=ANONYMOUS)
        if iv is None:
            return _page(request, rt, "interview_missing.html", status.HTTP_404_NOT_FOUND,
                         interview_id=found)
    return _page(request, rt, "interview.html", interview_id=found, iv=iv)


@router.get("/fragments/interviews/{interview_id}", response_class=HTMLResponse)
def interview_fragment(interview_id: UUID, owner: OwnerDep, session: SessionDep) -> HTMLResponse:
    """The interview as its page shows it, as an HTML fragment; another key's is a 404."""
    iv = chat.interview_view(session, str(interview_id), owner=owner)
    if iv is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"no interview {interview_id} for this API key")
    return _html(render("_interview.html", iv=iv))
