"""The Ray backend: the same workers, as Ray actors on every node of a cluster.

Only the worker side moves. The driver keeps everything ``Pool`` and ``Job`` keep with
the local backend (queue, batching, splitting plans, packing, retries, accounting, the
lock, the outputs, progress, the summary); this module is a ``pool.Backend`` that turns
its calls into actor calls and the actors' messages into the same event tuples
``ProcessBackend`` reads from its pipes.

Each actor is a relay to a worker process of its own, the very child the local pool
starts (``pool.ProcessBackend``, running ``engine.worker_main`` over its pipe):
``push`` writes the driver's messages to that pipe, ``pull`` hands back what the
worker sent. One worker implementation, so the two backends cannot drift apart. What
a pipe cannot carry across machines is translated here, at the edge:
- a long recording's samples (a PCM file the splitting worker wrote on its own node)
  go back to the driver with the split plan and into the object store, owned by the
  driver, so they outlive the actor that made them; each node that gets a piece
  writes them once to a local file, which the engine memory-maps as before;
- with ``ship_audio``, each file's bytes go through the object store too, for nodes
  that cannot see the driver's files;
- a failure names the node it happened on.

Every node plans its own layout from its own hardware (``plan_nodes``: a task pinned to
the node runs the same detection and layout code); the driver then starts one actor per
planned process there, asking Ray for as many CPUs as its CPU set, pinned to it, with
the thread environment given to Ray before the actor's process starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from epyc_whisper.engine import WorkerSpec
from epyc_whisper.errors import EnvironmentProblem, EpycWhisperError

#: What a user without Ray is told to run.
RAY_HINT = "pip install 'epyc-whisper[ray]'"

#: Ray takes the loopback address as the node IP when this is "0" (measured with Ray
#: 2.60.0: without it, a cluster given node_ip_address 127.0.0.1 still put its GCS on
#: eth0). Set for a Ray instance we start ourselves, so nothing we start listens beyond
#: loopback unless the user gave a cluster address.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: How long a cluster address may take to answer before the run gives up (exit 3).
CONNECT_TIMEOUT_S = 5.0

#: How long an address that accepts the connection has to answer as Ray's GCS, a gRPC
#: server, does at once: with its HTTP/2 SETTINGS frame. ray.init itself would wait
#: about 40 s a try on anything else (measured with Ray 2.60.0: 83 s for a port that
#: accepts and stays silent, 89 s for an HTTP/1 server, with the 2 tries below).
PROBE_TIMEOUT_S = 2.0

#: Tries to reach a cluster's GCS once its port answers (RAY_NUM_REDIS_GET_RETRIES).
GCS_TRIES = 2

#: The client's HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113, 3.4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

#: The longest an actor's pull waits for a message before answering with none: the
#: driver learns of an actor's death through its outstanding pull.
PULL_WAIT_S = 0.5

#: How often the driver looks for nodes that joined the cluster during the run.
JOIN_POLL_S = 2.0

_ENDED = ("__ended__",)  # the relay's last message: ("__ended__", exit code)


def import_ray() -> Any:
    """Ray, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise EnvironmentProblem(
            f"--backend ray needs Ray, which is not installed: {RAY_HINT}"
        ) from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at ``address`` ("auto": the one this machine runs), or start a
    private one-node Ray on loopback when no address is given."""
    if not address:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    else:
        # Read when Ray is imported: the tries (about a second each) ray.init makes to
        # reach the cluster's GCS, 20 by default. An address that accepts a connection
        # but is no Ray (a proxy, another service) then fails in seconds, not 20 s.
        os.environ.setdefault("RAY_NUM_REDIS_GET_RETRIES", str(GCS_TRIES))
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        check_address(address)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if not address:
        kwargs |= {"include_dashboard": False, "num_cpus": len(os.sched_getaffinity(0))}
    _errors_to_stderr(ray)
    # ray.init replaces the SIGTERM handler with one that exits at once; ours finishes
    # the files in flight first (exit 143), as with the local backend.
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        # "local": a new private instance even when RAY_ADDRESS or a `ray start` cluster
        # on this machine exists (the user asked for none of them).
        ray.init(address=address or "local", **kwargs)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError: all one message
        where = f"--address {address}" if address else "a local Ray"
        raise EnvironmentProblem(f"{where}: could not connect to Ray: {_first_line(e)}") from None
    finally:
        if main and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return ray


def _errors_to_stderr(ray: Any) -> None:
    """Ray's driver prints the cluster's error messages ("A worker died or was killed
    ...") to stdout, where --jsonl writes its records: send them to stderr, with our
    other messages. (A private function of Ray's; left alone if it moves.)"""
    worker: Any = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original(dict(data, is_err=True), ignore_prefix)

    to_stderr._to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def check_address(address: str) -> None:
    """A TCP connect to the address, then an HTTP/2 greeting, each with a deadline:
    ray.init waits far longer than a cron run should for an address where nothing
    listens, or where something that is no Ray cluster accepts the connection."""
    if address.startswith("ray://"):
        raise EnvironmentProblem(
            f"--address {address}: Ray Client addresses are not supported; give the "
            "cluster's GCS address (host:port, as `ray start --head` prints it)"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EnvironmentProblem(f"--address {address}: expected host:port or auto")
    try:
        conn = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise EnvironmentProblem(
            f"--address {address}: no Ray cluster answers there ({why}); start one with "
            "`ray start --head` or give its address"
        ) from None
    with conn:
        why = _greets_as_grpc(conn, time.monotonic() + PROBE_TIMEOUT_S)
    if why:
        raise EnvironmentProblem(
            f"--address {address}: something accepts connections there, but it is no Ray "
            f"cluster ({why}); give the address `ray start --head` printed"
        )


def _greets_as_grpc(conn: socket.socket, deadline: float) -> str:
    """Why the server at the other end of ``conn`` is not an HTTP/2 (gRPC) server, as
    Ray's GCS is: "" when its first frame, before ``deadline``, is SETTINGS."""
    head = b""
    try:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        conn.sendall(_H2_PREFACE)
        while len(head) < 9:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return "it closed the connection"
            head += chunk
    except TimeoutError:
        return f"no HTTP/2 greeting within {PROBE_TIMEOUT_S:g} s" + (
            "" if not head else f", only {len(head)} bytes"
        )
    except OSError as e:
        return e.strerror or type(e).__name__
    # A frame header: 3 bytes length, type (4: SETTINGS), flags, stream 0.
    if head[3] != 4 or int.from_bytes(head[5:9], "big") & 0x7FFFFFFF != 0:
        return f"it answered {head[:9]!r}, not with HTTP/2"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------- planning
@dataclass
class NodePlan:
    """One node and what runs there. Attributes: node_id: Ray's; name: a name shown to
    the user (the hostname, with Ray's node name when several nodes share a host);
    address: its IP; ray_cpus: the CPUs it gave Ray; hardware, layout: what the same
    detection and layout code found and planned on that node; env: the thread
    environment its actors start with; host: its hostname."""

    node_id: str
    name: str
    address: str
    ray_cpus: int
    hardware: Any
    layout: Any
    env: dict[str, str] = field(default_factory=dict)
    env_sources: dict[str, str] = field(default_factory=dict)  # name -> "layout" | "user"
    host: str = ""  # its hostname


def plan_here(settings: Any, ray_cpus: int) -> tuple[Any, Any, dict[str, str], str]:
    """Run on a node: its hardware, its layout, its thread environment, its hostname.
    A node that gave Ray fewer CPUs than it has (``ray start --num-cpus``) is planned
    on that many, as a container quota is: its actors could never be placed otherwise."""
    from epyc_whisper.hardware import detect
    from epyc_whisper.layout import check_room, plan, thread_env
    from epyc_whisper.measured import recall

    hw = detect()
    if 0 < ray_cpus < hw.usable_cpus:
        hw = detect(allowed_cpus=sorted(hw.allowed_cpus)[:ray_cpus])
        hw.notes.append(f"this node gave Ray {ray_cpus} CPUs: planned on that many")
    layout = plan(hw, settings, recall(settings.model, settings.compute_type))
    check_room(layout, settings)
    return hw, layout, thread_env(layout), socket.gethostname()


def _usable(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live nodes of ``ray.nodes()`` that have a CPU to give."""
    return [n for n in nodes if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]


def _plan_ref(ray: Any, node: dict[str, Any], settings: Any) -> Any:
    """``plan_here`` started on ``node`` (its ObjectRef)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(plan_here)
    return task.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    ).remote(settings, int(node["Resources"]["CPU"]))


def _node_plan(
    n: dict[str, Any], found: tuple[Any, Any, dict[str, str], str], shared: bool, taken: list[str]
) -> NodePlan:
    """A node's plan from what ``plan_here`` found there. ``shared``: another node runs
    on the same host (then Ray's node name tells them apart); ``taken``: names in use."""
    from epyc_whisper.envsetup import plan_env

    hw, layout, wanted, host = found
    name = f"{host}/{n.get('NodeName') or n['NodeID'][:8]}" if shared else host
    if name in taken:
        name = f"{host}/{n['NodeID'][:8]}"
    # A value the user exported when starting this run is theirs on every node too.
    planned = plan_env(wanted, os.environ)
    return NodePlan(
        n["NodeID"],
        name,
        n.get("NodeManagerAddress", ""),
        int(n["Resources"]["CPU"]),
        hw,
        layout,
        {v.name: v.value for v in planned},
        {v.name: v.source for v in planned},
        host,
    )


def plan_nodes(ray: Any, settings: Any) -> list[NodePlan]:
    """Every live node with a CPU, planned by itself."""
    nodes = _usable(ray.nodes())
    if not nodes:
        raise EnvironmentProblem("the Ray cluster has no live node with a CPU")
    refs = [_plan_ref(ray, n, settings) for n in nodes]
    try:
        found = ray.get(refs, timeout=120)
    except Exception as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, EpycWhisperError):  # a layout that does not fit, say
            raise cause from None
        raise EnvironmentProblem(f"planning the Ray nodes failed: {_first_line(e)}") from None
    hosts = [f[3] for f in found]
    plans: list[NodePlan] = []
    for n, f in zip(nodes, found, strict=True):
        plans.append(_node_plan(n, f, hosts.count(f[3]) > 1, [p.name for p in plans]))
    return plans


def cluster_doc(plans: list[NodePlan]) -> dict[str, Any]:
    """What ``detect --backend ray`` shows: each node as ``detect`` shows one machine,
    and the cluster's total."""
    nodes = [
        {
            "name": p.name,
            "node_id": p.node_id,
            "address": p.address,
            "ray_cpus": p.ray_cpus,
            "hardware": p.hardware.to_dict(),
            "layout": p.layout.to_dict(),
            "thread_env": {
                k: {"value": v, "source": p.env_sources.get(k, "layout"), "in_effect": None}
                for k, v in p.env.items()
            },
        }
        for p in plans
    ]
    total = {
        "nodes": len(plans),
        "processes": sum(len(p.layout.processes) for p in plans),
        "workers": sum(p.layout.total_workers for p in plans),
        "cpus": sum(len(c) for p in plans for c in (q.cpus for q in p.layout.processes)),
        "memory_bytes": sum(p.layout.total_bytes for p in plans),
    }
    return {"nodes": nodes, "total": total}


def node_specs(
    plans: list[NodePlan],
    make: Any,
    specs: list[WorkerSpec] | None = None,
    where: list[tuple[NodePlan, dict[str, str]]] | None = None,
) -> tuple[list[WorkerSpec], list[tuple[NodePlan, dict[str, str]]]]:
    """One WorkerSpec per planned process of every node (``make(layout)`` builds a
    node's, as pool.make_specs does locally), numbered across the cluster after those
    of ``specs`` (the actors of a run that a node joins: extended in place); long files
    are cut into at least as many pieces as the cluster has CT2 workers (the new specs
    count the joined node too; actors already started keep their figure)."""
    specs = [] if specs is None else specs
    where = [] if where is None else where
    first = len(specs)
    for node in plans:
        for spec in make(node.layout):
            spec.index = len(specs)
            specs.append(spec)
            where.append((node, node.env))
    total = sum(s.workers for s in specs)
    for spec in specs[first:]:
        spec.pool_workers = total
    return specs, where


def build(
    settings: Any, model_path: str, options: dict[str, Any], **spec_options: Any
) -> tuple[RayBackend, list[WorkerSpec], list[NodePlan]]:
    """Connect, plan every node, and make the backend: what the CLI's Job and the Python
    Transcriber both do for ``backend="ray"``. ``spec_options`` go to pool.make_specs.
    The backend plans and adds a node that joins the cluster during the run the same
    way."""
    from epyc_whisper.pool import make_specs

    def make(layout: Any) -> list[WorkerSpec]:
        return make_specs(layout, model_path, options, **spec_options)

    ray = connect(settings.address)
    nodes = plan_nodes(ray, settings)
    specs, where = node_specs(nodes, make)
    backend = RayBackend(ray, specs, where, bool(settings.ship_audio), grow=(settings, make))
    return backend, specs, nodes


# --------------------------------------------------------------------------- the actor
def _pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process, not only the calling one: Ray runs actor
    methods on threads of its own."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


class WorkerActor:
    """One model process on one node (wrapped by ray.remote in ``RayBackend.start``): a
    relay between the driver and a worker process of its own, the very child the local
    pool starts (``pool.ProcessBackend``), which runs ``engine.worker_main`` over its
    pipe. Run on a thread of the actor's own process instead, the same files took 11%
    more CPU time and 24% more wall time than the local pool on the same 2 CPUs
    (tests/ray_bench.py): the worker shared its process with Ray's core worker."""

    def __init__(self, spec: WorkerSpec, node: str) -> None:
        if spec.pin and spec.cpus:
            _pin_process(spec.cpus)
        self.node = node
        self.tmp = tempfile.mkdtemp(prefix="epyc-whisper-ray-")
        spec.tmp_dir = self.tmp  # split recordings park their samples on this node
        self.outbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.conn: Any = None  # the child's pipe, once started
        self.send_lock = threading.Lock()
        self.pcm: OrderedDict[str, str] = OrderedDict()  # object token -> local file
        self.shipped: dict[int, tuple[str, str]] = {}  # task id -> (local copy, path)
        self.lock = threading.Lock()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(spec, started), daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, spec: WorkerSpec, started: threading.Event) -> None:
        """Start the child and relay what it sends until it exits. The child is started
        from this thread, which lives as long as the actor: PR_SET_PDEATHSIG ends it
        when the thread that started it ends (and with the actor's process)."""
        import shutil

        from epyc_whisper.pool import ProcessBackend

        code: int | None = None
        try:
            # The actor's environment holds the node's thread variables (runtime_env).
            child = ProcessBackend([spec], env=dict(os.environ))
            child.start(0)
            self.conn = child.conns[0]
            started.set()
            while code is None:
                for ev in child.events(1.0):
                    if ev[1] == "exit":
                        code = -1 if ev[2] is None else int(ev[2])
                        break
                    self.outbox.put(ev[1:])
        finally:
            started.set()
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.outbox.put((_ENDED[0], -1 if code is None else code))

    def push(self, msg: tuple[Any, ...]) -> None:
        """A message from the driver; a batch's object-store data is made local first."""
        if msg[0] == "batch":
            msg = ("batch", [self._localise(t) for t in msg[1]])
        with self.send_lock:  # Ray may run several pushes at once
            try:
                self.conn.send(msg)
            except (OSError, EOFError, AttributeError):
                pass  # the child is gone: the relay reports its exit

    def _localise(self, task: dict[str, Any]) -> dict[str, Any]:
        import ray

        if "pcm_ref" in task:
            token = task["piece"]["pcm"]
            ref = task.pop("pcm_ref")[0]
            with self.lock:
                if token not in self.pcm:
                    path = os.path.join(self.tmp, f"{len(os.listdir(self.tmp))}-piece.pcm")
                    with open(path, "wb") as f:
                        f.write(ray.get(ref))
                    self.pcm[token] = path
                    # The pieces of a split file come at the front of the queue, close
                    # together: a few recent recordings are all a node needs to keep.
                    while len(self.pcm) > 4:
                        with contextlib.suppress(OSError):
                            os.unlink(self.pcm.popitem(last=False)[1])
                self.pcm.move_to_end(token)
                task["piece"] = task["piece"] | {"pcm": self.pcm[token]}
        if "ship_ref" in task:
            ref = task.pop("ship_ref")[0]
            suffix = os.path.splitext(task["path"])[1]
            local = os.path.join(self.tmp, f"shipped-{task['id']}{suffix}")
            with open(local, "wb") as f:
                f.write(ray.get(ref))
            self.shipped[task["id"]] = (local, task["path"])
            task["path"] = local
        return task

    def pull(self, wait: float = PULL_WAIT_S) -> list[tuple[Any, ...]]:
        """What the worker sent since the last pull (none after ``wait`` seconds)."""
        out: list[tuple[Any, ...]] = []
        try:
            out.append(self.outbox.get(timeout=wait))
            while True:
                out.append(self.outbox.get_nowait())
        except queue.Empty:
            pass
        return [self._translate(m) for m in out]

    def _translate(self, msg: tuple[Any, ...]) -> tuple[Any, ...]:
        kind = msg[0]
        if kind == "ready":
            return ("ready", msg[1] | {"node": self.node})
        if kind == "split":
            plan = dict(msg[2])
            path = plan["pcm"]
            with open(path, "rb") as f:
                plan["pcm_bytes"] = f.read()
            os.unlink(path)
            plan["pcm"] = f"ray-object:{self.node}:{os.path.basename(path)}"
            msg = (kind, msg[1], plan, *msg[3:])
        if kind in ("done", "failed", "split") and msg[1] in self.shipped:
            local, path = self.shipped.pop(msg[1])
            with contextlib.suppress(OSError):
                os.unlink(local)
            if kind == "failed":
                msg = (kind, msg[1], msg[2].replace(local, path), *msg[3:])
        if kind == "failed":
            msg = (kind, msg[1], f"{msg[2]} (on node {self.node})", *msg[3:])
        return msg


# --------------------------------------------------------------------------- driver side
class RayBackend:
    """pool.Backend over Ray actors, one per planned process of every node."""

    def __init__(
        self,
        ray: Any,
        specs: list[WorkerSpec],
        where: list[tuple[NodePlan, dict[str, str]]],
        ship_audio: bool = False,
        grow: tuple[Any, Any] | None = None,
    ) -> None:
        self.ray = ray
        self.specs = specs
        self.where = where
        self.ship_audio = ship_audio
        # Nodes that join during the run: (settings, make) plan and make their actors'
        # specs as build() did for the first ones (None: the workers stay as given).
        self.grow = grow
        self.known = {node.node_id for node, _env in where}  # planned, or being planned
        self.planning: dict[Any, dict[str, Any]] = {}  # plan_here's ref -> the node
        self.next_look = time.monotonic() + JOIN_POLL_S
        self.actors: dict[int, Any] = {}
        self.pulls: dict[int, Any] = {}  # index -> its outstanding pull
        self.objects: dict[str, Any] = {}  # PCM token -> ObjectRef (owned here)
        self.early: list[tuple[Any, ...]] = []  # events made here (a file not shipped)
        self.actor_class = ray.remote(WorkerActor)

    def start(self, index: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        spec = self.specs[index]
        node, env = self.where[index]
        actor = self.actor_class.options(
            num_cpus=max(1, len(spec.cpus)),
            # push and pull run at once: pull waits for messages while push delivers.
            max_concurrency=4,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            # Given to the actor's process when it starts, before anything loads OpenMP.
            runtime_env={"env_vars": env},
        ).remote(spec, node.name)
        self.actors[index] = actor
        self.pulls[index] = actor.pull.remote()

    def send_batch(self, index: int, batch: list[dict[str, Any]]) -> None:
        actor = self.actors.get(index)
        if actor is None:
            return
        wire = []
        for t in batch:
            t = dict(t)
            if "piece" in t and t["piece"]["pcm"] in self.objects:
                t["pcm_ref"] = [self.objects[t["piece"]["pcm"]]]  # a list: not resolved
            elif "piece" not in t and self.ship_audio:
                try:
                    with open(t["path"], "rb") as f:
                        t["ship_ref"] = [self.ray.put(f.read())]
                except OSError as e:
                    why = e.strerror or type(e).__name__
                    self.early += [
                        (index, "start", t["id"]),
                        (index, "failed", t["id"], f"--ship-audio: cannot read it ({why})", {}),
                    ]
                    continue
            wire.append(t)
        if wire:
            actor.push.remote(("batch", wire))
        elif batch:
            self.early.append((index, "want", self.specs[index].workers))

    def stop(self, index: int) -> None:
        actor = self.actors.get(index)
        if actor is not None:
            actor.push.remote(("stop",))

    def kill(self, index: int) -> None:
        actor = self.actors.get(index)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def alive(self) -> list[int]:
        return list(self.actors)

    def has_pipes(self) -> bool:
        return bool(self.pulls)

    def release(self, token: str) -> None:
        """The driver is done with a split recording: its samples may leave the store."""
        self.objects.pop(token, None)

    def joined(self) -> list[tuple[Any, ...]]:
        """The pool's events for nodes that joined since the last look: every
        JOIN_POLL_S, one ``ray.nodes()`` call (a GCS query) finds them; each is planned
        by itself on that node, as at the start, without holding up the driver's loop;
        once its plan is back, its actors' specs are added and the pool starts them."""
        if self.grow is None:
            return []
        settings, make = self.grow
        now = time.monotonic()
        if now >= self.next_look:
            self.next_look = now + JOIN_POLL_S
            try:
                nodes = _usable(self.ray.nodes())
            except Exception:  # the GCS did not answer this time: look again later
                nodes = []
            for n in nodes:
                if n["NodeID"] not in self.known:
                    self.known.add(n["NodeID"])
                    self.planning[_plan_ref(self.ray, n, settings)] = n
        if not self.planning:
            return []
        done, _ = self.ray.wait(list(self.planning), num_returns=len(self.planning), timeout=0)
        out: list[tuple[Any, ...]] = []
        for ref in done:
            n = self.planning.pop(ref)
            try:
                found = self.ray.get(ref)
            except Exception as e:  # it left again, or its layout does not fit
                cause = getattr(e, "cause", None) or e
                who = n.get("NodeName") or n.get("NodeManagerAddress") or n["NodeID"][:8]
                why = _first_line(cause)
                out.append((None, "notice", f"ray: node {who} joined but is not used: {why}"))
                continue
            plans = [node for node, _env in self.where]
            shared = any(p.host == found[3] for p in plans)
            node = _node_plan(n, found, shared, [p.name for p in plans])
            first = len(self.specs)
            node_specs([node], make, self.specs, self.where)
            out.append((None, "notice", f"ray: node {node.name} joined: {node.layout.summary()}"))
            out += [(i, "joined") for i in range(first, len(self.specs))]
        return out

    def events(self, timeout: float) -> list[tuple[Any, ...]]:
        out, self.early = self.early + self.joined(), []
        if not self.pulls:
            time.sleep(0 if out else timeout)
            return out
        by_ref = {ref: i for i, ref in self.pulls.items()}
        ready, rest = self.ray.wait(list(by_ref), num_returns=1, timeout=0 if out else timeout)
        if ready and rest:
            more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        for ref in ready:
            i = by_ref[ref]
            try:
                msgs = self.ray.get(ref)
            except Exception:  # the actor (or its node) died: as a pipe's EOF
                self._gone(i)
                out.append((i, "exit", None))
                continue
            ended: int | None = None
            for m in msgs:
                if m[0] == _ENDED[0]:
                    ended = m[1]
                    continue
                if m[0] == "split":
                    plan = dict(m[2])
                    self.objects[plan["pcm"]] = self.ray.put(plan.pop("pcm_bytes"))
                    m = (m[0], m[1], plan, *m[3:])
                out.append((i, *m))
            if ended is not None:
                # The actor's worker process exited (after "bye", a model that would
                # not load, or killed): the actor goes with it, as a pipe's EOF.
                self.kill(i)
                self._gone(i)
                out.append((i, "exit", ended))
            else:
                self.pulls[i] = self.actors[i].pull.remote()
        return out

    def _gone(self, i: int) -> None:
        self.pulls.pop(i, None)
        self.actors.pop(i, None)

    def shutdown(self) -> None:
        for i in list(self.actors):
            self.stop(i)
        deadline = time.monotonic() + 5
        while self.pulls and time.monotonic() < deadline:
            self.events(0.25)
        for i in list(self.actors):
            self.kill(i)
        self.actors.clear()
        self.pulls.clear()
        self.objects.clear()
        self.ray.shutdown()
