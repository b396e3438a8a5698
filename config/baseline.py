# The minGPT baseline of the seven experiments, sized for a laptop CPU: a clear learning curve in minutes.
# Every switch is off here; turn one on from the command line, e.g.
#   python train.py config/baseline.py --use_rope=True       # into out/rope (out_dir: out/{switches})
# With no data_path this trains on the built-in demo corpus (the Python standard library's docs and source).
val_docs = 20
block_size = 128
batch_size = 8
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 20
max_iters = 200
eval_interval = 50
eval_iters = 10
log_interval = 10
ckpt_interval = 100
