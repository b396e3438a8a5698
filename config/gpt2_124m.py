# GPT-2 small (124M parameters) for one GPU, e.g. a 4-hour SLURM job per experiment:
#   python train.py config/gpt2_124m.py --data_path=/scratch/pile/00.jsonl --max_time=4h   # out/gpt2_124m/baseline
#   python train.py config/gpt2_124m.py --data_path=/scratch/pile/00.jsonl --max_time=4h --use_rope=True
# max_time turns the wall-clock budget into a planned step count (so cosine decays to min_lr at the end);
# max_iters is only an upper bound then. Each switch combination gets its own folder ({switches}).
out_dir = "out/gpt2_124m/{switches}"
val_docs = 1000
block_size = 1024
batch_size = 16
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 700
max_iters = 100000
eval_interval = 1000
eval_iters = 50
log_interval = 50
ckpt_interval = 1000
num_workers = 2
compile = True
