# The tests train tiny models: one thread each is faster than two threads contending (also for the
# subprocesses the tests start, which inherit this), and keeps the suite fast on a 2-core machine.
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
