"""A one-node SLURM cluster on this machine, for ``tests/test_slurm.py``.

``SlurmCluster(root).start()`` brings up munged, slurmctld and slurmd (Debian's ``munge``,
``slurmctld``, ``slurmd`` and ``slurm-client`` packages, SLURM 22.05) on 127.0.0.1 with every file
they write (munge key and socket, ``slurm.conf``, state, spool, logs, pid files) under ``root``, on
free ports, accounting off; ``stop()`` cancels the jobs left and stops the daemons. Clients reach it
through ``SLURM_CONF`` (``cluster.env``). It needs root (slurmd starts jobs as their user) and the
binaries; ``unavailable()`` says why it cannot run and how to enable it.

By hand, to try the cluster tests' setup outside pytest::

    python -m tests.slurm_cluster /tmp/slurm   # starts it, prints the SLURM_CONF line; Ctrl-C or SIGTERM stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
INSTALL = "apt-get install -y slurmctld slurmd munge slurm-client"
PARTITION = "debug"


def unavailable() -> str | None:
    """Why no cluster can be started here (missing binaries, not root), with how to enable it; None when it can."""
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM binaries not found ({', '.join(missing)}): as root, `{INSTALL}` to run the SLURM tests"
    if os.geteuid() != 0:
        return f"the one-node SLURM cluster of the tests needs root (slurmd); run them as root after `{INSTALL}`"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """Memory to declare for the node: 90 % of MemTotal (slurmd drains a node that declares more than it has)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


class SlurmCluster:
    """munged + slurmctld + slurmd on 127.0.0.1, one node (this machine's CPUs), one partition."""

    def __init__(self, root: str | Path, partition: str = PARTITION) -> None:
        self.root = Path(root).resolve()
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        # a Unix socket's path has at most 107 bytes: a deep root (pytest --basetemp) gets one under /tmp instead
        munge = self.root / "munge"
        self.munge_dir = munge if len(str(munge)) < 80 else Path(tempfile.mkdtemp(prefix="infocatvae-munge-"))
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment for clients (sbatch, squeue, a sweep's submitting process) and, through sbatch's
        default ``--export=ALL``, the jobs: this cluster's ``SLURM_CONF``, no other SLURM_* variable (a test
        run inside a real SLURM job would otherwise leak that job's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o700)
        ctld_port, slurmd_port = _free_port(), _free_port()
        self.conf.write_text(
            "\n".join(
                [
                    "# written by tests/slurm_cluster.py: a one-node test cluster, every file under this folder",
                    "ClusterName=infocatvae-test",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # cred_expire: also how long a requeued job waits before it may start again (default 120 s)
                    f"AuthInfo=socket={self.munge_socket},cred_expire=10",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    # no cgroups: plain process tracking, no task binding
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/backfill",
                    "MpiDefault=none",
                    # accounting off, as on many small clusters: sacct does not answer (infocatvae.slurm)
                    "AccountingStorageType=accounting_storage/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    "ReturnToService=2",
                    "InactiveLimit=0",
                    "KillWait=10",
                    "MinJobAge=300",
                    "SlurmctldTimeout=30",
                    "SlurmdTimeout=30",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_real_memory_mb()} "
                    "State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _spawn(self, name: str, *args: str) -> None:
        out = (self.root / "log" / f"{name}.out").open("ab")
        self.procs[name] = subprocess.Popen(
            [_binary(name), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        out.close()

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.write_config()
        munge = self.munge_dir
        subprocess.run([_binary("mungekey"), "--create", f"--keyfile={munge / 'munge.key'}"], check=True)
        # -f: the socket's folder is not open to all users (everything here runs as root)
        self._spawn(
            "munged",
            "-F",
            "-f",
            f"--key-file={munge / 'munge.key'}",
            f"--socket={self.munge_socket}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        )
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._wait(lambda: self._ok("scontrol", "ping"), timeout, "slurmctld did not answer `scontrol ping`")
        self._spawn("slurmd", "-D", "-N", self.node, "-f", str(self.conf))
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), timeout, "the node never became idle")
        return self

    def _ok(self, *cmd: str) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True, timeout=30).returncode == 0

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"{what} ({', '.join(dead) + ' exited; ' if dead else ''}{self.logs_tail()})")
            time.sleep(0.2)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A client command (squeue, scontrol, scancel) against this cluster, output captured."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def node_state(self) -> str:
        res = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return res.stdout.strip().rstrip("*~#!%$@^-").lower()

    def jobs(self) -> dict[str, str]:
        """Job id -> state of the jobs slurmctld holds (pending, running, or ended in the last MinJobAge)."""
        res = self.run("squeue", "-h", "-r", "--states=all", "-o", "%i|%T")
        return dict(line.split("|", 1) for line in res.stdout.split())

    def active_jobs(self) -> dict[str, str]:
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
        return {j: s for j, s in self.jobs().items() if s not in ended}

    def logs_tail(self, n: int = 20) -> str:
        parts = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            parts.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what is left, stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--partition={self.partition}", check=False)
            end = time.monotonic() + 15
            while time.monotonic() < end and self.active_jobs():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if self.root not in self.munge_dir.parents:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


if __name__ == "__main__":
    import sys

    cluster = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/infocatvae-slurm")
    reason = unavailable()
    if reason:
        sys.exit(reason)
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}   # partition {cluster.partition}; Ctrl-C stops the cluster", flush=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started in the background, where SIGINT is ignored
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
