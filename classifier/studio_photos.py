"""The studio's projects, photos and audit areas: routers over projects.py and jobs.py.

  GET    /api/projects                          every project (newest first)
  POST   /api/projects {"name"}                 a new, empty project
  GET    /api/projects/ID                       its classes, runs, exclusions, the audit's and job's state
  PATCH  /api/projects/ID {"name"}              rename (the folder keeps its id)
  DELETE /api/projects/ID?confirm=ID            delete the folder and all in it (the page asks first)
  GET    /api/sources[/N?path=SUB]              the --import-from folders, and the folders inside one
  POST   /api/projects/ID/import {"source", "path", "set"}   copy SOURCE/PATH's class folders in
  POST   /api/projects/ID/classes {"name", "set"}            an empty class
  POST   /api/projects/ID/photos?class=C&set=S  multipart `file` fields into class C: added and skipped
  GET    /api/projects/ID/photos?class=C&offset=&limit=&set=  a page of a class's photos
  GET    /api/projects/ID/thumbnail?path=C/F&set=             a photo's thumbnail (JPEG)
  DELETE /api/projects/ID/photos?path=C/F&set=  delete one photo from disk (the page asks first)
  POST   /api/projects/ID/exclude {"paths", "excluded"}       leave out of training, or take back
  POST   /api/projects/ID/move {"path", "to", "reason"}       move to another class (logged)
  GET    /api/projects/ID/moves; POST /api/projects/ID/moves/N/undo
  POST   /api/projects/ID/audit                 run `python -m classifier.audit` as the job
  GET    /api/projects/ID/audit                 its findings as photo cards' data, paths in the project
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from classifier.errors import ClassifierError
from classifier.jobs import Busy, Job, job_of, python_module
from classifier.projects import Project
from classifier.web import Area, changes_state
from classifier.workspace import Current, Opened, Workspace

UPLOAD_FILES = 200  # files in one upload request at most (the page sends fewer at a time)
PHOTO_SET = Query("photos", alias="set", description="photos (to train on) or test")
CLASS = Query("", alias="class")


async def body(request: Request) -> dict:
    try:
        value = await request.json()
    except ValueError:
        raise ClassifierError("the request body is not JSON") from None
    if not isinstance(value, dict):
        raise ClassifierError("the request body must be a JSON object")
    return value


def text(values: dict, key: str, default: str | None = None) -> str:
    value = values.get(key, default)
    if not isinstance(value, str):
        raise ClassifierError(f"{key!r} must be text")
    return value


def project_state(workspace: Workspace, project: Project) -> dict:
    running = workspace.jobs.running()
    return {**project.summary(), "audit": job_of(project.folder / "audit"),
            "job": None if running is None else {"kind": running.kind, "project": running.project, "name": running.name}}


projects = APIRouter(prefix="/api", dependencies=[Depends(changes_state)])


@projects.get("/projects")
def list_projects(workspace: Current):
    return [project.summary() for project in workspace.projects()]


@projects.post("/projects")
async def create(workspace: Current, request: Request):
    project = Project.create(workspace.root, text(await body(request), "name"))
    return project_state(workspace, project)


@projects.get("/projects/{project_id}")
def show(workspace: Current, project: Opened):
    return project_state(workspace, project)


@projects.patch("/projects/{project_id}")
async def rename(workspace: Current, project: Opened, request: Request):
    project.rename(text(await body(request), "name"))
    return project_state(workspace, project)


@projects.delete("/projects/{project_id}")
def delete(workspace: Current, project: Opened, confirm: str = ""):
    if confirm != project.id:
        raise ClassifierError(f"deleting project {project.id!r} removes its photos, runs and exports from "
                              f"disk: confirm with ?confirm={project.id}")
    running = workspace.jobs.running()
    if running and running.project == project.id:
        raise Busy(f"a {running.kind} job of this project is running: stop it first")
    project.delete()
    return {"deleted": project.id}


@projects.get("/sources")
def sources(workspace: Current):
    return workspace.sources()


@projects.get("/sources/{number}")
def source(workspace: Current, number: int, path: str = ""):
    folder = workspace.source_folder(number, path)
    return {"path": path, "folders": sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))}


photos = APIRouter(prefix="/api/projects/{project_id}", dependencies=[Depends(changes_state)])


@photos.post("/import")
async def import_folder(workspace: Current, project: Opened, request: Request):
    values = await body(request)
    number = values.get("source", 0)
    if not isinstance(number, int):
        raise ClassifierError("'source' must be the number of an import folder")
    folder = workspace.source_folder(number, text(values, "path", ""))
    return await run_in_threadpool(project.import_folder, folder, text(values, "set", "photos"))


@photos.post("/classes")
async def add_class(project: Opened, request: Request):
    values = await body(request)
    return {"name": project.add_class(text(values, "name"), text(values, "set", "photos"))}


@photos.post("/photos")
async def upload(project: Opened, request: Request, name: str = CLASS, photo_set: str = PHOTO_SET):
    async with request.form(max_files=UPLOAD_FILES) as form:
        uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
        if not uploads:
            raise ClassifierError("no photo: send multipart form fields named 'file'")
        files = [(u.filename or "", await u.read()) for u in uploads]
    results = await asyncio.gather(*(run_in_threadpool(project.add_photo, name, file_name, data, photo_set)
                                      for file_name, data in files))
    return {"added": [r for r in results if isinstance(r, str)],
            "skipped": [{"name": r.name, "reason": r.reason} for r in results if not isinstance(r, str)]}


@photos.get("/photos")
def page_of_photos(project: Opened, name: str = CLASS, offset: int = 0, limit: int = 100, photo_set: str = PHOTO_SET):
    return project.photos(name, offset, limit, photo_set)


@photos.delete("/photos")
def delete_photo(project: Opened, path: str, photo_set: str = PHOTO_SET):
    project.delete_photo(path, photo_set)
    return {"deleted": path}


@photos.get("/thumbnail")
def thumbnail(project: Opened, path: str, photo_set: str = PHOTO_SET):
    return FileResponse(project.thumbnail(path, photo_set), media_type="image/jpeg",
                        headers={"cache-control": "private, max-age=3600"})


@photos.post("/exclude")
async def exclude(project: Opened, request: Request):
    values = await body(request)
    paths = values.get("paths")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ClassifierError("'paths' must be a list of photo paths (CLASS/FILE)")
    return {"excluded": project.set_excluded(paths, bool(values.get("excluded", True)))}


@photos.post("/move")
async def move(project: Opened, request: Request):
    values = await body(request)
    return project.move(text(values, "path"), text(values, "to"), text(values, "reason", ""))


@photos.get("/moves")
def moves(project: Opened):
    return project.moves()


@photos.post("/moves/{move_id}/undo")
def undo(project: Opened, move_id: int):
    return project.undo_move(move_id)


audit = APIRouter(prefix="/api/projects/{project_id}/audit", dependencies=[Depends(changes_state)])


@audit.post("")
def start_audit(workspace: Current, project: Opened):
    if not any(c["photos"] for c in project.classes()):
        raise ClassifierError("no photos to check yet: add a folder of class folders first")
    folder = project.folder / "audit"
    command = python_module("classifier.audit", str(project.set_folder()), "--out", str(folder))
    job = workspace.jobs.start(Job("audit", project.id, "audit", str(folder), command))
    return job_of(Path(job.folder))


@audit.get("")
def findings(project: Opened):
    return {"job": job_of(project.folder / "audit"), "findings": project_findings(project)}


PROJECTS = Area("projects", projects)
PHOTOS = Area("photos", photos, tab="Photos", scripts=["photos.js"])
AUDIT = Area("audit", audit, tab="Check", scripts=["audit.js"])


def project_findings(project: Project) -> list[dict]:
    """The audit's findings with paths as the project names photos (CLASS/FILE), whether each
    photo is still there and whether it is left out; folder-level findings keep their class."""
    folder = project.folder / "audit"
    job = Job.read(folder)
    path = folder / "findings.jsonl"
    if job is None or job.state != "finished" or not path.is_file():
        return []
    audited = job.command[job.command.index("classifier.audit") + 1]
    excluded = set(project.excluded())
    photos = project.set_folder()
    found = []
    for line in path.read_text().splitlines():
        finding = json.loads(line) if line.strip() else None
        if not finding:
            continue
        for key in ("path", "of"):
            if key in finding:
                finding[key] = Path(os.path.relpath(finding[key], audited)).as_posix()
        if finding["kind"] not in ("imbalance", "small_class"):
            finding["exists"] = (photos / finding["path"]).is_file()
            finding["excluded"] = finding["path"] in excluded
        found.append(finding)
    return found

