# The CPU study of issue 16 (README, "Studies"): baseline, RoPE and all five switches at 3 sizes, the learning
# rate tuned per arm on a tuning set, on the built-in demo corpus, two single-threaded runs at a time:
#   bash ablate.sh --experiments baseline,rope,all --tune learning_rate=1e-3,3e-3,1e-2 \
#       --scale n_layer=1,2,3 --scale n_embd=32,64,96 --tokens 256k,512k,768k --seeds 4 --jobs 2 \
#       --out out/cpu_study config/cpu_study.py
# (add --dry-run first: it prints the runs and the time estimate from speed probes). The model and the
# schedule are config/cpu_ablation.py's at its middle size (n_layer=2, n_embd=64, 512k tokens); --scale sets
# the sizes and --tokens each size's budget; learning_rate here is only the default that --tune replaces.
tune_docs = 20         # the 20 documents before the validation set: the tuning set (held out in both stages)
val_docs = 20          # the last 20 documents: the validation set, as in config/cpu_ablation.py
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
