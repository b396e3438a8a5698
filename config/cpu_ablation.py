# The CPU ablation that answers (results/README.md, "What it found on a CPU"): the seven experiments x 4
# seeds on the built-in demo corpus in 47-83 minutes on a 2-core CPU, two single-threaded runs at a time,
# then the report:
#   python ablate.py --seeds 4 --jobs 2 --out out/cpu_ablation config/cpu_ablation.py
# A small model (the 50257 x 64 tied embedding is most of it) that plateaus within 500 steps of 8 x 128 tokens
# (512k tokens per run, ~11% of the corpus), so cosine decay has a plateau to anneal from; a high learning rate
# for its size. Nothing here is tuned per arm: every experiment runs exactly this, plus its switches.
val_docs = 20          # the last 20 documents: 159k tokens, no twin in training
block_size = 128
batch_size = 8
n_layer = 2
n_head = 2
n_embd = 64
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
max_iters = 500
eval_interval = 100
eval_iters = 10
log_interval = 10
ckpt_interval = 1000
