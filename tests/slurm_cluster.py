"""A throwaway single-node SLURM cluster in a temporary folder, for tests: Debian's slurmctld,
slurmd and munge (`apt-get install slurmctld slurmd slurm-client munge`; .ci/run does this when
it runs as root), started in the foreground as this process's children and stopped with their
jobs. One node (this host, with the CPUs and memory `slurmd -C` reports), one partition, no
cgroups and no accounting database: `sacct` is not available (submitit only warns), and a
finished job is read from the job-completion file (`SlurmCluster.ends`) or, for
MinJobAge seconds, from `scontrol show job`.

    with SlurmCluster() as cluster:   # os.environ["SLURM_CONF"] must be cluster.conf for clients
        ...
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

PARTITION = "debug"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "munged",
            "mungekey")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    absent = [name for name in BINARIES if not shutil.which(name, path=SEARCH_PATH)]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} missing; `apt-get install slurmctld "
                "slurmd slurm-client munge` as root; .ci/run does this when it runs as root)")
    if os.geteuid() != 0:
        return "a throwaway SLURM cluster needs root (slurmd runs jobs as their user)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, start_timeout: float = 60):
        self.folder = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        self.folder.chmod(0o755)  # munge's socket must be reachable
        self.conf = self.folder / "slurm.conf"
        self.jobcomp = self.folder / "jobcomp.txt"
        self.start_timeout = start_timeout
        self.daemons: list[subprocess.Popen] = []
        self.cpus = 0  # the node's, once started

    def tool(self, name: str) -> str:
        return shutil.which(name, path=SEARCH_PATH)

    def run(self, *command: str, check=True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        return subprocess.run([self.tool(command[0]), *command[1:]], capture_output=True,
                              text=True, check=check, timeout=60,
                              env={**os.environ, "SLURM_CONF": str(self.conf)})

    def _write_conf(self) -> str:
        # `slurmd -C`: "NodeName=<host> CPUs=2 Boards=1 ... RealMemory=24105" (this host).
        node = subprocess.run([self.tool("slurmd"), "-C"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
        name = node.split()[0].removeprefix("NodeName=")
        self.cpus = int(node.split(" CPUs=")[1].split()[0])
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir()
        (f / "munge").chmod(0o700)
        self.conf.write_text(f"""\
ClusterName=throwaway
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={f}/munge.socket
StateSaveLocation={f}/state
SlurmdSpoolDir={f}/spool
SlurmctldPidFile={f}/slurmctld.pid
SlurmdPidFile={f}/slurmd.pid
SlurmctldLogFile={f}/slurmctld.log
SlurmdLogFile={f}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
JobRequeue=1
# submitit ignores SIGTERM: a requeued job trains on until SIGKILL, KillWait s later
KillWait=0
MinJobAge=600
{node.split(" UpTime=")[0]} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={name} Default=YES MaxTime=INFINITE State=UP
""")
        return name

    def start(self) -> "SlurmCluster":
        name = self._write_conf()
        f = self.folder
        subprocess.run([self.tool("mungekey"), "-c", "-k", f / "munge" / "munge.key"],
                       check=True, capture_output=True)
        self._log = (f / "daemons.log").open("ab")
        for command in (
                [self.tool("munged"), "--foreground", "--force", f"--socket={f}/munge.socket",
                 f"--key-file={f}/munge/munge.key", f"--log-file={f}/munge/munged.log",
                 f"--pid-file={f}/munge/munged.pid", f"--seed-file={f}/munge/munged.seed"],
                [self.tool("slurmctld"), "-D", "-i", "-f", self.conf],
                [self.tool("slurmd"), "-D", "-f", self.conf, "-N", name]):
            self.daemons.append(subprocess.Popen(command, stdout=self._log, stderr=self._log))
            if command[0].endswith("munged"):
                self._wait(lambda: (f / "munge.socket").exists(), "munged")
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
                   == "idle", "the node to be idle")
        return self

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            dead = [d.args[0] for d in self.daemons if d.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-1500:] for p in self.folder.glob("*.log"))
                self.stop()
                raise RuntimeError(f"SLURM cluster: waited for {what}; exited: {dead}\n{logs}")
            time.sleep(0.2)

    def ends(self, job_id: str, count: int = 1, timeout: float = 60) -> list[dict[str, str]]:
        """The job-completion file's entries of a job (one per end, a requeue's included), as
        dicts of its key=value fields (JobState, ExitCode, ProcCnt, Tres, ArrayJobId, ...), once
        there are `count`: slurmctld writes one a moment after the job's last process ended."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.jobcomp.read_text().splitlines() if self.jobcomp.exists() else []
            ends = [entry for entry in (dict(field.split("=", 1) for field in line.split()
                                             if "=" in field) for line in lines)
                    if entry.get("JobId") == str(job_id)]
            if len(ends) >= count or time.monotonic() > deadline:
                return ends
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started (by their pid)."""
        if self.daemons and all(d.poll() is None for d in self.daemons):
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).stdout.strip() \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        self.daemons = []
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
