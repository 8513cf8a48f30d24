"""The web chat's model copies: one Engine per device, all from the same checkpoint step, lent out
through a queue so that each copy serves one request at a time."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass


@dataclass
class Worker:
    index: int
    engine: object     # nanochat.engine.Engine over this device's model copy
    device: object


class WorkerPool:
    """Free model copies in a queue: a request borrows one, generates, and gives it back."""

    def __init__(self, workers: list[Worker]):
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers
        self._free: queue.Queue[Worker] = queue.Queue()
        for w in workers:
            self._free.put(w)

    def __len__(self) -> int:
        return len(self.workers)

    def busy(self) -> int:
        return len(self.workers) - self._free.qsize()

    def take(self, stopping: threading.Event) -> Worker | None:
        """A free worker, or None once the server is stopping."""
        while not stopping.is_set():
            try:
                return self._free.get(timeout=0.25)
            except queue.Empty:
                continue
        return None

    def give_back(self, worker: Worker) -> None:
        self._free.put(worker)


def build_pool(source: str, model_tag: str | None, step: int | None, devices: list):
    """One model copy per device, all from the same checkpoint step -> (pool, tokenizer, info, a model)."""
    from nanochat.checkpoint_manager import build_model, checkpoint_dir, find_model_tag, resolve_step
    from nanochat.engine import Engine
    tag = model_tag or find_model_tag(source)
    ckpt = checkpoint_dir(source, tag)
    step = resolve_step(ckpt, step)
    workers, tokenizer, model = [], None, None
    for i, device in enumerate(devices):
        print(f"loading {source}/{tag} step {step} on {device} ({i + 1}/{len(devices)})", flush=True)
        model, tokenizer, _ = build_model(ckpt, step, device, "eval")
        workers.append(Worker(i, Engine(model, tokenizer), device))
    info = {"checkpoint": {"source": source, "tag": tag, "step": step},
            "device": str(devices[0].type), "devices": [str(d) for d in devices]}
    return WorkerPool(workers), tokenizer, info, model


def pick_devices(device, num_gpus: int | None) -> list:
    """The devices to load a copy on: every visible GPU by default, one copy elsewhere."""
    import torch
    from nanochat.common import UserError
    if device.type != "cuda":
        if num_gpus not in (None, 1):
            raise UserError(f"--num-gpus={num_gpus} needs CUDA GPUs; on {device.type} the server runs one worker "
                            f"(drop --num-gpus or use --device-type=cuda)")
        return [device]
    visible = torch.cuda.device_count()
    n = visible if num_gpus is None else num_gpus
    if n < 1 or n > visible:
        raise UserError(f"--num-gpus={n} but {visible} GPU(s) are visible: use 1..{visible}")
    return [torch.device("cuda", i) for i in range(n)]
