"""Server-side batching as TF Serving does it (`--enable_batching`, `--batching_parameters_file`).

On a CPU a model answers a batch of N images in less time than N calls of one image (one pass over the
weights, one dispatch), so concurrent requests are merged. This follows TF Serving's BatchingSession over a
SharedBatchScheduler (tensorflow_serving/batching/batching_session.cc, tensorflow/core/kernels/batching_util/
shared_batch_scheduler.h): the same parameters, defaults, refusals, messages and status codes.

- One pool of `num_batch_threads` threads serves every queue, round robin. There is a queue per owner (a
  model version) and signature, so a batch is bound to the version its requests resolved, and a version
  that unloads still answers what was queued for it.
- Batch size counts examples (the inputs' 0th dimension), not requests. A request joins the open batch if its
  examples fit in `max_batch_size`, else it closes that batch and opens a new one; with
  `max_enqueued_batches` batches already waiting it is refused with UNAVAILABLE. A request of more examples
  than `max_batch_size` is refused with INVALID_ARGUMENT (TF Serving splits it only with
  `enable_large_batch_splitting`, which this server does not implement and refuses in the file).
- A thread takes a queue's front batch when it is closed (full, or followed by another), or when its first
  request has waited `batch_timeout_micros` (0: as soon as a thread is free, so batches grow only while every
  thread is busy).
- The merged batch is padded up to the smallest of `allowed_batch_sizes` that holds it, with copies of the
  first example of its last (non-empty) request (batching_session.cc); the padding rows are dropped from the
  answers, and each request gets its own rows back.

Where it differs:

- a batch the model refuses (say, one request's image does not decode) is run again request by request, so
  only the bad request fails; TF Serving fails every request of the batch;
- an unloading version's batches run at once instead of at their timeout (TF Serving's unload waits for its
  requests to be answered, which wait for the timeout);
- requests whose examples differ in shape beyond the 0th dimension queue apart instead of being padded
  (`pad_variable_length_inputs` is read but has nothing to do: the served signatures take [N] strings).
"""

import collections
import concurrent.futures
import dataclasses
import os
import threading
import time
import weakref
from typing import Callable, Dict, Hashable, List, NamedTuple, Optional, Tuple

import grpc
import numpy as np

from serving.config import read_text_proto
from serving.errors import ServingError, invalid
from serving.tf_serving_protos import BatchingParameters

# TF Serving's defaults for fields the file leaves unset (SharedBatchScheduler::QueueOptions and ::Options).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"

Inputs = Dict[str, np.ndarray]
Run = Callable[[Inputs], Inputs]  # a signature: merged inputs -> outputs, each with one row per example


def schedulable_cpus() -> int:
    """The CPUs this process may run on: TF Serving's port::MaxParallelism(), num_batch_threads' default."""
    return len(os.sched_getaffinity(0))


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with TF Serving's defaults filled in; `BatchingOptions()` is `--enable_batching`
    without a parameters file."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=schedulable_cpus)
    allowed_batch_sizes: Tuple[int, ...] = ()
    thread_pool_name: str = "model_server_batch_threads"  # server.cc's name when no file is given

    def padded_size(self, examples: int) -> int:
        """The smallest allowed batch size that holds `examples` (itself when no sizes are set, or none)."""
        return next((size for size in self.allowed_batch_sizes if size >= examples), examples) if examples else 0


def read_parameters(path: str) -> BatchingOptions:
    """Parses and checks a --batching_parameters_file (TF Serving's BatchingParameters text proto); ValueError
    with one line for an unreadable file, an unknown field, or values TF Serving refuses (in its words)."""
    parameters = read_text_proto(path, BatchingParameters(), "batching parameters")

    def value(field: str, default):
        return getattr(parameters, field).value if parameters.HasField(field) else default

    options = BatchingOptions(
        max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
        batch_timeout_micros=value("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
        max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
        num_batch_threads=value("num_batch_threads", schedulable_cpus()),
        allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
        thread_pool_name=value("thread_pool_name", DEFAULT_THREAD_POOL_NAME),
    )
    problem = _problem(options, value("enable_large_batch_splitting", False))
    if problem:
        raise ValueError(f"batching parameters {path}: {problem}")
    return options


def _problem(options: BatchingOptions, large_batch_splitting: bool) -> Optional[str]:
    """Why TF Serving would refuse these options (its words), or None."""
    for field in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
        if getattr(options, field) < 1:
            return f"{field} must be positive; was {getattr(options, field)}"
    if options.batch_timeout_micros < 0:
        return f"batch_timeout_micros must be non-negative; was {options.batch_timeout_micros}"
    if large_batch_splitting:
        return (
            "enable_large_batch_splitting is not supported by this server: leave it unset or false (a request "
            "over max_batch_size is then refused, as TF Serving does without it)"
        )
    sizes = options.allowed_batch_sizes
    if any(size < 1 for size in sizes):
        return "allowed_batch_sizes entries must be positive"
    if any(later <= earlier for earlier, later in zip(sizes, sizes[1:])):
        return "allowed_batch_sizes entries must be monotonically increasing"
    if sizes and sizes[-1] != options.max_batch_size:
        return (
            f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was {sizes[-1]}; "
            f"expected {options.max_batch_size}"
        )
    return None


class BatchShape(NamedTuple):
    """One model call made by the batcher: requests merged, their examples, the batch size after padding."""

    requests: int
    examples: int
    padded: int


class _Task:
    """One request waiting in a queue; its answer (its own rows of every output) comes through `future`."""

    def __init__(self, inputs: Inputs, size: int):
        self.inputs = inputs
        self.size = size
        self.future: concurrent.futures.Future = concurrent.futures.Future()


class _Batch:
    def __init__(self):
        self.tasks: List[_Task] = []
        self.size = 0
        self.started = 0.0  # when its first task arrived (time.monotonic)


class _Queue:
    """A queue's batches, oldest first; the last is open (it may be empty), the others are closed."""

    def __init__(self, owner: Hashable, run: Run):
        self.owner = owner
        self.run = run
        self.batches = collections.deque([_Batch()])


def task_size(inputs: Inputs) -> int:
    """The examples a request holds: its inputs' common 0th dimension (TF Serving's checks and messages)."""
    if not inputs:
        raise invalid("Batching Run() must have at least one input tensor")
    if any(value.ndim == 0 for value in inputs.values()):
        raise invalid("Batching Run() input tensors must have at least one dimension")
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class Batcher:
    """TF Serving's shared batch scheduler: queues of requests, merged into batches that a fixed pool of
    threads runs.

    `history` counts the model calls it made by BatchShape, so tests and benchmarks can see what was merged.
    """

    def __init__(self, options: BatchingOptions):
        self.options = options
        self.history: collections.Counter = collections.Counter()
        self._timeout = options.batch_timeout_micros / 1e6
        self._queues: Dict[Hashable, _Queue] = {}  # insertion order is the round robin: a served queue goes last
        self._closed = weakref.WeakSet()  # owners whose batches are due at once; forgotten with the owner
        self._changed = threading.Condition()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{options.thread_pool_name}_{number}", daemon=True)
            for number in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, owner: Hashable, signature: str, run: Run, inputs: Inputs) -> concurrent.futures.Future:
        """Queues a request for `owner`'s `signature` (`run` computes it on merged inputs); its future gives the
        request's rows of each output, or the error that failed it. Refuses at once, as TF Serving does, a
        request over max_batch_size (INVALID_ARGUMENT) and one that finds the queue full (UNAVAILABLE)."""
        size = task_size(inputs)
        limit = self.options.max_batch_size
        if size > limit:
            raise invalid(f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size)
        shapes = tuple(sorted((name, value.dtype.str, value.shape[1:]) for name, value in inputs.items()))
        key = (owner, signature, shapes)
        with self._changed:
            if self._stopping:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(owner, run)
            batch = queue.batches[-1]
            if batch.size + size > limit:
                if len(queue.batches) >= self.options.max_enqueued_batches:
                    raise ServingError(
                        grpc.StatusCode.UNAVAILABLE,
                        "The batch scheduling queue to which this task was submitted is full; currently "
                        f"{len(queue.batches)} batches enqueued and max_enqueued_batches is "
                        f"{self.options.max_enqueued_batches}",
                    )
                batch = _Batch()
                queue.batches.append(batch)
            if not batch.tasks:
                batch.started = time.monotonic()
            batch.tasks.append(task)
            batch.size += size
            self._changed.notify_all()
        return task.future

    def close(self, owner: Hashable) -> None:
        """Makes `owner`'s batches due at once, now and for any request still to come for it (its version is
        unloading): they run, none is dropped or kept waiting. `owner` must be weakly referenceable."""
        with self._changed:
            self._closed.add(owner)
            self._changed.notify_all()

    @property
    def queued(self) -> int:
        """Requests waiting for a batch thread."""
        with self._changed:
            return sum(len(batch.tasks) for queue in self._queues.values() for batch in queue.batches)

    def stop(self) -> None:
        """Runs every queued batch, then ends the threads."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _serve(self) -> None:
        while True:
            with self._changed:
                taken, wait = self._take(time.monotonic())
                while taken is None:
                    if self._stopping and not self._queues:
                        return
                    self._changed.wait(wait)
                    taken, wait = self._take(time.monotonic())
            queue, batch = taken
            self._answer(queue.run, batch.tasks)

    def _take(self, now: float) -> Tuple[Optional[Tuple[_Queue, _Batch]], Optional[float]]:
        """The first due batch in round-robin order, removed from its queue; else None and how long until the
        earliest open batch is due (None: no batch is waiting). Called with the lock held."""
        wait = None
        for key, queue in self._queues.items():
            batch = queue.batches[0]
            due_in = (
                0.0
                if len(queue.batches) > 1
                or batch.size >= self.options.max_batch_size
                or self._stopping
                or queue.owner in self._closed
                else batch.started + self._timeout - now
            )
            if due_in <= 0:
                queue.batches.popleft()
                del self._queues[key]
                if queue.batches:  # the rest waits its turn behind the other queues; an empty queue is dropped
                    self._queues[key] = queue
                return (queue, batch), None
            wait = due_in if wait is None else min(wait, due_in)
        return None, wait

    def _answer(self, run: Run, tasks: List[_Task]) -> None:
        """Runs the tasks as one batch and gives each its rows; when the batch fails, runs them one by one so
        that only the tasks that fail alone get the error."""
        try:
            answers = self._run(run, tasks)
        except Exception as error:  # whatever failed the batch: a bad input, or the merge itself
            if len(tasks) == 1:
                tasks[0].future.set_exception(error)
                return
            for task in tasks:
                self._answer(run, [task])
            return
        for task, answer in zip(tasks, answers):
            task.future.set_result(answer)

    def _run(self, run: Run, tasks: List[_Task]) -> List[Inputs]:
        examples = sum(task.size for task in tasks)
        padded = self.options.padded_size(examples)
        with self._changed:
            self.history[BatchShape(len(tasks), examples, padded)] += 1
        last = next((task.inputs for task in reversed(tasks) if task.size), tasks[-1].inputs)  # one with a row
        merged = {
            name: np.concatenate(
                [task.inputs[name] for task in tasks] + [np.repeat(last[name][:1], padded - examples, 0)]
            )
            for name in last
        }
        outputs = run(merged)
        for value in outputs.values():
            if value.ndim == 0 or value.shape[0] != padded:
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of "
                    "the input tensors",
                )
        ends = np.cumsum([task.size for task in tasks])
        return [
            {name: value[end - task.size : end] for name, value in outputs.items()} for task, end in zip(tasks, ends)
        ]
