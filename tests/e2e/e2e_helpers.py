"""Helpers of the deployment tests: site datasets on disk, processes that are always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fedmed.data import load_sites

FEDMED = [str(Path(sys.executable).with_name("fedmed"))]


def write_synthetic_sites(root: Path, *, num_sites: int = 3, samples: int = 5, size: int = 32) -> Path:
    """The synthetic federation as 2D dataset folders `root/site-k/{images,masks}` (PNG)."""
    for site in load_sites("synthetic", image_size=size, num_sites=num_sites, samples_per_site=samples):
        for part in ("images", "masks"):
            (root / site.name / part).mkdir(parents=True, exist_ok=True)
        items = [site.train[i] for i in range(len(site.train))] + [site.val[i] for i in range(len(site.val))]
        for index, item in enumerate(items):
            image = item["image"].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(image).save(root / site.name / "images" / f"case{index:03d}.png")
            mask = (item["mask"].numpy() > 0).astype(np.uint8) * 255
            Image.fromarray(mask).save(root / site.name / "masks" / f"case{index:03d}.png")
    return root


class Processes:
    """Started processes (each in its own session), all stopped at the end of a test."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], *, env: dict | None = None, **kwargs) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, **kwargs)
        self.started.append((name, process))
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def all_logs(self) -> str:
        """Every process's log, each under its name (for a failure's message)."""
        return "\n".join(f"--- {path.stem}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in sorted(self.logs.glob("*.log")))

    def kill(self, process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if process.poll() is None:
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
