"""The stream's loop for a runner with requests in flight (``runner.pipeline_depth`` > 1: a remote
runner, ``serve.remote.RemoteRunner``): the next frame is taken, preprocessed and sent while the
previous request is still on the server.

* Submitting, in the calling thread: take a free slot (at most ``depth`` batches in flight), then
  the newest frame(s), crop, preprocess and ``submit`` (``runner.infer_async``: a future).
* Completing, in order: when a batch's future is done (its done-callback, in the thread that
  received the answer), every leading batch whose answer is in is completed *in submission order*
  (one that came back early waits for the ones before it): probabilities → smoothing →
  ``FrameResult`` → every sink → progress, then its slot is free. One completer at a time.

Completing where the answer arrives, not on a thread of its own, saves a thread hand-off per frame
(CPU the streams of a busy server box do not have). A frame's latency is stamped when its answer
is in hand and its turn has come, right before the sinks. A slot is taken before the frame, so a
frame never waits for a slot after it was taken (in real-time mode, frames that arrive while every
slot is busy replace each other in the source's mailbox and count as drops, as in the one-thread
loop). The first failure while completing (a ``ServerLost`` from a future, a sink's error) stops
the stream: nothing after it is written, so the outputs hold every frame before it. Ctrl-C (in the
submitting thread) stops taking frames and waits for the batches in flight to be completed.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from edgeskd.errors import ServerLost

_POLL_S = 0.1


class InOrder:
    """Completes submitted batches in submission order, in whichever thread finishes a future."""

    def __init__(self, process: Any, sinks: list[Any], progress: Callable[[Any], None] | None) -> None:
        self.process, self.sinks, self.progress = process, sinks, progress
        self.depth = process.depth
        self.cond = threading.Condition()
        self.pending: collections.deque = collections.deque()   # submitted, not yet completed
        self.open = 0                                # batches in flight or being completed
        self.completing = False                      # one completer at a time
        self.failed: BaseException | None = None     # the first error: nothing after it is written
        self.aborted = False                         # the caller gave up (a second Ctrl-C, its own error)
        self.cpu_s = 0.0                             # CPU time spent completing on other threads
        self.submitter = threading.get_ident()       # whose own CPU time already counts what it completes

    # -- the submitting thread --------------------------------------------------------------------
    def take_slot(self) -> bool:
        """Block until a batch may be submitted; False once completing has failed."""
        with self.cond:
            while self.open >= self.depth and self.failed is None:
                self.cond.wait(_POLL_S)
            if self.failed is None:
                self.open += 1
            return self.failed is None

    def add(self, sub: Any) -> None:
        with self.cond:
            self.pending.append(sub)
        sub.logits.add_done_callback(self._complete_ready)   # runs now if the answer is already in

    def release_slot(self) -> None:
        """Give back a slot taken for a batch that was never submitted (the source ended, an error)."""
        with self.cond:
            self.open -= 1
            self.cond.notify_all()

    def wait_all(self) -> None:
        """Until every batch in flight is completed (or completing failed)."""
        with self.cond:
            while self.open > 0 and self.failed is None:
                self.cond.wait(_POLL_S)

    def abort(self) -> None:
        """Write nothing more; wait a moment for a result being written (before the sinks close)."""
        with self.cond:
            self.aborted = True
            self.cond.wait_for(lambda: not self.completing, timeout=1.0)

    # -- any thread whose future is done ----------------------------------------------------------
    def _complete_ready(self, _future: Any = None) -> None:
        while True:
            with self.cond:
                if self.completing or not self.pending or not self.pending[0].logits.done():
                    return
                if self.failed is not None or self.aborted:
                    self.pending.clear()
                    return
                sub = self.pending.popleft()
                self.completing = True
            error = self._complete(sub)
            with self.cond:
                self.completing = False
                self.open -= 1
                if error is not None:
                    self.failed = error   # the batches after it are dropped on the next turn
                self.cond.notify_all()

    def _complete(self, sub: Any) -> BaseException | None:
        t = time.thread_time()
        try:
            results = self.process.complete(sub)
            for r in results:
                for sink in self.sinks:
                    sink.write(r)
            if self.progress is not None:
                self.progress(results[-1])
            return None
        except BaseException as e:  # noqa: BLE001 - handed to the submitting thread, which raises or reports it
            return e
        finally:
            if threading.get_ident() != self.submitter:
                self.cpu_s += time.thread_time() - t   # one completer at a time: no race


def pump_in_flight(source: Any, process: Any, sinks: list[Any], batch: int,
                   progress: Callable[[Any], None] | None) -> tuple[float, float, bool, BaseException | None]:
    """Decode → submit → complete in order → every sink, until the source ends, Ctrl-C or a failure.
    Returns (wall s, CPU s, interrupted, the ``ServerLost`` that ended the stream or None); other
    errors raise here. CPU: this thread's, the completing (on other threads) and the runner's own
    threads' (``Runner.async_cpu_s``: the requests' work)."""
    t_start = time.perf_counter()
    cpu0 = time.thread_time()
    runner_cpu0 = process.runner_cpu_s
    order = InOrder(process, sinks, progress)
    source.start()
    interrupted = False
    lost: BaseException | None = None
    try:
        try:
            while order.take_slot():
                try:
                    items = source.get_batch(batch)
                    sub = process.submit(items) if items else None
                except BaseException:
                    order.release_slot()
                    raise
                if sub is None:
                    order.release_slot()
                    break
                order.add(sub)
        except KeyboardInterrupt:
            interrupted = True
        except ServerLost as e:   # the request could not even be sent
            lost = e
        order.wait_all()          # the batches in flight are still completed and written
    except BaseException:
        order.abort()             # a second Ctrl-C, or an error of this thread
        raise
    if isinstance(order.failed, KeyboardInterrupt):   # Ctrl-C while this thread completed a batch
        interrupted = True
    elif order.failed is not None:   # an earlier frame than this thread's own failure
        if not isinstance(order.failed, ServerLost):
            raise order.failed
        lost = order.failed
    cpu_s = time.thread_time() - cpu0 + order.cpu_s + process.runner_cpu_s - runner_cpu0
    return time.perf_counter() - t_start, cpu_s, interrupted, lost
