"""A real single-node SLURM cluster on 127.0.0.1 for the tests: Debian's munged, slurmctld and slurmd.

``SlurmCluster(folder).start()`` writes a munge key and a ``slurm.conf`` into ``folder``, starts the three
daemons in the foreground (their pids are ours to stop) and waits until the node is idle. It needs root
(slurmd runs jobs as their users) and the binaries of Debian's ``slurm-wlm`` and ``munge``; ``.ci/run``
installs them. ``unavailable()`` says why a cluster cannot start here, for the tests' skip reason.

There is no slurmdbd: ``sacct`` answers with an error, which submitit logs ("Bypassing sacct error") and
then learns that a job ended from its result file, as it does on any cluster.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable() -> str | None:
    """Why a SLURM cluster cannot be started on this machine, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if missing:
        return f"SLURM binaries missing ({', '.join(missing)}): apt-get install slurm-wlm munge (.ci/run does)"
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their users); .ci/run runs as root"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """munged + slurmctld + slurmd, configured in ``folder``; ``env`` is what clients (sbatch, submitit) need."""

    def __init__(self, folder: Path, cpus: int | None = None, partition: str = "test",
                 private_dirs: tuple[Path, ...] = ()):
        """``private_dirs``: folders the node does not share with the submitting machine (slurmd and its jobs
        see an empty tmpfs there, in their own mount namespace), as a compute node has its own /tmp."""
        self.folder = folder
        self.private_dirs = private_dirs
        self.partition = partition
        self.cpus = cpus or os.cpu_count() or 1  # more than the machine has: slurmd takes the config's word
        self.node = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(f"""\
ClusterName=seqexp-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={f / 'munge' / 'munge.socket'}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmdParameters=config_overrides
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, *args: str, private_dirs: tuple[Path, ...] = ()) -> None:
        log = open(self.folder / f"{name}.out", "w")  # noqa: SIM115 -- closed when the daemon is stopped
        cmd = [_binary(name), *args]
        if private_dirs:  # unshare and sh exec: the pid stays the daemon's
            mounts = " && ".join(f"mount -t tmpfs seqexp-node-private {shlex.quote(str(d))}" for d in private_dirs)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"{mounts} && exec {shlex.join(cmd)}"]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def start(self, timeout: float = 60) -> "SlurmCluster":
        self._write_config()
        m = self.folder / "munge"
        self._spawn("munged", "--foreground", "--force", f"--socket={m / 'munge.socket'}",
                    f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                    f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}")
        self._wait(lambda: (m / "munge.socket").exists(), timeout, "munged")
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))
        self._wait(lambda: self.scontrol("ping").returncode == 0 and "UP" in self.scontrol("ping").stdout,
                   timeout, "slurmctld")
        self._spawn("slurmd", "-D", "-f", str(self.conf), private_dirs=self.private_dirs)
        self._wait(lambda: "idle" in self.sinfo(), timeout, "slurmd (node idle)")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited ({self.procs[dead[0]].returncode}):\n{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.out")) + sorted(self.folder.glob("*.log")) + \
                sorted(self.folder.glob("munge/*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([_binary(cmd[0]), *cmd[1:]], env=self.env, capture_output=True, text=True,
                              timeout=60, check=check)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args)

    def sinfo(self) -> str:
        return self.run("sinfo", "-h", "-o", "%T").stdout

    def jobs(self) -> list[dict[str, str]]:
        """Jobs slurmctld knows (running, pending and, for MinJobAge, ended): id, array id, state, restarts."""
        out = self.scontrol("show", "job", "-o").stdout
        found = []
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "JobId" in fields:
                found.append(fields)
        return found

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--partition={self.partition}")
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
