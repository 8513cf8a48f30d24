"""DataLoader: a stream's batches produced ahead by one worker thread and moved to the device (on
CUDA through one pinned host buffer, one non-blocking copy)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import torch

from nanochat.common import UserError


class DataLoader:
    """Iterator of (inputs, targets, state) on `device`, produced by `stream.next_batch(B)`.

    One worker thread runs `next_batch` ahead of the consumer: up to `prefetch` batches are
    requested at a time (a bounded deque of futures; prefetch=0: produce inline). A single worker
    runs them in submission order, so the batches come in exactly the stream's order. An error
    raised while producing (e.g. a corrupt shard -> UserError) is re-raised by __next__ (through
    `result()`), after which the loader is closed. On CUDA the returned tensors are views of one
    persistent device buffer, valid until the next batch is requested (clone them to keep them);
    on CPU every batch is fresh.
    """

    def __init__(self, stream, B: int, T: int, device="cpu", prefetch: int = 3):
        if B < 1 or T < 1:
            raise UserError(f"batch size and sequence length must be positive (got B={B}, T={T})")
        self.stream, self.B, self.T = stream, B, T
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._host = self._dev = self._event = None
        if self._cuda:
            n = 2 * B * T
            self._host = torch.empty(n, dtype=torch.int64, pin_memory=True)
            self._dev = torch.empty(n, dtype=torch.int64, device=self.device)
        self._prefetch = max(0, int(prefetch))
        self._ahead: deque[Future] = deque()
        self._pool = None
        if self._prefetch:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanochat-dataloader")
            for _ in range(self._prefetch):   # start producing now (overlaps model setup / compile)
                self._ahead.append(self._pool.submit(stream.next_batch, B))

    def __iter__(self):
        return self

    def _get(self):
        if not self._prefetch:
            return self.stream.next_batch(self.B)
        if self._pool is None:
            raise RuntimeError("data loader is closed")
        try:
            batch = self._ahead.popleft().result()
        except BaseException:
            self.close()
            raise
        self._ahead.append(self._pool.submit(self.stream.next_batch, self.B))  # keep `prefetch` requested
        return batch

    def __next__(self):
        inputs, targets, state = self._get()
        return (*self._to_device(inputs, targets), state)

    def _to_device(self, inputs: np.ndarray, targets: np.ndarray):
        B, t = inputs.shape
        if not self._cuda:
            x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
            return x, y
        n = B * t
        if 2 * n > self._host.numel():  # (only an unusually wide SFT batch): grow once
            self._host = torch.empty(2 * n, dtype=torch.int64, pin_memory=True)
            self._dev = torch.empty(2 * n, dtype=torch.int64, device=self.device)
            self._event = None
        if self._event is not None:
            self._event.synchronize()  # the previous copy out of the pinned buffer has finished
        self._host[:n].copy_(torch.from_numpy(inputs).view(-1))
        self._host[n:2 * n].copy_(torch.from_numpy(targets).view(-1))
        self._dev[:2 * n].copy_(self._host[:2 * n], non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
        return self._dev[:n].view(B, t), self._dev[n:2 * n].view(B, t)

    def close(self, timeout: float = 30.0):
        """Cancel the batches not started and wait (up to `timeout`) for the one in progress. The
        wait matters: a worker still inside pyarrow/torch C++ code while the interpreter tears
        down can abort the process ("terminate called without an active exception") after a clean
        error message, turning exit code 2 into SIGABRT."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=False, cancel_futures=True)
        wait([f for f in self._ahead if not f.cancelled()], timeout)  # (a cancelled one never reads as done)
        self._ahead.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
