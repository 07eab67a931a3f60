"""The studio: from folders of photos to a trained, checked, exported model, in the browser, on
your own machine, offline.

    python -m classifier.studio                       # or classifier-studio; open the address it prints
    python -m classifier.studio --root ~/studio --import-from ~/Pictures --host 0.0.0.0 --port 8000

Projects live under --root (default studio/ in the working folder), one folder each (projects.py):
photos by class, runs exactly as `train.py --out` writes them, the audit's findings, exports. The
page makes nothing the command line cannot use, and a copied project folder opens elsewhere.
Training and the audit run as background jobs in processes of their own (jobs.py), one at a time.

It is one web app (web.py) with a router per area; serve's predict API is one of them:
  projects  create, list, rename, delete               studio_photos.py
  photos    folders and files in, webcam, thumbnails, leave out, move, undo
  audit     the audit as the job; its findings as photo cards
  recipes   the training recipes and their settings   studio_runs.py
  runs      train, stop, resume; live events (server-sent)
  evaluate  confusion matrix (cells open their photos), per-class scores, reliability, test folder
  try       serve's /info and /predict over a run's best.pt (serve.py), with Grad-CAM
  export    ONNX, TorchScript, the checkpoint and a model card
  learn     a network learning one step at a time: every number of each step   learn_view.py
  inside    a trained run opened up: every layer for a photo, a channel's top patches   inside_view.py
Each is a web.Area: an APIRouter, and for a tab on the project page a template fragment
templates/tabs/NAME.html and a script static/NAME.js. A route gets the workspace and the project
its path names as parameters (`workspace: Current`, `project: Opened`; workspace.py). Adding one:

    learn = APIRouter(prefix="/api/projects/{project_id}/learn")     # in its own module

    @learn.get("/step")
    def step(project: Opened, ...): ...                               # a library function's numbers

    LEARN = Area("learn", learn, tab="Learn", scripts=["learn.js"])

    # templates/tabs/learn.html: <section class="tab" data-tab="learn" hidden>...</section>
    # static/learn.js:          Studio.tab("learn", {show(project) {...}, hide() {...}});  (common.js;
    #                           the page's scripts share one global scope: prefix top-level names)
    # and here:                 AREAS = [..., LEARN]

Security: it listens on 127.0.0.1 unless --host says otherwise; then every request needs the
token it prints (web.Guard). Requests that change something need the page's own origin or the
token (web.changes_state); names from the page never become paths outside the project folders
(projects.py, workspace.py); bodies over --max-upload-mb are refused; nothing is loaded from
outside the app (it works with the network unplugged).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool

from classifier import web
from classifier.cli import run_command
from classifier.inside_view import INSIDE, prepare_trained_run
from classifier.learn_view import LEARN
from classifier.studio_photos import AUDIT, PHOTOS, PROJECTS
from classifier.studio_runs import EVALUATE, EXPORT, RECIPES_AREA, RUNS, TRY
from classifier.web import Area, page
from classifier.workspace import Workspace

AREAS = [PROJECTS, PHOTOS, AUDIT, RECIPES_AREA, RUNS, LEARN, EVALUATE, INSIDE, TRY, EXPORT]
SCRIPTS = ["common.js", "cards.js", "studio.js"]  # before the areas' scripts


def page_area(areas: list[Area]) -> Area:
    """GET /: the one page; the project page's tabs are the areas that have one."""
    router = APIRouter()
    tabs = [area for area in areas if area.tab]
    scripts = SCRIPTS + [script for area in areas for script in area.scripts if script not in SCRIPTS]

    @router.get("/", include_in_schema=False)
    def index(request: Request):
        return page(request, "studio.html", tabs=tabs, scripts=scripts)

    @router.get("/health")
    def health():
        return {"status": "ok"}

    return Area("page", router)


def create_app(workspace: Workspace, max_upload_mb: float = 64, token: str | None = None,
               require_token: bool = False, areas=AREAS) -> FastAPI:
    """The studio's ASGI app over `workspace`. token: what programs send to change things (and,
    with require_token, what every request needs)."""
    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(workspace.adopt_jobs)
        yield
        await workspace.services.stop()
        await run_in_threadpool(workspace.jobs.shutdown)

    app = web.create_app([page_area(areas), *areas], "studio", max_upload_mb, token, guard=True,
                         require_token=require_token, lifespan=lifespan)
    app.state.workspace = workspace
    if prepare_trained_run not in workspace.jobs.when_finished:
        workspace.jobs.when_finished.append(prepare_trained_run)  # the Inside tab's top patches, ready early
    return app


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m classifier.studio",
        description="A web page to go from folders of photos to a trained, checked, exported model.",
        epilog="Open the address it prints. Projects are folders under --root that train.py, audit and "
               "export read too. See classifier/studio.py and the README.")
    parser.add_argument("--root", default="studio", help="folder holding the projects (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; any other than 127.0.0.1 (say 0.0.0.0) makes every request "
                             "need the token printed at start (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--import-from", action="append", default=[], metavar="DIR",
                        help="a folder on this machine whose class folders the page may import (repeatable; "
                             "default: none, photos come from the browser)")
    parser.add_argument("--max-upload-mb", type=float, default=64,
                        help="largest request body accepted, in MB (the page sends photos a few at a time) "
                             "(default: %(default)s)")
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=True,
                        help="keep a process that has imported the training code waiting, so that Train starts "
                             "seconds sooner (about 300 MB of memory) (default: on)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                        help="print a line per request (default: off)")
    return parser


def studio(args: argparse.Namespace) -> int:
    workspace = Workspace(Path(args.root), [Path(p) for p in args.import_from], args.warm)
    token, exposed = secrets.token_urlsafe(24), not web.is_loopback(args.host)
    app = create_app(workspace, args.max_upload_mb, token, require_token=exposed)
    sock = web.listen(args.host, args.port)
    url = web.address(sock) + "/" + (f"?token={token}" if exposed else "")
    print(f"studio: projects in {workspace.root}; open {url} (Ctrl-C to stop)", flush=True)
    print(f"programs: send the header X-Token: {token}" + ("" if exposed else " with requests that change something"),
          flush=True)
    web.run(app, sock, args.access_log)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 after a clean stop (Ctrl-C, SIGTERM), 1 for a ClassifierError (one line)."""
    return run_command(web.until_stopped, studio, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
