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
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from classifier.checkpoint import load_checkpoint
from classifier.cli import add_device_flags, run_command
from classifier.errors import ClassifierError
from classifier.gradcam import display_photo, explain_image, overlay_png
from classifier.inference import Classifier

STATIC = Path(__file__).with_name("static")
MAX_BATCH = 32  # photos per forward pass; more waiting photos go in the next one
BATCH_WAIT_MS = 5.0  # how long a small batch waits for more photos before it runs
SECURITY_HEADERS = [  # the page runs only its own script and shows only its own and local images
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


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


class BodyTooLarge(Exception):
    """A request body over the upload limit: answered 413."""


class UploadLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 before they are read
    whole; by the Content-Length header when there is one, else by counting as the body arrives
    (the exception stops the form parser, and the app's handler answers 413)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await error_response(413, self.message())(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.message())
            return message

        await self.app(scope, counted, send)

    def message(self) -> str:
        return f"request body over the {self.limit / 2**20:g} MB limit (--max-upload-mb); send fewer or smaller photos"


class SecurityHeaders:
    """ASGI middleware: every response carries SECURITY_HEADERS (no script but the page's own)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def error_response(status: int, message: str) -> JSONResponse:
    """Every error the API gives: {"error": one line}."""
    return JSONResponse({"error": message}, status_code=status)


def create_app(service: Service, max_upload_mb: float = 20) -> FastAPI:
    """The ASGI app: the page, /health, /info and /predict over one loaded model."""

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        await service.stop()

    app = FastAPI(title="catsdogs-classifier", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, limit=int(max_upload_mb * 2**20))
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(BodyTooLarge, lambda request, error: error_response(413, str(error)))
    app.add_exception_handler(HTTPException, lambda request, error: error_response(error.status_code, str(error.detail)))
    app.add_exception_handler(RequestValidationError, lambda request, error: error_response(
        422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        return service.card

    @app.post("/predict")
    async def predict(request: Request, explain: bool = False):
        """Multipart fields named `file` -> one result object per file, in order."""
        async with request.form() as form:
            uploads = form.getlist("file")
            if not uploads:
                return error_response(400, "no photo: send one or more multipart form fields named 'file'")
            if explain and not service.card["explainable"]:
                return error_response(400, "explain needs the PyTorch checkpoint (.pt): an exported "
                                           "model gives no gradients or feature maps")
            return await asyncio.gather(*(service.answer(upload, explain) for upload in uploads))

    return app


# --------------------------------------------------------------------------- command line


class Stopped(Exception):
    """SIGTERM or Ctrl-C outside uvicorn's own handling (while loading, or re-raised by uvicorn
    after its graceful shutdown): the server has stopped cleanly."""


def _stop(signum, frame):
    raise Stopped()


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


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so that port 0 works and the address
    printed is the real one. Its protocol is IPPROTO_TCP, not 0: asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections of such sockets; left on, every response
    waited 40 ms for the client's delayed acknowledgement."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        return sock
    except OSError as error:
        raise ClassifierError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


def serve(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = Classifier.load(args.checkpoint, args.device, args.precision)
    app = create_app(Service(classifier, args.checkpoint, args.tta, args.batch_size, args.batch_wait_ms),
                     args.max_upload_mb)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(f"serving {args.checkpoint} on http://{f'[{host}]' if ':' in host else host}:{port}/ "
          f"(Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="info", access_log=args.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def serve_until_stopped(args: argparse.Namespace) -> int:
    """serve() with SIGTERM and Ctrl-C turned into a clean stop (exit status 0)."""
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return serve(args)
    except Stopped:
        print("stopped", file=sys.stderr)
        return 0
    finally:  # a caller in the same process (a test) gets its own handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 after a clean stop (Ctrl-C, SIGTERM), 1 for a ClassifierError (one line)."""
    return run_command(serve_until_stopped, parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
