"""``hold_folder``: one process at a time in a folder; a dead holder's lock is taken over."""

import os
import re
import signal
import subprocess
import sys

import pytest

from olmo2.folder_lock import LOCK_NAME, FolderLocked, hold_folder

HOLD = """import sys, time
from olmo2.folder_lock import hold_folder
with hold_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_holder_is_refused_and_the_lock_file_goes_on_release(tmp_path):
    (tmp_path / "config.yaml").write_text("mine\n")
    with hold_folder(tmp_path) as lock:
        assert lock == tmp_path / LOCK_NAME and str(os.getpid()) in lock.read_text()
        who = rf"{re.escape(str(tmp_path))} is in use by another run \(pid {os.getpid()} on "
        with pytest.raises(FolderLocked, match=who), hold_folder(tmp_path):
            pass
        assert lock.is_file()  # the refusal leaves the holder's lock alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    with hold_folder(tmp_path):  # free again
        pass


def test_a_live_holder_in_another_process_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path, capfd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"held\n"
        who = rf"pid {proc.pid} on .*: -c {re.escape(str(tmp_path))}"
        with pytest.raises(FolderLocked, match=who), hold_folder(tmp_path):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).is_file()  # killed: its lock file stays, but the kernel freed the lock
    capfd.readouterr()
    with hold_folder(tmp_path):
        assert f"taking over the stale lock of a run that is gone (pid {proc.pid}" in capfd.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()
