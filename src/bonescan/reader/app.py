"""The reading station: a FastAPI app with server-rendered pages and one small script for display controls.

Readers sign in with their name and password; a random session id in an HttpOnly cookie (stored hashed, so
sessions survive a server restart) identifies them. Each reader reaches cases only through random read keys of
their own queue in the active phase: any other key answers 403. The server times every case itself.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from .auth import check_credentials, hash_token, new_session_token
from .store import SESSION_SECONDS, ReaderStore, ReadState, hotspot_image_name

log = logging.getLogger("bonescan.reader")

COOKIE = "bonescan_reader"
PACKAGE_DIR = Path(__file__).parent
ANSWERS = {"metastasis": 1, "no-metastasis": 0}
VIEWS = ("anterior", "posterior", "heatmap", "hotspots")
MODE_TITLES = {"blinded": "Blinded reading", "ai-consulted": "AI-consulted reading"}
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
}


class FormProblem(Exception):
    """A form field that is missing or malformed; becomes a 422 naming the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class Refused(Exception):
    """A request turned down with a ready page (401 or 403), raised from the checks that every handler shares."""

    def __init__(self, response: Response):
        super().__init__(response.status_code)
        self.response = response


def parse_answer(answer: str | None, confidence: str | None) -> tuple[int, int | None]:
    """Validate the answer form: answer metastasis | no-metastasis, optional confidence 1-5."""
    if answer is None or not answer.strip():
        raise FormProblem("answer", "answer is required: 'metastasis' or 'no-metastasis'")
    if answer.strip() not in ANSWERS:
        raise FormProblem("answer", f"answer must be 'metastasis' or 'no-metastasis', not {answer.strip()!r}")
    level = None
    if confidence is not None and confidence.strip():
        if confidence.strip() not in ("1", "2", "3", "4", "5"):
            raise FormProblem("confidence", f"confidence must be an integer 1-5 or empty, not {confidence.strip()!r}")
        level = int(confidence)
    return ANSWERS[answer.strip()], level


def create_app(study_dir: str | Path, *, clock: Callable[[], float] = time.time, secure_cookie: bool = False) -> FastAPI:
    """Build the reading-station app for one study folder (refused if it is not a reader study)."""
    store = ReaderStore.open(study_dir, clock=clock)
    templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    app = FastAPI(title="bonescan reader", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith(("/static/", "/image/")):
            response.headers["Cache-Control"] = "no-store"  # no case left in the browser's history after sign-out
        return response

    @app.exception_handler(FormProblem)
    async def _form_problem(request: Request, problem: FormProblem) -> JSONResponse:
        detail = [{"loc": ["body", problem.field], "msg": problem.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Refused)
    async def _refused(request: Request, refusal: Refused) -> Response:
        return refusal.response

    @app.exception_handler(sqlite3.OperationalError)
    @app.exception_handler(OSError)
    async def _not_saved(request: Request, error: Exception) -> Response:
        # A full disk or a locked study file: the reader is told that this step was not recorded (the transaction
        # rolled back), and the station goes on serving.
        log.error("%s %s not saved: %s", request.method, request.url.path, error)
        return message(request, 503, "Not saved",
                       f"The reading station could not save this step ({error}), so nothing of it was recorded. "
                       "Please tell the study's organiser, then go back and send it again.")

    def signed_in(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        return store.session_reader(hash_token(token)) if token else None

    def page(request: Request, name: str, status: int = 200, **context: object) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def message(request: Request, status: int, title: str, text: str, reader: str | None = None) -> Response:
        return page(request, "message.html", status, title=title, text=text, reader=reader)

    def forbidden(request: Request, reader: str | None) -> Response:
        return message(request, 403, "Not your case", "This case is not in your reading queue.", reader)

    def unauthorized(request: Request) -> Response:
        return message(request, 401, "Please sign in", "Your session has ended; sign in again to go on.")

    def own_read(read_key: str, reader: str) -> ReadState | None:
        """The read if it belongs to this reader's queue in the active phase, else None."""
        read = store.get_read(read_key)
        if read is None or read.reader != reader or read.phase != store.active_phase():
            return None
        return read

    def signed_in_own_read(request: Request, read_key: str) -> tuple[str, ReadState]:
        """The signed-in reader and their read; refused with 401 when signed out, 403 when not their case."""
        reader = signed_in(request)
        if reader is None:
            raise Refused(unauthorized(request))
        read = own_read(read_key, reader)
        if read is None:
            raise Refused(forbidden(request, reader))
        return reader, read

    @app.get("/")
    def index(request: Request) -> Response:
        return RedirectResponse("/read" if signed_in(request) else "/login", status_code=303)

    @app.get("/login")
    def login_page(request: Request) -> Response:
        return page(request, "login.html", error=None, reader_name="")

    @app.post("/login")
    def login(request: Request, reader: str | None = Form(None), password: str | None = Form(None)) -> Response:
        if reader is None or not reader.strip():
            raise FormProblem("reader", "reader name is required")
        if password is None or not password:
            raise FormProblem("password", "password is required")
        name = reader.strip()
        if not check_credentials(password.strip(), store.password_hash(name)):
            # Same words whether the name or the password was wrong.
            return page(request, "login.html", 401, error="Sign-in failed: wrong reader name or password.",
                        reader_name=name)
        token = new_session_token()
        store.create_session(name, hash_token(token))
        response = RedirectResponse("/read", status_code=303)
        response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, httponly=True, samesite="strict",
                            secure=secure_cookie, path="/")
        return response

    @app.post("/logout")
    def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            reader = store.session_reader(hash_token(token))
            if reader:
                store.pause(reader)
            store.delete_session(hash_token(token))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/read")
    def next_case(request: Request) -> Response:
        reader = signed_in(request)
        if reader is None:
            return RedirectResponse("/login", status_code=303)
        read = store.next_read(reader)
        if read is None:
            done, total = store.progress(reader)
            phase = store.active_phase() or "blinded"
            return message(request, 200, "All cases read",
                           f"You have finished all {total} cases of the {MODE_TITLES[phase].lower()}. Thank you.",
                           reader)
        return RedirectResponse(f"/read/{read.read_key}", status_code=303)

    @app.get("/read/{read_key}")
    def show_case(request: Request, read_key: str) -> Response:
        reader = signed_in(request)
        if reader is None:
            return RedirectResponse("/login", status_code=303)
        read = own_read(read_key, reader)
        if read is None:
            return forbidden(request, reader)
        if read.stage == "done":
            return RedirectResponse("/read", status_code=303)
        store.start_clock(read_key)
        done, total = store.progress(reader)
        hotspots = read.ai is not None and (store.images_dir / hotspot_image_name(read.image_key)).is_file()
        return page(request, "read.html", read=read, reader=reader, done=done, total=total,
                    mode_title=MODE_TITLES[read.phase], hotspots=hotspots)

    @app.get("/image/{read_key}/{view}")
    def image(request: Request, read_key: str, view: str) -> Response:
        reader, read = signed_in_own_read(request, read_key)
        if view not in VIEWS:
            return forbidden(request, reader)
        if view in ("heatmap", "hotspots"):
            # The AI's output stays hidden until the reader's own answer is on record.
            if read.ai is None or read.own_answer is None:
                return forbidden(request, reader)
            name = read.ai.heatmap if view == "heatmap" else hotspot_image_name(read.image_key)
            if name is None or not (store.images_dir / name).is_file():
                return forbidden(request, reader)
            path = store.images_dir / name
        else:
            path = store.images_dir / f"{read.image_key}_{view}.png"
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/read/{read_key}/answer")
    def answer(request: Request, read_key: str, answer: str | None = Form(None),
               confidence: str | None = Form(None)) -> Response:
        _, read = signed_in_own_read(request, read_key)
        value, level = parse_answer(answer, confidence)
        store.record_own(read_key, value, level)  # a repeated answer changes nothing: the first one stands
        target = f"/read/{read_key}" if read.phase == "ai-consulted" else "/read"
        return RedirectResponse(target, status_code=303)

    @app.post("/read/{read_key}/final")
    def final_answer(request: Request, read_key: str, answer: str | None = Form(None),
                     confidence: str | None = Form(None)) -> Response:
        reader, read = signed_in_own_read(request, read_key)
        value, level = parse_answer(answer, confidence)
        if read.phase != "ai-consulted":
            return message(request, 409, "No final answer here", "Blinded reading has no AI-consulted answer.", reader)
        if read.own_answer is None:
            return message(request, 409, "Your own answer first",
                           "Record your own answer before the AI's result is shown.", reader)
        store.record_final(read_key, value, level)
        return RedirectResponse("/read", status_code=303)

    @app.post("/pause")
    def pause(request: Request) -> Response:
        reader = signed_in(request)
        if reader is None:
            return unauthorized(request)
        store.pause(reader)
        return RedirectResponse("/paused", status_code=303)

    @app.get("/paused")
    def paused(request: Request) -> Response:
        reader = signed_in(request)
        if reader is None:
            return RedirectResponse("/login", status_code=303)
        done, total = store.progress(reader)
        return page(request, "paused.html", reader=reader, done=done, total=total)

    return app


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the reading station with uvicorn until interrupted."""
    import uvicorn

    app = create_app(study_dir)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
