# The tests train tiny models: one thread each is faster than two threads contending (also for the
# subprocesses the tests start, which inherit this), keeps the suite fast on a 2-core machine, and gives
# the in-process and subprocess runs the same float results (the resume tests compare them bit for bit).
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs jobs on a real single-node SLURM cluster started by the test (test_slurm.py); "
                   "select with -m slurm, leave out with -m 'not slurm'")
