"""A real one-node Slurm cluster on this machine, for the Slurm tests and for trying hydra/launcher=slurm by hand.

    sudo python3 tests/slurm_cluster.py start /tmp/slurm   # prints the SLURM_CONF to export, then
    sudo python3 tests/slurm_cluster.py stop /tmp/slurm

Needs root and Debian/Ubuntu's slurmctld, slurmd, slurm-client and munge (installed here when sbatch is missing).
Config: one node with this machine's CPUs and memory, partition `cpu`, no cgroups (proctrack/linuxproc,
task/none), no accounting database (sacct's warnings are harmless), state and spool under the given folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


class ClusterUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why (the tests skip with it)."""


def install() -> None:
    """apt-get install the Slurm packages when sbatch is missing (root only)."""
    if shutil.which("sbatch") and shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("Slurm is not installed and cannot be (needs root and apt-get): "
                                 f"apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterUnavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")


def slurm_conf(folder: Path) -> str:
    host = socket.gethostname()
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return "\n".join([
        "ClusterName=stacked", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", "MpiDefault=none", "ReturnToService=2",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "KillWait=30", "MinJobAge=300", "SlurmctldTimeout=30", "SlurmdTimeout=30",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory={memory_mb * 9 // 10} State=UNKNOWN",
        "PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n"


def munge_works() -> bool:
    try:
        encoded = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return encoded.returncode == 0 and subprocess.run(
            ["unmunge"], input=encoded.stdout, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start(folder: Path, timeout: float = 60) -> dict:
    """Start munged (unless one answers), slurmctld and slurmd with the config in `folder`; wait for an idle node.
    Returns what stop() needs. Sets SLURM_CONF in this process (children inherit it)."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting Slurm daemons needs root")
    install()
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder))
    os.environ["SLURM_CONF"] = str(conf)
    started = {"folder": str(folder), "pids": []}
    if not munge_works():
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=False, capture_output=True)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        pidfile = Path("/run/munge/munged.pid")  # where the munge user may write it
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--pid-file={pidfile}"] if shutil.which("runuser")
                       else ["munged", "--force", f"--pid-file={pidfile}"], check=False, capture_output=True)
        started["munged_pidfile"] = str(pidfile)
        (folder / "munged.started").touch()  # so `stop FOLDER` stops it too
        if not wait_for(munge_works, 15):
            stop(started)
            raise ClusterUnavailable("munged did not come up (see /var/log/munge/munged.log)")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for daemon in ("slurmctld", "slurmd"):
        done = subprocess.run([daemon, "-c"] if daemon == "slurmctld" else [daemon], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            stop(started)
            raise ClusterUnavailable(f"{daemon} did not start: {done.stderr.strip()[-500:]}")
        started["pids"].append(str(folder / f"{daemon}.pid"))
    if not wait_for(lambda: node_state() == "idle", timeout):
        log = "".join((folder / f).read_text()[-800:] for f in ("slurmctld.log", "slurmd.log") if (folder / f).exists())
        stop(started)
        raise ClusterUnavailable(f"the Slurm node is not idle after {timeout:.0f} s (sinfo: {node_state()!r}): {log}")
    return started


def node_state() -> str:
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def wait_for(check, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(1)
    return False


def stop(started: dict) -> None:
    """Stop the daemons start() started (by their pid files), and nothing else."""
    pidfiles = list(reversed(started["pids"])) + ([started["munged_pidfile"]] if "munged_pidfile" in started else [])
    for pidfile in pidfiles:
        try:
            pid = int(Path(pidfile).read_text().split()[0])
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            continue
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: python3 tests/slurm_cluster.py start|stop FOLDER")
    folder = Path(sys.argv[2]).resolve()
    if sys.argv[1] == "start":
        try:
            start(folder)
        except ClusterUnavailable as err:
            sys.exit(f"error: {err}")
        print(f"Slurm is up (partition cpu). In your shell:\n  export SLURM_CONF={folder / 'slurm.conf'}\n"
              f"Stop it with: python3 tests/slurm_cluster.py stop {folder}")
    else:
        pids = [str(folder / "slurmctld.pid"), str(folder / "slurmd.pid")]
        stop({"pids": pids, **({"munged_pidfile": "/run/munge/munged.pid"} if (folder / "munged.started").exists()
                               else {})})


class PreemptOnce:
    """Test callback: at `at_step` of a Slurm job's first run, have Slurm send the job the pre-kill signal
    (scancel --signal=USR2, as sbatch --signal does before a time limit; training stops after the next batch), and record where each run starts and
    stops in attempts.jsonl. Added with +callbacks.preempt._target_=slurm_cluster.PreemptOnce (tests/ on PYTHONPATH)."""

    def __new__(cls, *args, **kwargs):  # a Lightning Callback, built lazily so this module imports without Lightning
        import lightning as L

        class _PreemptOnce(L.Callback):
            def __init__(self, at_step: int, signal_name: str = "USR2"):
                self.at_step, self.signal_name = at_step, signal_name

            def record(self, trainer, event: str) -> None:
                if trainer.is_global_zero:
                    import json

                    with open(Path(trainer.default_root_dir) / "attempts.jsonl", "a") as f:
                        f.write(json.dumps({"event": event, "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                                            "epoch": trainer.current_epoch, "step": trainer.global_step}) + "\n")

            def on_train_start(self, trainer, pl_module):
                self.record(trainer, "start")

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == self.at_step and int(os.environ.get("SLURM_RESTART_COUNT", 0)) == 0 \
                        and trainer.is_global_zero:
                    subprocess.run(["scancel", f"--signal={self.signal_name}", os.environ["SLURM_JOB_ID"]], check=True)
                    saver = next(c for c in trainer.callbacks if type(c).__name__ == "SaveForResume")
                    wait_for(lambda: saver.signum is not None, 30)  # the handler runs between these sleeps

            def on_exception(self, trainer, pl_module, exception):
                self.record(trainer, f"stopped by {type(exception).__name__}")

            def on_train_end(self, trainer, pl_module):
                self.record(trainer, "end")

        return _PreemptOnce(*args, **kwargs)


def slurm_cluster_fixture(tmp_path_factory):
    """A running one-node cluster for the session (SLURM_CONF set), stopped afterwards; skips saying why not."""
    import pytest

    previous = os.environ.get("SLURM_CONF")
    try:
        started = start(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as err:
        pytest.skip(f"no Slurm cluster: {err}")
    try:
        yield started
    finally:
        stop(started)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
