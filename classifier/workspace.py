"""What every part of the studio shares: where projects live (--root), the folders photos may be
imported from (--import-from), the one job runner, and the models loaded for trying them.

Client strings never become paths here unchecked: a project is opened by its id (projects.py), and
an import folder is one of the --import-from folders by number, plus a path inside it whose real
location (links followed) stays inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from classifier.errors import ClassifierError
from classifier.jobs import Job, Jobs
from classifier.projects import Project, inside, safe_name
from classifier.serve import Services

MODELS_LOADED = 2  # models kept loaded for "try it" (the most recently used ones)


@dataclass
class Workspace:
    root: Path
    import_from: list[Path] = field(default_factory=list)
    warm: bool = False  # keep a process that has imported train.py waiting for the next training (jobs.Warm)
    jobs: Jobs = field(init=False)
    # the page's answers are the exported model's: fp32, one view (export.py's graph), same numbers
    services: Services = field(default_factory=lambda: Services(MODELS_LOADED, "cpu", "fp32", tta=False))

    def __post_init__(self):
        self.jobs = Jobs(("classifier.train",) if self.warm else ())
        self.root = Path(self.root).resolve()
        self.import_from = [Path(p).resolve() for p in self.import_from]
        for folder in self.import_from:
            if not folder.is_dir():
                raise ClassifierError(f"--import-from {folder}: no such folder")

    def project(self, project_id: str) -> Project:
        return Project.open(self.root, project_id)

    def projects(self) -> list[Project]:
        return Project.all(self.root)

    def sources(self) -> list[dict]:
        """The import folders as the page shows them: a number and the folder's name, not its path."""
        return [{"id": number, "name": folder.name} for number, folder in enumerate(self.import_from)]

    def source_folder(self, number: int, relative: str = "") -> Path:
        """Folder `relative` inside import folder `number`; refused if it leads outside it."""
        if not 0 <= number < len(self.import_from):
            raise ClassifierError(f"no import folder {number}: the server was started with "
                                  f"{len(self.import_from)} --import-from folder(s)")
        base = self.import_from[number]
        parts = [safe_name(part, "folder name") for part in relative.split("/") if part]
        folder = base.joinpath(*parts)
        if not inside(folder, base):
            raise ClassifierError(f"{relative!r} refused: it leads outside the import folder {base.name}")
        if not folder.is_dir():
            raise ClassifierError(f"{base.name}/{relative}: no such folder")
        return folder

    def adopt_jobs(self) -> None:
        """Jobs an earlier server left marked running: followed if they still run, else closed."""
        for project in self.projects():
            for folder in [project.folder / "audit"] + [project.run_folder(n) for n in project.run_names()]:
                job = Job.read(folder)
                if job:
                    self.jobs.adopt(job)


def current(request: Request) -> Workspace:
    """The app's workspace (studio.create_app puts it in app.state), for a route's parameters."""
    return request.app.state.workspace


Current = Annotated[Workspace, Depends(current)]  # a route parameter `workspace: Current` gets it


def opened(project_id: str, workspace: Current) -> Project:
    """The project a route's {project_id} names (404 when there is none)."""
    return workspace.project(project_id)


Opened = Annotated[Project, Depends(opened)]  # a route parameter `project: Opened` gets it
