"""MXNet's parameter server on one machine: ``python -m d2lres.mxnet.launch --workers W -- COMMAND``.

A ``dist_sync`` job is a scheduler, S servers and W workers, each an ordinary process told its part
by the environment (``DMLC_ROLE``, ``DMLC_PS_ROOT_URI``/``DMLC_PS_ROOT_PORT``: the scheduler's
address, ``DMLC_NUM_SERVER``, ``DMLC_NUM_WORKER``). The scheduler and the servers only import
MXNet, which serves until the workers are done; each worker runs ``COMMAND`` (``d2lres train
--backend mxnet --no-sync-bn ...``), whose ``ParallelTrainer`` then uses the ``dist_sync`` kvstore.
MXNet's own ``tools/launch.py`` needs dmlc-core's tracker, which the wheel does not ship; this is
the local (loopback) case of it.

This launcher starts them all on 127.0.0.1 (free ports), gives worker ``i`` ``D2LRES_PROCESS_ID=i``
(the process that writes the run's files is 0: ``d2lres.parallel.process_rank``) and a node port
that makes the scheduler number it ``kv.rank == i`` (ps-lite ranks one host's nodes by port),
waits for the workers, and if any process fails, stops the others and exits with its status.

On several machines, start the same processes by hand (see README, "More than one device"): one
scheduler (``DMLC_ROLE=scheduler python -m d2lres.mxnet.launch --serve``), S servers
(``DMLC_ROLE=server``, the same command) and W workers (``DMLC_ROLE=worker D2LRES_PROCESS_ID=i
d2lres train ...``), all with the same ``DMLC_PS_ROOT_URI``/``_PORT``, ``DMLC_NUM_SERVER``,
``DMLC_NUM_WORKER``, and ``DMLC_NODE_HOST`` set to the machine's own address.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from ..errors import UserValueError
from ..loop.split import LOOPBACK, free_ports

#: Seconds the scheduler and servers may take to exit after the last worker finished.
SERVER_EXIT_TIMEOUT = 30.0
#: Seconds between SIGTERM and SIGKILL when stopping processes.
GRACE = 5.0


def environments(workers: int, servers: int = 1, contexts: int = 1, env: dict | None = None) -> dict[str, list[dict]]:
    """The environment of each process of a loopback ``dist_sync`` job:
    ``{"scheduler": [env], "server": [env] * servers, "worker": [env] * workers}``."""
    if workers < 1 or servers < 1 or contexts < 1:
        raise UserValueError(f"--workers, --servers and --contexts must be >= 1, got {workers}, {servers}, {contexts}")
    base = dict(os.environ if env is None else env)
    root, *ports = free_ports(1 + workers)
    base.update({"DMLC_PS_ROOT_URI": LOOPBACK, "DMLC_PS_ROOT_PORT": str(root), "DMLC_NUM_SERVER": str(servers),
                 "DMLC_NUM_WORKER": str(workers), "DMLC_NODE_HOST": LOOPBACK})
    for name in ("D2LRES_PROCESS_ID", "PORT"):
        base.pop(name, None)
    return {"scheduler": [{**base, "DMLC_ROLE": "scheduler"}],
            "server": [{**base, "DMLC_ROLE": "server"} for _ in range(servers)],
            "worker": [{**base, "DMLC_ROLE": "worker", "D2LRES_PROCESS_ID": str(i), "PORT": str(port),
                        "D2LRES_REPLICAS": str(contexts)} for i, port in enumerate(ports)]}


def serve_command() -> list[str]:
    """The scheduler's and a server's command (importing MXNet with ``DMLC_ROLE`` set serves)."""
    return [sys.executable, "-m", "d2lres.mxnet.launch", "--serve"]


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(command: list[str], workers: int, servers: int = 1, contexts: int = 1, *,
           timeout: float | None = None, stop_requests: list[int] | None = None) -> int:
    """Run ``command`` as ``workers`` dist_sync workers with a scheduler and ``servers`` servers on
    127.0.0.1; returns 0 when every worker succeeded, else the first failure's exit status (the
    other processes stopped). ``timeout``: seconds for the whole job (then everything is stopped; 124).
    ``stop_requests``: signal numbers a handler appends to (:func:`main`'s); on the first, every
    process is stopped and the result is 128 + that signal."""
    envs = environments(workers, servers, contexts)
    helpers = [subprocess.Popen(serve_command(), env=e) for e in envs["scheduler"] + envs["server"]]
    procs = [subprocess.Popen(command, env=e) for e in envs["worker"]]
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            helper_failed = [p.returncode for p in helpers if p.poll() not in (None, 0)]
            if failed or helper_failed:
                which = "a worker" if failed else "the scheduler or a server"
                print(f"d2lres.mxnet.launch: {which} exited with status {(failed or helper_failed)[0]}; "
                      f"stopping the others", file=sys.stderr)
                _stop(procs + helpers)
                return (failed or helper_failed)[0]
            if all(c == 0 for c in codes):
                break
            if stop_requests:
                print(f"d2lres.mxnet.launch: interrupted by {signal.Signals(stop_requests[0]).name}; stopping every "
                      f"process", file=sys.stderr)
                _stop(procs + helpers)
                return 128 + stop_requests[0]
            if deadline is not None and time.monotonic() > deadline:
                print(f"d2lres.mxnet.launch: the job took longer than {timeout:.0f} s; stopping it", file=sys.stderr)
                _stop(procs + helpers)
                return 124
            time.sleep(0.1)
        end = time.monotonic() + SERVER_EXIT_TIMEOUT
        for p in helpers:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        _stop(helpers)
        return 0
    except BaseException:  # Ctrl-C, SIGTERM as KeyboardInterrupt/SystemExit: take the children down too
        _stop(procs + helpers)
        raise


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m d2lres.mxnet.launch",
                                description="MXNet dist_sync on this machine: a scheduler, servers and workers on "
                                            "127.0.0.1, each worker running COMMAND")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--servers", type=int, default=1, help="parameter servers (default 1)")
    p.add_argument("--contexts", type=int, default=1,
                   help="contexts per worker (D2LRES_REPLICAS; default 1): the run has workers x contexts replicas")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole job (default: none)")
    p.add_argument("--serve", action="store_true",
                   help="be the scheduler or a server (DMLC_ROLE=scheduler or server): for jobs started by hand")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the workers' command")
    args = p.parse_args(argv)
    if args.serve:  # importing d2lres.mxnet above already served, if DMLC_ROLE said so
        if os.environ.get("DMLC_ROLE") not in ("scheduler", "server"):
            p.error("--serve needs DMLC_ROLE=scheduler or DMLC_ROLE=server (and the other DMLC_* variables)")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the workers' command after --, e.g. -- d2lres train --backend mxnet --no-sync-bn")
    if os.environ.get("DMLC_ROLE"):
        p.error(f"DMLC_ROLE={os.environ['DMLC_ROLE']} is set: this launcher starts every role itself; unset it")
    # A handler that only records the signal: one that raised would interrupt the loop anywhere, also
    # inside Popen.poll between taking and releasing its lock, and stopping the children would then
    # wait on that lock for ever.
    stop_requests: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, _frame: stop_requests.append(signum))
    try:
        return launch(command, args.workers, args.servers, args.contexts, timeout=args.timeout,
                      stop_requests=stop_requests)
    except ValueError as err:
        p.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
