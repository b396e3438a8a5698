# The tests train tiny models: one thread each is faster than two threads contending (also for the
# subprocesses the tests start, which inherit this), keeps the suite fast on a 2-core machine, and gives
# the in-process and subprocess runs the same float results (the resume tests compare them bit for bit).
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

# The longest files first. pytest-xdist (--dist loadfile, pytest.ini) hands whole files to the workers in
# collection order; started last, the SLURM cluster's file (~100 s of real jobs, much of it waiting on
# slurmctld) or the real ablation would be the tail of the run that the other worker sits idle through.
LONGEST_FIRST = ["test_slurm.py", "test_ablate.py", "test_train.py", "test_commands.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: runs jobs on a real single-node SLURM cluster started by the test (test_slurm.py); "
                   "select with -m slurm, leave out with -m 'not slurm'")
