# The tests train tiny models: one thread each is faster than two threads contending (also for the
# subprocesses the tests start, which inherit this), keeps the suite fast on a 2-core machine, and gives
# the in-process and subprocess runs the same float results (the resume tests compare them bit for bit).
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
