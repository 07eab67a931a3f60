"""A web page and an HTTP API over any checkpoint predict.py accepts (.pt or .onnx).

    python -m classifier.serve --checkpoint checkpoints/best.pt        # or classifier-serve
    # open http://127.0.0.1:8000/ and drop photos on it, or from a program:
    curl -F file=@cat.jpg -F file=@dog.jpg http://127.0.0.1:8000/predict

  GET  /          the page: drop photos, see label, probabilities, "neither", where it looked
  GET  /health    {"status": "ok"} (the model is loaded before the port opens)
  GET  /info      the model card: classes, model, image size, val accuracy, temperature, ...
  POST /predict   multipart form, one or more fields named `file` -> a JSON array, one object
                  per file in order, with predict.py --json's fields (`filename` for `path`),
                  or {"filename", "error"} for a file that is not a readable image;
                  ?explain=1 adds "heatmap", a Grad-CAM overlay as a PNG data URL

Why FastAPI on uvicorn: the batching below needs an event loop that holds many waiting
requests at no cost while one thread runs the model; FastAPI is ASGI, small, typed, widely
used, and comes with a test client that runs the real app in-process; uvicorn is its usual
server and stops gracefully on Ctrl-C and SIGTERM.

Batching: each request decodes its photos in a thread pool, then puts each photo on a queue
and waits. One worker takes what is queued (waiting a few milliseconds for more when little
is), runs the model once on the whole batch in its own thread and answers every waiting
photo; so many clients at once share forward passes and get more photos/s than one.

Uploads stay in memory (or, past 1 MB, in an anonymous temporary file that has no name on
disk and vanishes when closed): nothing a client sends is used as a path or written where it
could collide or persist. Needs the optional extra: pip install 'catsdogs-classifier[serve]'.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import os
import sys
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Awaitable, Callable

import torch
from fastapi import APIRouter, FastAPI, Request

from classifier import web
from classifier.checkpoint import load_checkpoint
from classifier.cli import add_device_flags, run_command
from classifier.errors import ClassifierError
from classifier.gradcam import display_photo, explain_image, overlay_png
from classifier.inference import Classifier
from classifier.web import Area, error_response, page

MAX_BATCH = 32  # photos per forward pass; more waiting photos go in the next one
BATCH_WAIT_MS = 5.0  # how long a small batch waits for more photos before it runs


# --------------------------------------------------------------------------- photos in, answers out


def model_card(classifier: Classifier, path: str | Path, tta: bool) -> dict:
    """What /info and the page show about the model: read from the checkpoint (an ONNX export
    carries only classes, preprocessing, temperature and the neither rule); tta as served."""
    path = Path(path)
    checkpoint = {} if path.suffix.lower() == ".onnx" else load_checkpoint(path)
    config, metrics = checkpoint.get("config") or {}, checkpoint.get("metrics") or {}
    return {
        "checkpoint": path.name, "model": (checkpoint.get("model") or {}).get("name", "exported ONNX model"),
        "classes": classifier.classes, "image_size": classifier.preprocessing.image_size,
        "resize": classifier.preprocessing.resize, "tta": tta,
        "tta_sizes": list(classifier.preprocessing.tta_sizes) if tta else [],
        "val_accuracy": metrics.get("val_accuracy"), "epoch": checkpoint.get("epoch"),
        "temperature": classifier.temperature, "neither": classifier.neither and classifier.neither.to_dict(),
        "trained_at": _timestamp(checkpoint.get("saved_at") or path.stat().st_mtime),
        "trained_on": shown_folder(config.get("data")), "explainable": isinstance(classifier.model, torch.nn.Module),
    }


def shown_folder(data: str | None) -> str | None:
    """What a visitor sees of the training data: the folder's name, never a path of the server's disk."""
    if not data:
        return None
    return data if data.startswith("torchvision:") else Path(data.rstrip("/\\")).name or None


def _timestamp(value) -> str:
    """A checkpoint's saved_at (ISO text or seconds since 1970) or a file time -> ISO 8601, UTC."""
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat(timespec="seconds")
    return str(value)


# --------------------------------------------------------------------------- batching


class Batcher:
    """Collects items submitted by concurrent requests and runs them through `run_batch`
    together, in `executor` (one thread: the model runs one batch at a time).

    run_batch(items) must return one answer per item, in order."""

    def __init__(self, run_batch: Callable[[list], list], executor: ThreadPoolExecutor,
                 max_batch: int = MAX_BATCH, wait_ms: float = BATCH_WAIT_MS):
        self.run_batch, self.executor = run_batch, executor
        self.max_batch, self.wait = max_batch, wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)

    async def submit(self, item):
        """The answer for one item, once the batch it joined has run."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _collect(self) -> list:
        """Wait for one item, take whatever else is queued, and give a small batch a few
        milliseconds to grow: requests arriving together share one forward pass."""
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                answers = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in batch])
            except Exception as error:  # a failed batch fails its requests, not the server
                answers = [error] * len(batch)
            for (_, future), answer in zip(batch, answers):
                if not future.done():  # its request may have gone (client disconnected)
                    (future.set_exception if isinstance(answer, Exception) else future.set_result)(answer)


# --------------------------------------------------------------------------- the service


class Service:
    """The loaded model and everything around it that requests share: the decoding threads,
    the model's one thread, the batcher, and (loaded on first use) an unfused copy for Grad-CAM."""

    def __init__(self, classifier: Classifier, checkpoint: str | Path, tta: bool | None = None,
                 max_batch: int = MAX_BATCH, wait_ms: float = BATCH_WAIT_MS):
        self.classifier, self.checkpoint = classifier, Path(checkpoint)
        self.tta = classifier.tta if tta is None else tta
        self.card = model_card(classifier, checkpoint, self.tta)
        self.max_batch, self.wait_ms = max_batch, wait_ms
        self.explainer: Classifier | None = None

    def start(self) -> None:
        """Threads and the batcher live as long as the app (its lifespan), in its event loop."""
        self.decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="decode")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.batcher = Batcher(self.classify_batch, self.model_thread, self.max_batch, self.wait_ms)
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.decoders.shutdown(cancel_futures=True)
        self.model_thread.shutdown(cancel_futures=True)

    def classify_batch(self, photos: list[list[torch.Tensor]]) -> list[dict]:
        """Each photo's tensors (one per test-time size) -> its answer; one forward pass."""
        return self.classifier.results(photos, self.tta)

    def heatmap(self, data: bytes, name: str, result: dict) -> str:
        """Grad-CAM for the class the photo scored highest, as a PNG data URL. Runs in the model
        thread, so the unfused copy explain needs is loaded once, on first use, without a lock."""
        if self.explainer is None:
            self.explainer = Classifier.load(self.checkpoint, self.classifier.device.type,
                                             self.classifier.precision, fuse=False)
        probabilities = result["probabilities"]
        target = self.classifier.classes.index(max(probabilities, key=probabilities.get))
        explanation = explain_image(self.explainer, data, target)
        photo = display_photo(self.explainer, data)
        return "data:image/png;base64," + base64.b64encode(overlay_png(explanation, photo)).decode()

    async def answer(self, upload, explain: bool) -> dict:
        """One form field named `file` -> its result object (or its error), never an exception."""
        if isinstance(upload, str):
            return {"filename": "", "error": "a form field named file holds text, not a file upload"}
        name, data = upload.filename or "", await upload.read()
        loop = asyncio.get_running_loop()
        try:
            tensors = await loop.run_in_executor(self.decoders, self.classifier.decode, data, self.tta,
                                                 name or "upload")
        except ClassifierError as error:
            return {"filename": name, "error": str(error)}
        result = {"filename": name, **await self.batcher.submit(tensors)}
        if explain:
            result["heatmap"] = await loop.run_in_executor(self.model_thread, self.heatmap, data,
                                                           name or "upload", result)
        return result


# --------------------------------------------------------------------------- the web app


class Services:
    """Services loaded lazily, by checkpoint, on first use; the `size` most recently used stay
    loaded (a checkpoint rewritten since, say a best.pt training improved, is loaded again)."""

    def __init__(self, size: int = 2, device: str = "auto", precision: str = "auto", tta: bool | None = None):
        self.size, self.device, self.precision, self.tta = size, device, precision, tta
        self.loaded: OrderedDict[tuple, Service] = OrderedDict()
        self.lock = asyncio.Lock()

    async def get(self, checkpoint: Path) -> Service:
        try:
            key = (str(checkpoint.resolve()), checkpoint.stat().st_mtime_ns)
        except OSError:
            raise ClassifierError(f"{checkpoint.name}: no such checkpoint (not trained yet?)") from None
        async with self.lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            classifier = await asyncio.get_running_loop().run_in_executor(
                None, Classifier.load, checkpoint, self.device, self.precision)
            service = self.loaded[key] = Service(classifier, checkpoint, self.tta)
            service.start()
            while len(self.loaded) > self.size:
                await self.loaded.popitem(last=False)[1].stop()
            return service

    async def stop(self) -> None:
        while self.loaded:
            await self.loaded.popitem()[1].stop()


def predict_router(service_of: Callable[[Request], Awaitable[Service]], prefix: str = "") -> APIRouter:
    """GET PREFIX/info and POST PREFIX/predict over the Service `service_of(request)` gives."""
    router = APIRouter(prefix=prefix)

    @router.get("/info")
    async def info(request: Request):
        return (await service_of(request)).card

    @router.post("/predict")
    async def predict(request: Request, explain: bool = False):
        """Multipart fields named `file` -> one result object per file, in order."""
        service = await service_of(request)
        async with request.form() as form:
            uploads = form.getlist("file")
            if not uploads:
                return error_response(400, "no photo: send one or more multipart form fields named 'file'")
            if explain and not service.card["explainable"]:
                return error_response(400, "explain needs the PyTorch checkpoint (.pt): an exported "
                                           "model gives no gradients or feature maps")
            return await asyncio.gather(*(service.answer(upload, explain) for upload in uploads))

    return router


def predict_area(service: Service) -> Area:
    """serve's page, /health, /info and /predict over one loaded model."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index(request: Request):
        return page(request, "serve.html")

    @router.get("/health")
    async def health():
        return {"status": "ok"}

    async def served(request: Request) -> Service:
        return service

    router.include_router(predict_router(served))
    return Area("predict", router)


def create_app(service: Service, max_upload_mb: float = 20) -> FastAPI:
    """The ASGI app of `serve`: the page, /health, /info and /predict over one loaded model."""

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    return web.create_app([predict_area(service)], "catsdogs-classifier", max_upload_mb, lifespan=lifespan)


# --------------------------------------------------------------------------- command line


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m classifier.serve", description="Serve a web page and an HTTP API over a checkpoint.",
        epilog="Endpoints: GET / (the page), GET /health, GET /info, POST /predict[?explain=1] "
               "(multipart fields named file). See classifier/serve.py and the README.")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt",
                        help="checkpoint to serve, .pt or .onnx (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 for every interface (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=float, default=20,
                        help="largest request body accepted, in MB; larger ones get 413 (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=MAX_BATCH,
                        help="most photos per forward pass (default: %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=BATCH_WAIT_MS,
                        help="how long a batch smaller than --batch-size waits for more photos (default: %(default)s)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation as predict.py --tta (default: as training evaluated the checkpoint)")
    add_device_flags(parser)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of the model's forward pass; 0: PyTorch's choice, one per core. On a "
                             "machine shared with other busy processes, 1 can be much faster (default: %(default)s)")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="print a line per request (default: on)")
    return parser


def serve(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = Classifier.load(args.checkpoint, args.device, args.precision)
    app = create_app(Service(classifier, args.checkpoint, args.tta, args.batch_size, args.batch_wait_ms),
                     args.max_upload_mb)
    sock = web.listen(args.host, args.port)
    print(f"serving {args.checkpoint} on {web.address(sock)}/ (Ctrl-C to stop)", flush=True)
    web.run(app, sock, args.access_log)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 after a clean stop (Ctrl-C, SIGTERM), 1 for a ClassifierError (one line)."""
    return run_command(web.until_stopped, serve, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
