"""The stream's loop for a runner with requests in flight (``runner.pipeline_depth`` > 1: a remote
runner, ``serve.remote.RemoteRunner``): two stages, so the next frame is taken, preprocessed and sent
while the previous request is still on the server.

* stage 1, the calling thread: take a free slot (at most ``depth`` batches in flight), then the
  newest frame(s), crop, preprocess and ``submit`` (``runner.infer_async``);
* stage 2, one completion thread: wait for each batch's logits *in submission order* (futures that
  complete out of order wait their turn), then probabilities → smoothing → ``FrameResult`` → every
  sink → progress, and free the slot.

A frame's latency is stamped in stage 2 when its logits are in hand, right before it goes to the
sinks. A slot is taken before the frame, so a frame never waits for a slot after it was taken (in
real-time mode, frames that arrive while every slot is busy replace each other in the source's
mailbox and count as drops, as in the one-thread loop). The first failure in stage 2 (a
``ServerLost`` from a future, a sink's error) stops both stages; the outputs hold every frame
before it. Ctrl-C (in stage 1) stops taking frames, lets the batches in flight finish, and returns.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any, Callable

from edgeskd.errors import ServerLost

_END = None
_POLL_S = 0.1


class _Completer(threading.Thread):
    """Stage 2: completes the submitted batches in order and hands the results to the sinks."""

    def __init__(self, process: Any, sinks: list[Any], progress: Callable[[Any], None] | None) -> None:
        super().__init__(name="edgeskd-completion", daemon=True)
        self.process, self.sinks, self.progress = process, sinks, progress
        self.slots = threading.Semaphore(process.depth)
        self.queue: queue.Queue = queue.Queue()     # bounded by the slots
        self.failed: BaseException | None = None    # the first error: nothing after it is written
        self.abort = threading.Event()              # the caller gave up (a second Ctrl-C, an error)
        self.cpu_s = 0.0

    def run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while (sub := self.queue.get()) is not _END:
                try:
                    if self.failed is None and self._ready(sub):
                        self._finish(sub)
                except BaseException as e:  # noqa: BLE001 - handed to stage 1, which raises or reports it
                    self.failed = e
                finally:
                    self.slots.release()
        finally:
            self.cpu_s = time.thread_time() - cpu0

    def _ready(self, sub: Any) -> bool:
        """Wait for ``sub``'s logits; False if the caller aborted meanwhile."""
        while not wait([sub.logits], timeout=_POLL_S, return_when=FIRST_COMPLETED).done:
            if self.abort.is_set():
                return False
        return not self.abort.is_set()

    def _finish(self, sub: Any) -> None:
        results = self.process.complete(sub)
        for r in results:
            for sink in self.sinks:
                sink.write(r)
        if self.progress is not None:
            self.progress(results[-1])

    def take_slot(self) -> bool:
        """Block until a batch may be submitted; False once stage 2 has failed."""
        while not self.slots.acquire(timeout=_POLL_S):
            if self.failed is not None:
                return False
        return self.failed is None


def pump_in_flight(source: Any, process: Any, sinks: list[Any], batch: int,
                   progress: Callable[[Any], None] | None) -> tuple[float, float, bool, BaseException | None]:
    """Decode → submit (this thread) → complete → every sink (the completion thread), until the source
    ends, Ctrl-C or a failure. Returns (wall s, CPU s of both stages, interrupted, the ``ServerLost``
    that ended the stream or None); other errors raise here, after the completion thread stopped."""
    t_start = time.perf_counter()
    cpu0 = time.thread_time()
    stage2 = _Completer(process, sinks, progress)
    source.start()
    stage2.start()
    interrupted = False
    lost: BaseException | None = None
    try:
        try:
            while stage2.take_slot():
                items = source.get_batch(batch)
                if not items:
                    break
                stage2.queue.put(process.submit(items))
        except KeyboardInterrupt:
            interrupted = True
        except ServerLost as e:   # the request could not even be sent
            lost = e
        stage2.queue.put(_END)    # the batches in flight are still completed and written
        stage2.join()
    except BaseException:
        stage2.abort.set()        # a second Ctrl-C, or an error of stage 1: write nothing more
        stage2.queue.put(_END)
        stage2.join(1.0)          # let a result being written finish before the sinks are closed
        raise
    if stage2.failed is not None:   # an earlier frame than stage 1's own failure
        if not isinstance(stage2.failed, ServerLost):
            raise stage2.failed
        lost = stage2.failed
    cpu_s = time.thread_time() - cpu0 + stage2.cpu_s
    return time.perf_counter() - t_start, cpu_s, interrupted, lost
